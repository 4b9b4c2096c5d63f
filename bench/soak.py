"""Soak: 64 concurrent streaming clients against a real ``babelgate serve`` for a bounded time.

Runs as a script (``python bench/soak.py --minutes 10``). It starts ``babelgate serve`` (routing,
compiled unless ``--eager``) on the embedded default model, or ``--model``, on 127.0.0.1, and
runs ``--clients`` clients (the official ``openai`` async client). Each streams chat completions
one after the other until the time is up: PolyRefuse test prompts, harmful and harmless, in eight
languages, in a seeded order.

What it counts, and the goal for each:
- **5xx** (0): server errors, including an error event inside a stream and a connection the
  server dropped. 429s (``--max-queue-depth``) are counted apart; they are not failures.
- **missing verdicts** (0): a completion whose first chunk has no gate score, or whose stream
  ends without ``[DONE]``.
- **leaked requests** (0): once the clients stop, the most of babelgate's in-flight gauge,
  vLLM's running and waiting requests, and the guard records and slots the worker still holds
  (``GET /admin/engine``). These are waited for, up to 120 s.
- **RSS growth** (< 5 %): of the API server and of the engine (engine core and workers), from
  the end of the warm-up (``--warmup-s``) to the end. The larger of the two is reported.
- **TTFT**: p50 and p99, from the request to its first content chunk.

It ends with one line: ``requests=<n> errors_5xx=<n> missing_verdicts=<n> leaked_requests=<n>
rss_growth_pct=<x> ttft_p50_ms=<x> ttft_p99_ms=<x>``; the JSON record (``bench/record.py``) has
the counts, every TTFT and the RSS readings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import openai
import psutil
from prometheus_client.parser import text_string_to_metric_families
from record import BenchRecord, add_out_argument
from serving import SERVED_NAME, Server, free_port, load_prompts, server_command

from babelgate.gate.hf.embedded import MODEL_HELP, ensure_embedded_model, is_embedded
from babelgate.server.engine.startup import bind_cpu_threads
from babelgate.server.shipped import shipped_artifact

ADMIN_TOKEN = "soak-admin-token"
HELD_METRICS = ("babelgate_requests_in_flight", "vllm:num_requests_running",
                "vllm:num_requests_waiting")  # fmt: skip
SETTLE_S = 120
PROGRESS_S = 60
SEED = 0


@dataclass
class Tally:
    """What the clients saw, added up."""

    requests: int = 0
    errors_5xx: int = 0
    dropped: int = 0  # connections the server dropped (counted in errors_5xx too)
    rejected_429: int = 0
    other_4xx: int = 0
    missing_verdicts: int = 0
    no_done: int = 0  # streams without [DONE] (counted in missing_verdicts too)
    gate_failures: int = 0
    ttft_s: list[float] = field(default_factory=list)


async def one_completion(client: openai.AsyncOpenAI, prompt: str, max_tokens: int,
                         tally: Tally) -> None:  # fmt: skip
    """Stream one chat completion and count what came back."""
    started = time.perf_counter()
    tally.requests += 1
    try:
        async with client.chat.completions.with_streaming_response.create(
            model=SERVED_NAME, messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens, stream=True, temperature=0.7,
        ) as response:  # fmt: skip
            await read_stream(response, started, tally)
    except openai.APIStatusError as err:
        if err.status_code >= 500:
            tally.errors_5xx += 1
        elif err.status_code == 429:
            tally.rejected_429 += 1
        else:
            tally.other_4xx += 1
    except (openai.APIConnectionError, httpx.TransportError):
        tally.errors_5xx += 1
        tally.dropped += 1


async def read_stream(response: object, started: float, tally: Tally) -> None:
    verdict_seen = done = False
    first_token = None
    async for line in response.iter_lines():  # type: ignore[attr-defined]
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            tally.errors_5xx += chunk["error"].get("type") != "invalid_request_error"
            continue
        guard = chunk.get("babelgate")
        if guard is not None:
            verdict_seen = guard.get("gate_score") is not None
            tally.gate_failures += bool(guard.get("gate_failure"))
        if first_token is None and any(c["delta"].get("content") for c in chunk["choices"]):
            first_token = time.perf_counter() - started
    if first_token is not None:
        tally.ttft_s.append(first_token)
    tally.no_done += not done
    tally.missing_verdicts += not (verdict_seen and done)


async def client_loop(client: openai.AsyncOpenAI, prompts: list[str], rng: random.Random,
                      deadline: float, max_tokens: int, tally: Tally) -> None:  # fmt: skip
    while time.monotonic() < deadline:
        await one_completion(client, rng.choice(prompts), max_tokens, tally)


def rss_mb(server: psutil.Process) -> tuple[float, float]:
    """RSS (MB) of the API server and of its engine processes together."""
    engine = sum(p.memory_info().rss for p in server.children(recursive=True))
    return server.memory_info().rss / 1e6, engine / 1e6


def held(base: str) -> dict[str, float]:
    """What the server still holds: its gauge, vLLM's requests, the worker's records."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    values = dict.fromkeys(HELD_METRICS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:  # exact: not vllm:num_requests_waiting_by_reason
                values[sample.name] += sample.value
    state = httpx.get(f"{base}/admin/engine", timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()  # fmt: skip
    values.update({f"worker_{k}": state["worker"][k]
                   for k in ("active", "finished_unfetched", "slots_in_use")})  # fmt: skip
    values["engine_unfinished"] = state["engine_unfinished_requests"]
    return values


def settle(base: str) -> dict[str, float]:
    """``held`` once everything is 0, or after ``SETTLE_S``."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        values = held(base)
        if not any(values.values()) or time.monotonic() > deadline:
            return values
        time.sleep(1)


async def soak(base: str, prompts: list[str], args: argparse.Namespace, server: psutil.Process,
               readings: list[dict[str, float]]) -> tuple[Tally, tuple[float, float]]:
    """Run the clients; the tally and the RSS at the end of the warm-up. Each progress line's
    RSS is appended to ``readings``."""
    tally = Tally()
    start = time.monotonic()
    deadline = start + args.minutes * 60
    rng = random.Random(SEED)
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with openai.AsyncOpenAI(
        base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600,
        http_client=httpx.AsyncClient(limits=limits, timeout=600),
    ) as client:  # fmt: skip
        loops = [
            client_loop(client, prompts, random.Random(rng.random()), deadline,
                        args.max_tokens, tally)
            for _ in range(args.clients)
        ]  # fmt: skip
        clients = [asyncio.create_task(loop) for loop in loops]
        await asyncio.sleep(min(args.warmup_s, args.minutes * 60))
        warm = rss_mb(server)
        print(f"warm-up done: {tally.requests} requests, RSS api {warm[0]:.0f} MB, engine "
              f"{warm[1]:.0f} MB", flush=True)  # fmt: skip
        while not all(c.done() for c in clients):
            await asyncio.wait(clients, timeout=PROGRESS_S)
            api, engine = rss_mb(server)
            readings.append({"s": round(time.monotonic() - start), "requests": tally.requests,
                             "api_mb": round(api), "engine_mb": round(engine)})  # fmt: skip
            print(f"  {time.monotonic() - start:6.0f} s: {tally.requests} requests, "
                  f"{tally.errors_5xx} 5xx, {tally.missing_verdicts} missing verdicts, RSS api "
                  f"{api:.0f} MB, engine {engine:.0f} MB", flush=True)  # fmt: skip
    return tally, warm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="RSS growth is measured from the end of this")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--artifact", default=None, help="gate artifact (default: cached)")
    parser.add_argument("--eager", action="store_true", help="serve with --enforce-eager")
    add_out_argument(parser, "soak")
    args = parser.parse_args()
    if args.minutes <= 0 or args.clients < 1:
        parser.error("--minutes must be > 0 and --clients >= 1")
    record = BenchRecord("soak")

    bind_cpu_threads()
    if is_embedded(args.model):
        if args.artifact is None and (shipped := shipped_artifact(args.model)) is not None:
            args.artifact = str(shipped)
        args.model = str(ensure_embedded_model(args.model))
    prompts = load_prompts(256)
    tmp = tempfile.mkdtemp(prefix="babelgate-soak-")  # kept: the server log
    args.state_dir = str(Path(tmp) / "state")
    port = free_port()
    command = [*server_command("babelgate:routing", args.model, port, args),
               "--admin-token", ADMIN_TOKEN]  # fmt: skip
    print(f"server log in {tmp}; {args.clients} clients for {args.minutes} min", flush=True)
    with Server(command, port, Path(tmp) / "serve.log") as server:
        assert server.proc is not None
        base = f"http://127.0.0.1:{port}"
        api_process = psutil.Process(server.proc.pid)
        print(f"healthy after {server.start_s:.1f} s", flush=True)
        readings: list[dict[str, float]] = []
        tally, warm = asyncio.run(soak(base, prompts, args, api_process, readings))
        left = settle(base)
        end = rss_mb(api_process)
    growth = [100 * (e - w) / w for e, w in zip(end, warm, strict=True)]
    ttft = np.asarray(tally.ttft_s or [float("nan")]) * 1000
    leaked = max(left["babelgate_requests_in_flight"], left["engine_unfinished"],
                 left["vllm:num_requests_running"] + left["vllm:num_requests_waiting"],
                 left["worker_active"], left["worker_slots_in_use"])  # fmt: skip
    print(f"after the soak: {left}")
    print(f"RSS api {warm[0]:.0f} -> {end[0]:.0f} MB ({growth[0]:+.2f} %), engine "
          f"{warm[1]:.0f} -> {end[1]:.0f} MB ({growth[1]:+.2f} %)")  # fmt: skip
    print(f"429s {tally.rejected_429}, other 4xx {tally.other_4xx}, dropped connections "
          f"{tally.dropped}, streams without [DONE] {tally.no_done}, gate failures "
          f"{tally.gate_failures}")  # fmt: skip
    summary = {"requests": tally.requests, "errors_5xx": tally.errors_5xx,
               "missing_verdicts": tally.missing_verdicts, "leaked_requests": int(leaked),
               "rss_growth_pct": round(max(growth), 2),
               "ttft_p50_ms": round(float(np.percentile(ttft, 50)), 1),
               "ttft_p99_ms": round(float(np.percentile(ttft, 99)), 1)}  # fmt: skip
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    counts = {k: v for k, v in vars(tally).items() if k != "ttft_s"}
    record.write({"workload": {"minutes": args.minutes, "clients": args.clients,
                               "warmup_s": args.warmup_s, "max_tokens": args.max_tokens,
                               "eager": args.eager},
                  "start_s": server.start_s, "counts": counts, "held_after": left,
                  "rss_mb": {"warm": warm, "end": end, "readings": readings},
                  "ttft_ms": [round(1000 * t, 1) for t in tally.ttft_s]},
                 summary, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
