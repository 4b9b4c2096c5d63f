"""What babelgate adds to every call behind a gateway: moderation latency against chat TTFT.

Runs as a script (``python bench/moderation_latency.py``). It starts one ``babelgate serve``
(the shipped gate of the model) and, at each concurrency (1, 16 and 64 callers by default),
measures on the same server, rounds interleaved (round r runs every kind at every concurrency
before round r + 1 starts, so load drifting on a shared machine hits all kinds alike):

- ``moderation``: ``POST /v1/moderations``, one input: the gate alone, one prefill;
- ``guardrail``: ``POST /beta/litellm_basic_guardrail_api``, one user turn, as LiteLLM sends it;
- ``chat_ttft``: the time to the first token of a streamed chat completion of the same prompt,
  what a gateway's ``pre_call`` check is added to (``during_call`` runs beside it).

It prints requests per second and p50 / p99 latency per kind and concurrency, and writes a JSON
record: the command, the git commit, the machine (cores, memory, CPU model, load average before
and after) and every raw latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from record import BenchRecord, add_out_argument
from serving import SERVED_NAME, Server, free_port, load_prompts, server_command

from babelgate.gate.hf.embedded import MODEL_HELP, ensure_embedded_model, is_embedded
from babelgate.server.engine.startup import bind_cpu_threads
from babelgate.server.shipped import shipped_artifact

KINDS = ("moderation", "guardrail", "chat_ttft")
Call = Callable[[httpx.AsyncClient, str], Awaitable[float]]


async def moderation(client: httpx.AsyncClient, prompt: str) -> float:
    start = time.perf_counter()
    r = await client.post("/v1/moderations", json={"input": prompt})
    r.raise_for_status()
    return time.perf_counter() - start


async def guardrail(client: httpx.AsyncClient, prompt: str) -> float:
    body = {"input_type": "request", "texts": [prompt], "request_data": {},
            "structured_messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    start = time.perf_counter()
    r = await client.post("/beta/litellm_basic_guardrail_api", json=body)
    r.raise_for_status()
    return time.perf_counter() - start


async def chat_ttft(client: httpx.AsyncClient, prompt: str) -> float:
    """Seconds to the first content chunk of a streamed completion (the stream is then read
    to its end, 8 tokens at most, so that it holds its place as a real caller's would)."""
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 8, "temperature": 0.0, "stream": True}  # fmt: skip
    start = time.perf_counter()
    ttft = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"content"' in line:
                ttft = time.perf_counter() - start
    return ttft if ttft is not None else time.perf_counter() - start


CALLS: dict[str, Call] = {"moderation": moderation, "guardrail": guardrail, "chat_ttft": chat_ttft}


async def run_level(url: str, call: Call, prompts: list[str], concurrency: int) -> dict[str, Any]:
    """``len(prompts)`` calls by ``concurrency`` callers: every latency and the wall time."""
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for prompt in prompts:
            queue.put_nowait(prompt)
        latencies: list[float] = []

        async def caller() -> None:
            while not queue.empty():
                latencies.append(await call(client, queue.get_nowait()))

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"latencies_s": latencies, "wall_s": wall}


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Requests per second and p50 / p99 latency over every round of one kind and level."""
    latencies = [x for r in runs for x in r["latencies_s"]]
    return {
        "requests_per_s": len(latencies) / sum(r["wall_s"] for r in runs),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "n": len(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m", help=MODEL_HELP)
    parser.add_argument("--artifact", default=None, help="gate artifact (default: shipped)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests", type=int, default=64,
                        help="calls per kind, level and round (at least the concurrency)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--eager", action="store_true", help="serve with --enforce-eager")
    add_out_argument(parser, "moderation_latency")
    args = parser.parse_args()

    record = BenchRecord("moderation_latency")
    extra: dict[str, Any] = {}
    bind_cpu_threads()
    if is_embedded(args.model):
        if args.artifact is None and (shipped := shipped_artifact(args.model)) is not None:
            args.artifact = str(shipped)
        args.model = str(ensure_embedded_model(args.model))
    levels = [int(c) for c in args.concurrency.split(",")]
    tmp = tempfile.mkdtemp(prefix="babelgate-modlat-")  # kept: the server log
    args.state_dir = str(Path(tmp) / "state")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {k: {c: [] for c in levels} for k in KINDS}
    command = server_command("babelgate:routing", args.model, port, args)
    command[command.index("--max-num-seqs") + 1] = str(max(levels))
    print(f"server log in {tmp}", flush=True)
    with Server(command, port, Path(tmp) / "serve.log") as server:
        extra["server_start_s"] = server.start_s
        for call in CALLS.values():  # warm-up
            asyncio.run(run_level(url, call, load_prompts(4), 2))
        for r in range(args.rounds):
            for c in levels:
                prompts = load_prompts(max(args.requests, c) * (r + 1))[-max(args.requests, c):]
                for kind in KINDS:
                    raw[kind][c].append(asyncio.run(run_level(url, CALLS[kind], prompts, c)))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    results = {k: {c: summary(raw[k][c]) for c in levels} for k in KINDS}
    print(f"\n{'kind':12s} {'callers':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'p50 / chat TTFT p50':>20s}")  # fmt: skip
    for kind in KINDS:
        for c in levels:
            s, ttft = results[kind][c], results["chat_ttft"][c]
            print(f"{kind:12s} {c:7d} {s['requests_per_s']:8.1f} {s['p50_ms']:8.1f} "
                  f"{s['p99_ms']:8.1f} {s['p50_ms'] / ttft['p50_ms']:20.2f}")  # fmt: skip
    record.write({"raw": raw, **extra}, {"results": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
