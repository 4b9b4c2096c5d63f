"""Overhead of the guard inside vLLM: plain vLLM vs babelgate routing, compiled and eager.

Runs in its own process; it starts four engines one after the other (never two at once), on the
same model, options and prompts: plain compiled (vLLM's default), guarded compiled, plain eager,
guarded eager. Workload: PolyRefuse test prompts in several languages, harmful and harmless
mixed, greedy, a fixed number of output tokens per request (``ignore_eos``) so plain and guarded
runs do the same work although steering changes what is generated. Guarded requests use routing
and each carries its own threshold (its language's, plus a per-request offset).

Per engine: its start time (guarded: including loading the gate and the self-check), then per
round and batch size (default 1, 8, 32 requests at once) the output tok/s, and the median
time-to-first-token of prefill-only requests sent one at a time (guarded: including the verdict
RPC, as the server's first output does). The ratios guarded / plain are printed per mode and
batch size; the last line is ``throughput_ratio=<x> ttft_ratio=<x>`` for compiled mode at the
largest batch (goals: >= 0.97 and <= 1.05).

    python bench/overhead.py [--model ID] [--artifact DIR] [--batch-sizes 1,8,32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from babelgate.gate.hf.embedded import MODEL_HELP
from babelgate.paths import DATA_ENV, data_dir
from babelgate.server.shipped import shipped_artifact

KV_BYTES = 1 << 30
MODES = ("compiled", "eager")


def polyrefuse() -> Path:
    """PolyRefuse: $BABELGATE_DATA, else ../shared/data/polyrefuse (``paths.data_dir``)."""
    found = data_dir()
    if found is None:
        raise SystemExit(f"no PolyRefuse: set ${DATA_ENV} or put it in ../shared/data/polyrefuse")
    return found


def load_prompts(languages: list[str], count: int) -> list[tuple[str, str]]:
    """``count`` (text, language) test prompts, harmful and harmless, cycling languages."""
    from babelgate.gate.data import load_polyrefuse

    rows = load_polyrefuse(polyrefuse(), languages=languages, splits=["test"])
    pools = [
        [(r.text, lang) for r in rows if r.language == lang and r.label == label]
        for lang in languages
        for label in (1, 0)
    ]
    return [pools[i % len(pools)][i // len(pools)] for i in range(count)]


@dataclass
class Workload:
    """The benchmark's prompts, token ids, guards and sampling."""

    prompts: list[tuple[str, str]]
    ids: list[list[int]]
    guards: list[Any]
    sampling: Any
    first: Any
    batch_sizes: list[int]
    n_probe: int

    def batches(self, size: int) -> list[list[int]]:
        """Prompt indices: one batch of ``size`` (batch 1: four requests one after another)."""
        if size == 1:
            return [[i] for i in range(4)]
        return [list(range(size))]


def make_workload(args: argparse.Namespace, tokenizer: Any, gate: Any) -> Workload:
    from vllm import SamplingParams

    from babelgate.gate.prompt import chat_prompt_ids
    from babelgate.server.engine.types import GuardParams

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    prompts = load_prompts(args.languages.split(","), max(sizes))
    guards = []
    for i, (_, lang) in enumerate(prompts):
        rec = gate.threshold(lang)  # each request its own threshold
        guards.append(GuardParams(lang, "routing", rec.value + 1e-3 * i, rec.source))
    return Workload(
        prompts=prompts,
        ids=[chat_prompt_ids(tokenizer, text) for text, _ in prompts],
        guards=guards,
        sampling=SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True),
        first=SamplingParams(max_tokens=1),
        batch_sizes=sizes,
        n_probe=min(8, len(prompts)),
    )


class Engine:
    """One engine under test: ``run(indices, sampling)`` generates those prompts in one batch
    (guarded: each with its guard, then one verdict RPC, as the server does)."""

    def __init__(self, kind: str, mode: str, args: argparse.Namespace, work: Workload) -> None:
        options = {"dtype": "float32", "kv_cache_memory_bytes": KV_BYTES, "seed": 0,
                   "enforce_eager": mode == "eager"}  # fmt: skip
        began = time.perf_counter()
        if kind == "plain":
            from vllm import LLM

            from babelgate.gate.hf.model_source import resolve_model

            self.llm = LLM(model=resolve_model(args.model)[1], **options)
            self.guarded = None
        else:
            from babelgate.server.engine.offline import GuardedLLM

            self.guarded = GuardedLLM(args.model, args.artifact, **options)
            self.llm = self.guarded.llm
        self.start_s = time.perf_counter() - began
        self.work = work

    def run(self, indices: list[int], sampling: Any) -> int:
        """Generate; the number of output tokens."""
        w = self.work
        if self.guarded is None:
            requests = [{"prompt_token_ids": w.ids[i]} for i in indices]
            outs = self.llm.generate(requests, [sampling] * len(indices), use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)
        guards = [replace(w.guards[i], id=uuid.uuid4().hex) for i in indices]  # ids are unique
        outs = self.guarded.generate([w.ids[i] for i in indices], sampling, guards)
        if any(o.verdict is None or o.verdict.score is None for o in outs):
            raise RuntimeError("a guarded request came back without a verdict")
        return sum(len(o.token_ids) for o in outs)

    def host_seconds(self) -> float:
        return float(self.guarded.status()["host_seconds"]) if self.guarded else 0.0

    def shutdown(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    began = time.perf_counter()
    tokens = fn()
    return tokens, time.perf_counter() - began


def measure(engine: Engine, work: Workload, rounds: int) -> dict[str, Any]:
    """Per batch size: mean output tok/s over ``rounds``; median single-prefill TTFT (ms); the
    guard's host-side share of the wall time."""
    engine.run(list(range(4)), work.sampling)  # warm caches and allocator alike
    out: dict[str, Any] = {"start_s": engine.start_s}
    host_before, wall = engine.host_seconds(), 0.0
    for size in work.batch_sizes:
        rates = []
        for _ in range(rounds):
            tokens, seconds = 0, 0.0
            for batch in work.batches(size):
                n, s = timed(lambda b=batch: engine.run(b, work.sampling))
                tokens, seconds = tokens + n, seconds + s
            rates.append(tokens / seconds)
            wall += seconds
        out[size] = statistics.mean(rates)
    probes = [timed(lambda i=i: engine.run([i], work.first))[1] for i in range(work.n_probe)]
    out["ttft_ms"] = 1000 * statistics.median(probes)
    out["host_share"] = (engine.host_seconds() - host_before) / wall
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--artifact", default=None, help="gate artifact (default: the shipped one)")
    p.add_argument("--languages", default="en,de,ja,ar,th,yo")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="compiled,eager", help="which modes to measure")
    args = p.parse_args()
    if args.artifact is None:
        shipped = shipped_artifact(args.model)
        if shipped is None:
            p.error("--artifact is required for a model without a shipped calibration")
        args.artifact = str(shipped)
    return args


def print_results(results: dict[tuple[str, str], dict[str, Any]], sizes: list[int]) -> None:
    print()
    head = "".join(f"{f'tok/s b={b}':>12}" for b in sizes)
    print(f"{'engine':<20}{'start s':>9}{head}{'ttft ms':>10}{'host %':>8}")
    for (mode, kind), r in results.items():
        cells = "".join(f"{r[b]:12.1f}" for b in sizes)
        print(f"{kind + ' ' + mode:<20}{r['start_s']:9.1f}{cells}{r['ttft_ms']:10.1f}"
              f"{100 * r['host_share']:8.2f}")  # fmt: skip
    print()
    ratio_line = {}
    for mode in MODES:
        plain, guarded = results.get((mode, "plain")), results.get((mode, "guarded"))
        if not plain or not guarded:
            continue
        ratios = ", ".join(f"b={b} {guarded[b] / plain[b]:.3f}" for b in sizes)
        ttft = guarded["ttft_ms"] / plain["ttft_ms"]
        print(f"{mode}: guarded/plain throughput {ratios}; ttft {ttft:.3f}")
        top = sizes[-1]
        ratio_line[mode] = f"throughput_ratio={guarded[top] / plain[top]:.3f} ttft_ratio={ttft:.3f}"
    eager, compiled = results.get(("eager", "guarded")), results.get(("compiled", "plain"))
    if eager and compiled:
        print(f"guarded eager / plain compiled at b={sizes[-1]}: "
              f"{eager[sizes[-1]] / compiled[sizes[-1]]:.3f} (the eager-only guard's tax)")
    print(ratio_line.get("compiled") or ratio_line.get("eager", ""))


def main() -> None:
    args = parse_args()
    from babelgate.gate.estimator import HarmfulnessGate
    from babelgate.gate.hf.model_source import resolve_model
    from babelgate.server.engine.startup import bind_cpu_threads

    bind_cpu_threads()  # before any engine: plain and guarded compute on the same cores
    _, load_path = resolve_model(args.model)
    gate = HarmfulnessGate.load(args.artifact)
    from transformers import AutoTokenizer

    work = make_workload(args, AutoTokenizer.from_pretrained(load_path), gate)
    print(f"{len(work.prompts)} prompts ({args.languages}; harmful+harmless), {args.max_tokens} "
          f"output tokens each, batch sizes {work.batch_sizes}, {args.rounds} rounds; gate "
          f"{Path(args.artifact).name} reading layers {list(gate.layers)}", flush=True)  # fmt: skip
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for mode in args.modes.split(","):
        for kind in ("plain", "guarded"):
            print(f"starting {kind} {mode} ...", flush=True)
            engine = Engine(kind, mode, args, work)
            try:
                results[(mode, kind)] = measure(engine, work, args.rounds)
            finally:
                engine.shutdown()
            print(f"  {results[(mode, kind)]}", flush=True)
    print_results(results, work.batch_sizes)


if __name__ == "__main__":
    main()
