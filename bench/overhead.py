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
from pathlib import Path

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--artifact", default=None, help="gate artifact (default: fit a quick one)")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--languages", default="en,de,ja,ar,th,yo")
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-compiled", action="store_true", help="no compiled-baseline engine")
    args = p.parse_args()

    from vllm import LLM, SamplingParams

    from gate.hf.model_source import resolve_model
    from gate.prompt import chat_prompt_ids
    from server.engine.offline import GuardedLLM
    from server.engine.types import GateParams, GuardParams
    from server.engine.vllm_backend import VLLMBackend

    languages = args.languages.split(",")
    prompts = load_prompts(languages, args.per_class)
    texts = [t for t, _, _ in prompts]
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    _, load_path = resolve_model(args.model)
    print(f"{len(prompts)} prompts ({', '.join(languages)}; harmful+harmless), "
          f"{args.max_tokens} output tokens each, {args.rounds} rounds")

    began = time.perf_counter()
    backend = VLLMBackend(args.model, dtype="float32", seed=0)
    eager_start = time.perf_counter() - began
    if args.artifact:
        gate = args.artifact
    else:
        gate = GateParams.from_gate(fit_gate(backend, args.layer, ["en", "de", "fr", "es"], 16))
    guarded = GuardedLLM(args.model, gate, llm=backend.llm)
    thresholds = {}
    if args.artifact:
        from gate.estimator import HarmfulnessGate

        loaded = HarmfulnessGate.load(args.artifact)
        thresholds = {lang: loaded.threshold(lang) for lang in languages}
    requests = [{"prompt_token_ids": chat_prompt_ids(guarded.tokenizer, t)} for t in texts]

    def guards() -> list[GuardParams]:
        out = []
        for _, lang, _ in prompts:
            rec = thresholds.get(lang)
            value, source = (rec.value, rec.source) if rec else (0.0, "bench")
            out.append(GuardParams(lang, "routing", value, source))
        return out

    first = SamplingParams(max_tokens=1)
    n_probe = min(16, len(texts))

    def plain_one(llm):
        return lambda i: llm.generate([requests[i]], [first], use_tqdm=False)

    def guarded_one(i):
        _, lang, _ = prompts[i]
        guarded.generate([texts[i]], first, [GuardParams(lang, "routing", 0.0, "bench")])

    run_plain(backend.llm, requests[:4], sampling)  # warm caches and allocator alike
    plain_eager, guarded_eager, hook_share = [], [], []
    for _ in range(args.rounds):
        guarded.uninstall()
        plain_eager.append(run_plain(backend.llm, requests, sampling))
        plain_eager[-1]["ttft_ms"] = probe_ttft(plain_one(backend.llm), n_probe)
        guarded.install()
        before = guarded.status()["hook_seconds"]
        guarded_eager.append(run_guarded(guarded, texts, sampling, guards()))
        guarded_eager[-1]["ttft_ms"] = probe_ttft(guarded_one, n_probe)
        spent = guarded.status()["hook_seconds"] - before
        hook_share.append(spent / guarded_eager[-1]["seconds"])
    backend.shutdown()

    compiled: list[dict[str, float]] = []
    compiled_start = float("nan")
    if not args.skip_compiled:
        began = time.perf_counter()
        llm = LLM(model=load_path, dtype="float32", kv_cache_memory_bytes=KV_BYTES, seed=0)
        compiled_start = time.perf_counter() - began
        run_plain(llm, requests[:4], sampling)
        for _ in range(args.rounds):
            compiled.append(run_plain(llm, requests, sampling))
            compiled[-1]["ttft_ms"] = probe_ttft(plain_one(llm), n_probe)
        llm.llm_engine.engine_core.shutdown()

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
    print(f"guarded decisions: {harmful} harmful / {len(prompts) - harmful} harmless")
    eager_tput = mean(guarded_eager, "tok_s") / mean(plain_eager, "tok_s")
    eager_ttft = mean(guarded_eager, "ttft_ms") / mean(plain_eager, "ttft_ms")
    print(f"eager vs eager: throughput {eager_tput:.3f}, ttft {eager_ttft:.3f}")
    print(f"where the time goes: hooks {100 * float(np.mean(hook_share)):.1f}% of the guarded "
          f"batch wall time; verdict RPC {mean(guarded_eager, 'rpc_ms'):.1f} ms per batch "
          "(one call for all requests)")
    base = compiled or plain_eager
    print(f"throughput_ratio={mean(guarded_eager, 'tok_s') / mean(base, 'tok_s'):.3f} "
          f"ttft_ratio={mean(guarded_eager, 'ttft_ms') / mean(base, 'ttft_ms'):.3f}")


if __name__ == "__main__":
    main()
