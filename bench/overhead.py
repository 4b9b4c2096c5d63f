"""Overhead of guarded generation: plain vLLM vs babelgate routing inside vLLM.

Runs in its own process (it starts vLLM engines, one at a time). Workload: PolyRefuse test
prompts in several languages, harmful and harmless mixed, greedy, a fixed number of output
tokens per request (``ignore_eos``) so plain and guarded runs do the same amount of work even
though steering changes what is generated.

Measured in one run:
1. eager vs eager, on one engine, alternating rounds: plain (hooks removed) / guarded (routing
   installed, every request carrying guard parameters), so machine noise hits both alike;
2. the default baseline: plain vLLM as a user runs it (compiled, vLLM's default on CPU), on a
   second engine started after the first is shut down.
Per round: output tok/s of the batch, median time-to-first-token of prefill-only requests sent
one at a time (guarded: including the verdict RPC), and the verdict RPC's cost. The hook's own
time is read from the worker.

    python bench/overhead.py [--model DIR] [--languages en,de,ja,ar,th,yo] [--per-class 8]

The last line is ``throughput_ratio=<guarded/plain compiled> ttft_ratio=<guarded/plain>``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gate.hf.embedded import MODEL_HELP
from paths import DATA_ENV, data_dir

KV_BYTES = 1 << 30


def polyrefuse() -> Path:
    """PolyRefuse: $BABELGATE_DATA, else ../shared/data/polyrefuse (``paths.data_dir``)."""
    found = data_dir()
    if found is None:
        raise SystemExit(f"no PolyRefuse: set ${DATA_ENV} or put it in ../shared/data/polyrefuse")
    return found


def load_prompts(languages: list[str], per_class: int) -> list[tuple[str, str, int]]:
    from gate.data import load_polyrefuse

    rows = load_polyrefuse(polyrefuse(), languages=languages, splits=["test"])
    out = []
    for lang in languages:
        for label in (1, 0):
            texts = [r.text for r in rows if r.language == lang and r.label == label]
            out += [(t, lang, label) for t in texts[:per_class]]
    return out


def fit_gate(backend, layer: int, languages: list[str], per_class: int):
    """A gate fitted on train prompts with the engine's own activations (the benchmark measures
    cost, not accuracy; a calibrated artifact can be passed with --artifact instead)."""
    from gate.data import load_polyrefuse
    from gate.estimator import GateConfig, HarmfulnessGate

    rows = load_polyrefuse(polyrefuse(), languages=languages, splits=["train"])
    train = {}
    for lang in languages:
        pos = [r.text for r in rows if r.language == lang and r.label == 1][:per_class]
        neg = [r.text for r in rows if r.language == lang and r.label == 0][:per_class]
        acts = backend.activations(pos + neg, [layer], progress=False)[:, 0]
        train[lang] = (acts, np.array([1] * len(pos) + [0] * len(neg)))
    return HarmfulnessGate(GateConfig(layer=layer, rank=4), backend.model_info).fit(train)


def batch_stats(outputs, seconds: float) -> dict[str, float]:
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"seconds": seconds, "tok_s": tokens / seconds}


def probe_ttft(generate_one, n: int) -> float:
    """Median latency (ms) of single prefill-only requests: time to first token for a request
    alone (offline vLLM keeps no per-request timing metrics). For the guarded engine
    ``generate_one`` includes the verdict RPC, as the server's first output does."""
    times = []
    for i in range(n):
        began = time.perf_counter()
        generate_one(i)
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def run_plain(llm, requests, sampling) -> dict[str, float]:
    began = time.perf_counter()
    outputs = llm.generate(requests, [sampling] * len(requests), use_tqdm=False)
    return batch_stats(outputs, time.perf_counter() - began)


def run_guarded(guarded, texts, sampling, guards) -> dict[str, float]:
    """The guarded batch as the server would do it: the same requests plus one verdict RPC."""
    from server.engine.types import EXTRA_ARGS_KEY

    requests, params = [], []
    for text, guard in zip(texts, guards, strict=True):
        request = {"prompt_token_ids": guarded.prompt_ids(text)}
        salt = guard.cache_salt(guarded.gate.fingerprint)
        if salt is not None:
            request["cache_salt"] = salt
        sp = sampling.clone()
        sp.extra_args = {EXTRA_ARGS_KEY: guard.to_extra_args()}
        requests.append(request)
        params.append(sp)
    began = time.perf_counter()
    outputs = guarded.llm.generate(requests, params, use_tqdm=False)
    rpc_began = time.perf_counter()
    verdicts = guarded.verdicts([g.id for g in guards])
    rpc = time.perf_counter() - rpc_began
    stats = batch_stats(outputs, time.perf_counter() - began)
    stats["rpc_ms"] = 1000 * rpc
    stats["harmful"] = sum(bool(v.harmful) for v in verdicts.values())
    return stats


def mean(rows: list[dict[str, float]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--artifact", default=None, help="gate artifact (default: fit a quick one)")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--languages", default="en,de,ja,ar,th,yo")
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-compiled", action="store_true", help="no compiled-baseline engine")
    return p.parse_args()


@dataclass
class Workload:
    """The benchmark's requests: prompts (text, language, label), their token ids, the batch
    sampling and the single-token sampling of the time-to-first-token probes."""

    prompts: list[tuple[str, str, int]]
    requests: list[dict]
    sampling: Any
    first: Any
    thresholds: dict[str, Any]  # language -> the artifact's ThresholdRecord (none: 0.0)

    @property
    def texts(self) -> list[str]:
        return [t for t, _, _ in self.prompts]

    @property
    def n_probe(self) -> int:
        return min(16, len(self.prompts))

    def guards(self) -> list[Any]:
        """Guard parameters for every prompt: its language's stored threshold, or 0.0."""
        from server.engine.types import GuardParams

        out = []
        for _, lang, _ in self.prompts:
            rec = self.thresholds.get(lang)
            value, source = (rec.value, rec.source) if rec else (0.0, "bench")
            out.append(GuardParams(lang, "routing", value, source))
        return out


def start_guarded(args: argparse.Namespace) -> tuple[Any, Any, float]:
    """The eager vLLM engine and the guarded LLM on it (the --artifact gate, or one fitted on
    the engine's activations), and the engine's start time in seconds."""
    from server.engine.offline import GuardedLLM
    from server.engine.types import GateParams
    from server.engine.vllm_backend import VLLMBackend

    began = time.perf_counter()
    backend = VLLMBackend(args.model, dtype="float32", seed=0)
    eager_start = time.perf_counter() - began
    if args.artifact:
        gate = args.artifact
    else:
        gate = GateParams.from_gate(fit_gate(backend, args.layer, ["en", "de", "fr", "es"], 16))
    return backend, GuardedLLM(args.model, gate, llm=backend.llm), eager_start


def make_workload(args: argparse.Namespace, prompts: list[tuple[str, str, int]],
                  guarded: Any) -> Workload:  # fmt: skip
    """Token ids and sampling for ``prompts``, thresholds from --artifact if given."""
    from vllm import SamplingParams

    from gate.prompt import chat_prompt_ids

    thresholds = {}
    if args.artifact:
        from gate.estimator import HarmfulnessGate

        loaded = HarmfulnessGate.load(args.artifact)
        languages = args.languages.split(",")
        thresholds = {lang: loaded.threshold(lang) for lang in languages}
    texts = [t for t, _, _ in prompts]
    return Workload(
        prompts=prompts,
        requests=[{"prompt_token_ids": chat_prompt_ids(guarded.tokenizer, t)} for t in texts],
        sampling=SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True),
        first=SamplingParams(max_tokens=1),
        thresholds=thresholds,
    )


def plain_one(llm, work: Workload):
    """One prefill-only request on a plain engine, by index (for ``probe_ttft``)."""
    return lambda i: llm.generate([work.requests[i]], [work.first], use_tqdm=False)


def measure_eager(backend, guarded, work: Workload, rounds: int):
    """Alternating rounds on one eager engine, plain (hooks removed) then guarded: per round
    the batch stats with ttft; and the share of the guarded batch's time spent in hooks."""
    from server.engine.types import GuardParams

    def guarded_one(i):
        _, lang, _ = work.prompts[i]
        guarded.generate([work.texts[i]], work.first, [GuardParams(lang, "routing", 0.0, "bench")])

    run_plain(backend.llm, work.requests[:4], work.sampling)  # warm caches and allocator alike
    plain_eager, guarded_eager, hook_share = [], [], []
    for _ in range(rounds):
        guarded.uninstall()
        plain_eager.append(run_plain(backend.llm, work.requests, work.sampling))
        plain_eager[-1]["ttft_ms"] = probe_ttft(plain_one(backend.llm, work), work.n_probe)
        guarded.install()
        before = guarded.status()["hook_seconds"]
        guarded_eager.append(run_guarded(guarded, work.texts, work.sampling, work.guards()))
        guarded_eager[-1]["ttft_ms"] = probe_ttft(guarded_one, work.n_probe)
        spent = guarded.status()["hook_seconds"] - before
        hook_share.append(spent / guarded_eager[-1]["seconds"])
    return plain_eager, guarded_eager, hook_share


def measure_compiled(load_path, work: Workload, rounds: int) -> tuple[list[dict], float]:
    """Plain vLLM as a user runs it (compiled): per round batch stats with ttft, and the
    engine's start time in seconds."""
    from vllm import LLM

    began = time.perf_counter()
    llm = LLM(model=load_path, dtype="float32", kv_cache_memory_bytes=KV_BYTES, seed=0)
    compiled_start = time.perf_counter() - began
    run_plain(llm, work.requests[:4], work.sampling)
    compiled: list[dict[str, float]] = []
    for _ in range(rounds):
        compiled.append(run_plain(llm, work.requests, work.sampling))
        compiled[-1]["ttft_ms"] = probe_ttft(plain_one(llm, work), work.n_probe)
    llm.llm_engine.engine_core.shutdown()
    return compiled, compiled_start


def print_results(n_prompts: int, eager_start: float, plain_eager, guarded_eager, hook_share,
                  compiled, compiled_start: float) -> None:  # fmt: skip
    """The table per engine, where the time goes, and the ratios line."""
    print()
    print(f"{'engine':<26}{'start s':>9}{'tok/s':>10}{'ttft ms':>10}{'batch s':>10}")
    rows = [("plain eager", eager_start, plain_eager), ("guarded eager (routing)", None,
            guarded_eager)]
    if compiled:
        rows.append(("plain compiled (default)", compiled_start, compiled))
    for name, start, runs in rows:
        start_s = f"{start:9.1f}" if start is not None else f"{'':>9}"
        print(f"{name:<26}{start_s}{mean(runs, 'tok_s'):10.1f}{mean(runs, 'ttft_ms'):10.1f}"
              f"{mean(runs, 'seconds'):10.2f}")
    harmful = int(guarded_eager[-1]["harmful"])
    print()
    print(f"guarded decisions: {harmful} harmful / {n_prompts - harmful} harmless")
    eager_tput = mean(guarded_eager, "tok_s") / mean(plain_eager, "tok_s")
    eager_ttft = mean(guarded_eager, "ttft_ms") / mean(plain_eager, "ttft_ms")
    print(f"eager vs eager: throughput {eager_tput:.3f}, ttft {eager_ttft:.3f}")
    print(f"where the time goes: hooks {100 * float(np.mean(hook_share)):.1f}% of the guarded "
          f"batch wall time; verdict RPC {mean(guarded_eager, 'rpc_ms'):.1f} ms per batch "
          "(one call for all requests)")
    base = compiled or plain_eager
    print(f"throughput_ratio={mean(guarded_eager, 'tok_s') / mean(base, 'tok_s'):.3f} "
          f"ttft_ratio={mean(guarded_eager, 'ttft_ms') / mean(base, 'ttft_ms'):.3f}")


def main() -> None:
    args = parse_args()
    from gate.hf.model_source import resolve_model

    languages = args.languages.split(",")
    prompts = load_prompts(languages, args.per_class)
    _, load_path = resolve_model(args.model)
    print(f"{len(prompts)} prompts ({', '.join(languages)}; harmful+harmless), "
          f"{args.max_tokens} output tokens each, {args.rounds} rounds")

    backend, guarded, eager_start = start_guarded(args)
    work = make_workload(args, prompts, guarded)
    plain_eager, guarded_eager, hook_share = measure_eager(backend, guarded, work, args.rounds)
    backend.shutdown()

    compiled: list[dict[str, float]] = []
    compiled_start = float("nan")
    if not args.skip_compiled:
        compiled, compiled_start = measure_compiled(load_path, work, args.rounds)
    print_results(len(prompts), eager_start, plain_eager, guarded_eager, hook_share, compiled,
                  compiled_start)  # fmt: skip


if __name__ == "__main__":
    main()
