"""Does Multilingual HateCheck in the gate's training data help on the held-out benchmark?

A developer's experiment, not part of the package (issue 23, "training data that covers more
kinds of harm"). The shipped crossdata gate (full readout, layer 14, weight decay 0.01) is fitted
on PolyRefuse train and the style prompts in the 10 training languages; its held-out failures are
benign prompts about harm (XSafety's ethics and mental-health questions in de, hi and bn score
as high as crimes). Here the same configuration, and two neighbours, are fitted on that data
alone, with HateCheck's benign text about harm added (``evaluation/data/hate``, labels 0), and
with its threats added as well (labels 1). HateCheck covers 7 of the training languages; hi, ar
and bn stay unseen.

Three row sets, none in any training set:

- **dev** (the choice): per language, 40 XSafety rows per class outside the benchmark's sample;
- **benchmark**: the protection benchmark's own gate rows (``babelgate eval --protection``:
  40 per class and language, its seeds), reported for every variant but chosen on by none;
- PolyRefuse's validation split (issue 23 bounds its AUROC loss at 0.02).

The rule, fixed before the run: the variant with the highest mean dev AUROC at the shipped
configuration is kept if it beats the shipped training data there by at least 0.02 and loses at
most 0.02 of validation AUROC. Gates are fitted by the library (``gate.selection.fit_on``);
activations go through the cache ``babelgate calibrate`` fills (about 3 prompts a second on two
cores when cold).

    python scripts/hate_data_transfer.py --out docs/eval/qwen2.5-coder-0.5b/hate-data-transfer
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from gate_search import (
    by_language,
    mean_auroc,
    mean_of,
    test_scores,
    training_rows,
    validation_rows,
)

from babelgate.evaluation.heldout import load_heldout, stratified_sample
from babelgate.evaluation.protection import DEFAULT_GATE_PER_CLASS, language_seed
from babelgate.evaluation.protection import by_language as by_prompt_language
from babelgate.gate.activation_cache import CachedBackend
from babelgate.gate.data import LabelledPrompt, load_dataset
from babelgate.gate.hf.backend import TransformersBackend
from babelgate.gate.selection import Candidate, fit_on
from babelgate.paths import cache_root

HATE = Path("evaluation/data/hate")
CONFIGS = ((14, 0.01), (14, 1.0), (22, 0.01))  # the first is the shipped crossdata gate's
MIN_GAIN = 0.02
MAX_VAL_DROP = 0.02


def split_xsafety(seed: int) -> tuple[list[LabelledPrompt], list[LabelledPrompt]]:
    """(benchmark rows, dev rows): per language, the protection benchmark's gate sample, and as
    many again drawn with another seed from the language's XSafety rows outside it."""
    bench: list[LabelledPrompt] = []
    dev: list[LabelledPrompt] = []
    for lang, every in sorted(by_prompt_language(load_heldout()).items()):
        picked = stratified_sample(every, DEFAULT_GATE_PER_CLASS, language_seed(seed, lang))
        taken = {p.text for p in picked}
        rest = [p for p in every if (p.style or "").startswith("xsafety-") and p.text not in taken]
        bench += picked
        dev += stratified_sample(rest, DEFAULT_GATE_PER_CLASS, language_seed(seed + 1, lang))
    return bench, dev


def decide(results: list[dict]) -> dict:
    """The rule fixed before the run, at the shipped configuration (the first of ``CONFIGS``)."""
    layer, wd = CONFIGS[0]
    at = [r for r in results if (r["layer"], r["weight_decay"]) == (layer, wd)]
    base = at[0]
    best = max(at[1:], key=lambda r: r["dev_mean"]["auroc"])
    gain = best["dev_mean"]["auroc"] - base["dev_mean"]["auroc"]
    drop = base["val_auroc"] - best["val_auroc"]
    return {"best": best["variant"], "dev_gain": gain, "val_drop": drop,
            "keep": gain >= MIN_GAIN and drop <= MAX_VAL_DROP}  # fmt: skip


def render(result: dict) -> str:
    """``transfer.md``: the decision, every variant's means, and the benchmark per language."""
    meta, results = result["meta"], result["results"]
    verdict = decide(results)
    lines = [
        "# HateCheck in the gate's training data (held out: XSafety)",
        "",
        f"Model `{meta['model']}`. Command: `{meta['command']}` ({meta['wall_time_s']} s, "
        f"`uptime` load {meta['load_at_start']} at its start). Training: PolyRefuse train and "
        f"the style prompts in the 10 training languages ({meta['train_rows']} rows), alone, "
        f"with HateCheck's {meta['benign_rows']} benign rows about hate (counter-speech, neutral "
        f"and positive statements, negated hate), and with its {meta['hate_rows']} rows "
        "(threats as harmful) in de fr es it nl pl zh (`evaluation/data/hate/`). Dev (the choice): "
        f"{meta['dev_rows']} XSafety rows outside the benchmark's sample. Benchmark: the "
        f"protection benchmark's {meta['benchmark_rows']} gate rows, reported, not chosen on.",
        "",
        f"The rule, fixed before the run: keep the better variant at the shipped configuration "
        f"(layer {CONFIGS[0][0]}, weight decay {CONFIGS[0][1]:g}) if its mean dev AUROC gains >= "
        f"{MIN_GAIN:g} and its PolyRefuse validation AUROC loses <= {MAX_VAL_DROP:g}. "
        f"Best: **{verdict['best']}**, dev gain {verdict['dev_gain']:+.3f}, validation "
        f"{-verdict['val_drop']:+.3f}: **{'kept' if verdict['keep'] else 'not kept'}**.",
        "",
        "| training data | layer | weight decay | validation AUROC | dev AUROC | dev recall at "
        "FPR <= 0.1 | benchmark AUROC | benchmark recall at FPR <= 0.1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d, b = r["dev_mean"], r["benchmark_mean"]
        lines.append(
            f"| {r['variant']} | {r['layer']} | {r['weight_decay']:g} | {r['val_auroc']:.3f} | "
            f"{d['auroc']:.3f} | {d['recall_at_fpr']:.3f} | {b['auroc']:.3f} | "
            f"{b['recall_at_fpr']:.3f} |"
        )
    at = [r for r in results if (r["layer"], r["weight_decay"]) == CONFIGS[0]]
    lines += ["", "Benchmark AUROC per language at the shipped configuration [bootstrap 95 %]:",
              "", "| language | " + " | ".join(r["variant"] for r in at) + " |",
              "|---|" + "---|" * len(at)]  # fmt: skip
    for lang in sorted(at[0]["benchmark"]):
        cells = [r["benchmark"][lang] for r in at]
        cell = [f"{c['auroc']:.3f} [{c['low']:.2f}, {c['high']:.2f}]" for c in cells]
        lines.append(f"| {lang} | " + " | ".join(cell) + " |")
    lines += ["", "Recall at FPR <= 0.1 takes the best threshold per language on the rows "
              "themselves: an upper bound on what a threshold rule could reach."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:qwen2.5-coder-0.5b")
    parser.add_argument("--polyrefuse", default="../shared/data/polyrefuse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--render", action="store_true", help="only rewrite transfer.md")
    args = parser.parse_args()
    if args.render:
        result = json.loads((args.out / "transfer.json").read_text(encoding="utf-8"))
        (args.out / "transfer.md").write_text(render(result), encoding="utf-8")
        return 0
    load = os.getloadavg()[0]
    started = time.monotonic()
    backend = CachedBackend(TransformersBackend(args.model), cache_root() / "activations")

    def activations(rows: list[LabelledPrompt], what: str) -> np.ndarray:
        t = time.monotonic()
        out = backend.activations([p.text for p in rows], batch_size=16)
        print(f"{what}: {len(rows)} rows, {time.monotonic() - t:.0f} s", flush=True)
        return out

    def data(rows: list[LabelledPrompt], what: str) -> dict:
        return by_language(rows, activations(rows, what))

    bench_rows, dev_rows = split_xsafety(args.seed)
    bench, dev = data(bench_rows, "benchmark"), data(dev_rows, "dev")
    hate = load_dataset(HATE)
    benign = [p for p in hate if p.label == 0]
    base = training_rows(args.polyrefuse, topics=False)
    # every variant is the shipped rows followed by some of HateCheck's, in file order: read
    # the activations once and pick each variant's rows from them
    train_rows = base + hate
    train_acts = activations(train_rows, "train and hatecheck")
    val = data(validation_rows(args.polyrefuse, args.seed), "validation")
    shipped = list(range(len(base)))
    variants = {"shipped data": shipped,
                "+ HateCheck benign": shipped + [len(base) + i for i, p in enumerate(hate)
                                                 if p.label == 0],
                "+ HateCheck benign and threats": list(range(len(train_rows)))}  # fmt: skip
    results = []
    for name, picked in variants.items():
        fitted = by_language([train_rows[i] for i in picked], train_acts[picked])
        for layer, wd in CONFIGS:
            gate = fit_on(Candidate((layer,), wd, "full"), fitted, rank=10, seed=args.seed)
            entry = {"variant": name, "layer": layer, "weight_decay": wd,
                     "val_auroc": mean_auroc(gate, val), "dev": test_scores(gate, dev),
                     "benchmark": test_scores(gate, bench, intervals=True)}  # fmt: skip
            for key in ("dev", "benchmark"):
                entry[f"{key}_mean"] = {
                    k: mean_of(entry[key], k) for k in ("auroc", "recall_at_fpr")
                }
            results.append(entry)
            print(name, layer, wd, round(entry["val_auroc"], 3),
                  {k: round(entry[k]["auroc"], 3) for k in ("dev_mean", "benchmark_mean")},
                  flush=True)  # fmt: skip
    meta = {"model": args.model, "seed": args.seed, "hate_rows": len(hate),
            "benign_rows": len(benign), "train_rows": len(base), "dev_rows": len(dev_rows),
            "benchmark_rows": len(bench_rows), "load_at_start": round(load, 2),
            "wall_time_s": round(time.monotonic() - started),
            "command": f"python scripts/hate_data_transfer.py --out {args.out}"}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "results": results}
    (args.out / "transfer.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "transfer.md").write_text(render(result), encoding="utf-8")
    print(json.dumps(decide(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
