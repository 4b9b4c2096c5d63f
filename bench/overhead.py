"""Overhead of the guard inside vLLM: plain vLLM vs babelgate routing, compiled and eager.

Runs in its own process. Per mode (compiled, vLLM's default, then eager) it starts a plain and a
guarded engine on the same model, options and prompts and keeps both alive while it measures
them in turns: round by round, A then B, then B then A (the first of a pair alternates), so both
see the same minute of a machine whose speed drifts (by a fifth between phases on a shared
2-core machine, enough to make the guard look 14 % faster than vLLM when each engine ran all its
rounds in its own minutes). Workload: PolyRefuse test prompts in several languages, harmful and
harmless mixed, greedy, a fixed number of output tokens per request (``ignore_eos``) so plain
and guarded runs do the same work although steering changes what is generated. Guarded requests
use routing and each carries its own threshold (its language's, plus a per-request offset).

Per engine: its start time (guarded: including loading the gate and the self-check), then per
round and batch size (default 1, 8, 32 requests at once) the output tok/s, and per round the
median time-to-first-token of prefill-only requests sent one at a time (guarded: including the
verdict RPC, as the server's first output does). Per round the ratios guarded / plain; printed
and recorded: their median over rounds and its range. The last line is
``throughput_ratio=<median> ttft_ratio=<median>`` for compiled mode at the largest batch
(goals: >= 0.97 and <= 1.05). The JSON record (``bench/record.py``) has every round's figures.

    python bench/overhead.py [--model ID] [--artifact DIR] [--batch-sizes 1,8,32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from record import BenchRecord, add_out_argument, describe, portable, spread

from babelgate.gate.hf.embedded import MODEL_HELP
from babelgate.paths import DATA_ENV, data_dir
from babelgate.server.shipped import shipped_artifact

KV_BYTES = 1 << 30
KINDS = ("plain", "guarded")  # the pair measured in turns: baseline first


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


def throughput(engine: Engine, work: Workload, size: int) -> dict[str, float]:
    """Output tokens, seconds and tok/s of ``size`` requests at once (1: four in a row)."""
    tokens, seconds = 0, 0.0
    for batch in work.batches(size):
        n, s = timed(lambda b=batch: engine.run(b, work.sampling))
        tokens, seconds = tokens + n, seconds + s
    return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}


def ttft_probes(engine: Engine, work: Workload) -> list[float]:
    """Milliseconds of each single-prefill request, sent one at a time."""
    return [1000 * timed(lambda i=i: engine.run([i], work.first))[1] for i in range(work.n_probe)]


def run_round(engines: dict[str, Engine], order: tuple[str, ...], work: Workload) -> dict:
    """One round: per batch size each engine in ``order``, then each engine's TTFT probes."""
    out: dict[str, Any] = {"order": list(order)}
    out.update({kind: {"batches": {}} for kind in order})
    for size in work.batch_sizes:
        for kind in order:
            out[kind]["batches"][size] = throughput(engines[kind], work, size)
    for kind in order:
        out[kind]["ttft_ms"] = ttft_probes(engines[kind], work)
    return out


def measure_pair(engines: dict[str, Engine], work: Workload, rounds: int) -> dict[str, Any]:
    """Both engines, alive together, measured in turns: the first of each round alternates, so
    a drift of the machine's speed hits both alike. Every round's figures; the guard's
    host-side share of its engine's batch wall time."""
    for engine in engines.values():
        engine.run(list(range(4)), work.sampling)  # warm caches and allocator alike
    guarded = engines["guarded"]
    host_before = guarded.host_seconds()
    per_round = [run_round(engines, KINDS if r % 2 == 0 else KINDS[::-1], work)
                 for r in range(rounds)]  # fmt: skip
    wall = sum(b["seconds"] for r in per_round for b in r["guarded"]["batches"].values())
    return {"start_s": {kind: engine.start_s for kind, engine in engines.items()},
            "rounds": per_round,
            "guard_host_share": (guarded.host_seconds() - host_before) / wall}  # fmt: skip


def pair_ratios(result: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """Guarded / plain per round (throughput per batch size, median TTFT), with their median
    and range over rounds."""
    rounds = result["rounds"]
    out = {}
    for size in sizes:
        per = [r["guarded"]["batches"][size]["tok_s"] / r["plain"]["batches"][size]["tok_s"]
               for r in rounds]  # fmt: skip
        out[f"throughput_b{size}"] = {"per_round": per, **spread(per)}
    per = [statistics.median(r["guarded"]["ttft_ms"]) / statistics.median(r["plain"]["ttft_ms"])
           for r in rounds]  # fmt: skip
    out["ttft"] = {"per_round": per, **spread(per)}
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--artifact", default=None, help="gate artifact (default: the shipped one)")
    p.add_argument("--languages", default="en,de,ja,ar,th,yo")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="rounds per engine pair, interleaved")
    p.add_argument("--modes", default="compiled,eager", help="which modes to measure")
    add_out_argument(p, "overhead")
    args = p.parse_args()
    if args.artifact is None:
        shipped = shipped_artifact(args.model)
        if shipped is None:
            p.error("--artifact is required for a model without a shipped calibration")
        args.artifact = str(shipped)
    return args


def print_results(results: dict[str, dict[str, Any]], ratios: dict[str, Any],
                  sizes: list[int]) -> None:  # fmt: skip
    """Per engine the medians over rounds; per mode the ratios' medians and ranges; the last
    line for compiled mode (eager when only eager ran)."""
    print()
    head = "".join(f"{f'tok/s b={b}':>12}" for b in sizes)
    print(f"{'engine (median)':<20}{'start s':>9}{head}{'ttft ms':>10}{'host %':>8}")
    for mode, r in results.items():
        for kind in KINDS:
            rates = [statistics.median(x[kind]["batches"][b]["tok_s"] for x in r["rounds"])
                     for b in sizes]  # fmt: skip
            ttft = statistics.median(statistics.median(x[kind]["ttft_ms"]) for x in r["rounds"])
            host = f"{100 * r['guard_host_share']:8.2f}" if kind == "guarded" else ""
            print(f"{kind + ' ' + mode:<20}{r['start_s'][kind]:9.1f}"
                  + "".join(f"{x:12.1f}" for x in rates) + f"{ttft:10.1f}{host}")  # fmt: skip
    print()
    last = ""
    for mode, by in ratios.items():
        cells = ", ".join(f"b={b} {describe(by[f'throughput_b{b}'])}" for b in sizes)
        print(f"{mode}: guarded/plain throughput {cells}; ttft {describe(by['ttft'])}")
        top, ttft = by[f"throughput_b{sizes[-1]}"], by["ttft"]
        line = (f"throughput_ratio={top['median']:.3f} throughput_range={top['min']:.3f}-"
                f"{top['max']:.3f} ttft_ratio={ttft['median']:.3f} ttft_range={ttft['min']:.3f}-"
                f"{ttft['max']:.3f}")  # fmt: skip
        if mode == "compiled" or not last:
            last = line
    print(last)


def main() -> None:
    args = parse_args()
    record = BenchRecord("overhead")
    from babelgate.gate.estimator import HarmfulnessGate
    from babelgate.gate.hf.model_source import resolve_model
    from babelgate.server.engine.startup import bind_cpu_threads

    bind_cpu_threads()  # before any engine: plain and guarded compute on the same cores
    _, load_path = resolve_model(args.model)
    gate = HarmfulnessGate.load(args.artifact)
    from transformers import AutoTokenizer

    work = make_workload(args, AutoTokenizer.from_pretrained(load_path), gate)
    print(f"{len(work.prompts)} prompts ({args.languages}; harmful+harmless), {args.max_tokens} "
          f"output tokens each, batch sizes {work.batch_sizes}, {args.rounds} interleaved rounds;"
          f" gate {Path(args.artifact).name} reading layers {list(gate.layers)}",
          flush=True)  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    ratios: dict[str, Any] = {}
    for mode in args.modes.split(","):
        with contextlib.ExitStack() as alive:
            engines = {}
            for kind in KINDS:
                print(f"starting {kind} {mode} ...", flush=True)
                engines[kind] = Engine(kind, mode, args, work)
                alive.callback(engines[kind].shutdown)
            results[mode] = measure_pair(engines, work, args.rounds)
        ratios[mode] = pair_ratios(results[mode], work.batch_sizes)
        print(f"  {mode}: {ratios[mode]}", flush=True)
    print_results(results, ratios, work.batch_sizes)
    workload = {"prompts": len(work.prompts), "languages": args.languages.split(","),
                "max_tokens": args.max_tokens, "batch_sizes": work.batch_sizes,
                "rounds": args.rounds, "ttft_probes": work.n_probe,
                "artifact": portable(str(Path(args.artifact).resolve())),
                "gate_layers": list(gate.layers)}  # fmt: skip
    record.write({"workload": workload, "modes": results}, ratios, args.out)


if __name__ == "__main__":
    main()
