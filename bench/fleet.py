"""A fleet of two babelgate replicas on one PostgreSQL threshold store: propagation and cost.

Runs as a script (``python bench/fleet.py``). It uses the PostgreSQL server of ``--state-url``,
or starts a throwaway cluster (Debian's binaries, as the tests do), then:

1. starts two ``babelgate serve`` replicas (A and B) on the same model and store;
2. ``--changes`` times: sets de's threshold to a new value with ``PUT /admin/thresholds/de`` on
   A and, from the moment A acknowledged it, sends chat requests in de to B every
   ``--probe-interval-ms`` (each request's threshold is resolved when it arrives); the
   propagation time is when the first request whose verdict carries the new threshold was sent,
   after the acknowledgement (so its resolution is the probe interval);
3. stops B and waits until its processes are gone, starts a replica with the SQLite store and,
   with A and it alive together, measures their serving throughput (``bench/serving.py``'s
   load, ``--concurrency`` streams, ``ignore_eos``) in ``--rounds`` rounds whose first replica
   alternates, so a drift of the shared machine's speed hits both stores alike (the store is
   read from memory per request, so the ratio should be about 1).

The last line is ``median_s=<s> max_s=<s> throughput_ratio=<PostgreSQL / SQLite, median over
rounds> throughput_range=<min>-<max>``; the JSON record (``bench/record.py``) has every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from record import BenchRecord, add_out_argument, describe
from serving import (
    SERVED_NAME,
    Server,
    free_port,
    interleaved,
    load_prompts,
    pair_ratios,
    server_command,
)

from babelgate.gate.hf.embedded import MODEL_HELP, SMOLLM2, ensure_embedded_model, is_embedded
from babelgate.server.engine.startup import bind_cpu_threads
from babelgate.server.shipped import shipped_artifact

REPO = Path(__file__).resolve().parents[1]
ADMIN = "bench-admin"
PROBE = "Wie backe ich zu Hause ein einfaches Brot?"


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    """``url``, or a new database on a throwaway cluster started for this run."""
    if url:
        yield url
        return
    sys.path.insert(0, str(REPO / "tests"))
    from pgcluster import postgres_cluster  # the tests' throwaway cluster (bench only)

    with postgres_cluster() as cluster:
        yield cluster.create_database()


async def verdict_threshold(client: httpx.AsyncClient, base: str) -> float:
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": PROBE}],
            "max_tokens": 1, "temperature": 0.0, "babelgate": {"language": "de"}}  # fmt: skip
    r = await client.post(f"{base}/v1/chat/completions", json=body)
    r.raise_for_status()
    return float(r.json()["babelgate"]["threshold"])


async def propagation(a: str, b: str, changes: int, probe_s: float) -> list[float]:
    """Seconds from each acknowledged PUT on ``a`` to the first request sent to ``b`` whose
    verdict used the new threshold."""
    delays = []
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(timeout=120, headers=headers) as client:
        await verdict_threshold(client, b)  # warm-up
        for i in range(changes):
            value = 100.0 + i  # a new value each time (every prompt is harmless under it)
            r = await client.put(f"{a}/admin/thresholds/de", json={"value": value})
            r.raise_for_status()
            acknowledged = time.perf_counter()
            probes: list[tuple[float, asyncio.Task[float]]] = []
            first = None
            while first is None:
                if time.perf_counter() - acknowledged > 30:
                    sys.exit(f"change {i} did not reach the other replica in 30 s")
                probes.append((time.perf_counter(), asyncio.create_task(
                    verdict_threshold(client, b))))  # fmt: skip
                await asyncio.sleep(probe_s)
                done = [sent for sent, task in probes if task.done() and task.result() == value]
                first = min(done) if done else None
            await asyncio.gather(*(task for _, task in probes))
            delays.append(first - acknowledged)
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=SMOLLM2.id, help=MODEL_HELP)
    parser.add_argument("--artifact", default=None, help="gate artifact (default: shipped)")
    parser.add_argument("--state-url", default=None, help="postgresql://... (default: started)")
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--probe-interval-ms", type=float, default=20.0)
    parser.add_argument("--num-prompts", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10, help="throughput rounds, interleaved")
    add_out_argument(parser, "fleet")
    parser.add_argument(
        "--eager", action="store_true",
        help="replicas with --enforce-eager (default: compiled; the store does not depend on it)",
    )  # fmt: skip
    args = parser.parse_args()
    record = BenchRecord("fleet")

    bind_cpu_threads()
    if is_embedded(args.model):
        if args.artifact is None and (shipped := shipped_artifact(args.model)) is not None:
            args.artifact = str(shipped)
        args.model = str(ensure_embedded_model(args.model))
    prompts = load_prompts(args.num_prompts)
    tmp = Path(tempfile.mkdtemp(prefix="babelgate-fleet-"))  # kept: server logs
    print(f"server logs in {tmp}", flush=True)
    args.state_dir = str(tmp / "state")

    def replica(name: str) -> Server:
        port = free_port()
        cmd = [*server_command("babelgate:routing", args.model, port, args),
               "--admin-token", ADMIN]  # fmt: skip
        return Server(cmd, port, tmp / f"{name}.log")

    with database(args.state_url) as url:
        args.state_url = url
        with replica("a") as a:
            with replica("b") as b:
                base = {s: f"http://127.0.0.1:{s.port}" for s in (a, b)}
                delays = asyncio.run(propagation(
                    base[a], base[b], args.changes, args.probe_interval_ms / 1000))  # fmt: skip
            print(f"propagation over {len(delays)} changes: median {statistics.median(delays):.3f}"
                  f" s, max {max(delays):.3f} s", flush=True)  # fmt: skip
            args.state_url = None  # the SQLite store in args.state_dir
            with replica("sqlite") as single:
                ports = {"postgresql": a.port, "sqlite": single.port}
                rounds = interleaved(ports, prompts, [args.concurrency], args)
    ratios = pair_ratios(rounds, "sqlite", "postgresql", [args.concurrency])
    top = ratios[f"throughput_c{args.concurrency}"]
    print(f"PostgreSQL / SQLite at c={args.concurrency}: throughput {describe(top)}, TTFT "
          f"(SQLite / PostgreSQL) {describe(ratios[f'ttft_c{args.concurrency}'])}")  # fmt: skip
    print(f"median_s={statistics.median(delays):.3f} max_s={max(delays):.3f} "
          f"throughput_ratio={top['median']:.3f} throughput_range={top['min']:.3f}-"
          f"{top['max']:.3f}")  # fmt: skip
    workload = {"changes": args.changes, "probe_interval_ms": args.probe_interval_ms,
                "prompts": len(prompts), "max_tokens": args.max_tokens,
                "concurrency": args.concurrency, "rounds": args.rounds, "eager": args.eager}
    record.write({"workload": workload, "propagation_s": delays, "throughput_rounds": rounds},
                 {"propagation_median_s": statistics.median(delays),
                  "propagation_max_s": max(delays), **ratios}, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
