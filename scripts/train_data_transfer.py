"""Does adding the English held-out datasets to the gate's training data help on XSafety?

A developer's experiment, not part of the package (issue 23, "training data that covers more
kinds of harm and more ways of asking", and leave-one-dataset-out). The shipped crossdata gate
is fitted on PolyRefuse train and the style prompts in the 10 training languages. Here the same
configurations (full readout, a few layers and weight decays around crossdata's: layer 14,
weight decay 0.01) are fitted twice, without and with the English rows of Do-Not-Answer,
SimpleSafetyTests and XSTest (harmful questions in another phrasing, and XSTest's safe prompts
that look unsafe: benign questions about harm), and scored on what neither saw: every XSafety
row, per language, and PolyRefuse's validation split. Gates are fitted by the library
(``gate.selection.fit_on``); activations come from the cache ``babelgate calibrate`` fills.

    python scripts/train_data_transfer.py --out docs/eval/qwen2.5-coder-0.5b/train-data-transfer
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from gate_search import (
    by_language,
    mean_auroc,
    mean_of,
    test_scores,
    training_rows,
    validation_rows,
)

from babelgate.evaluation.heldout import load_heldout
from babelgate.gate.activation_cache import CachedBackend
from babelgate.gate.hf.backend import TransformersBackend
from babelgate.gate.selection import Candidate, fit_on
from babelgate.paths import cache_root

LAYERS = (14, 18, 22)
WEIGHT_DECAYS = (0.01, 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:qwen2.5-coder-0.5b")
    parser.add_argument("--polyrefuse", default="../shared/data/polyrefuse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.monotonic()
    backend = CachedBackend(TransformersBackend(args.model), cache_root() / "activations")

    def acts(rows):
        return backend.activations([p.text for p in rows], batch_size=16)

    heldout = load_heldout()
    english = [p for p in heldout if p.language == "en"
               and not (p.style or "").startswith("xsafety-")]  # fmt: skip
    xsafety = [p for p in heldout if (p.style or "").startswith("xsafety-")]
    test = by_language(xsafety, acts(xsafety))
    val_rows = validation_rows(args.polyrefuse, args.seed)
    val = by_language(val_rows, acts(val_rows))
    base = training_rows(args.polyrefuse, topics=False)
    results = []
    for layer, wd, added in itertools.product(LAYERS, WEIGHT_DECAYS, (False, True)):
        rows = base + (english if added else [])
        gate = fit_on(Candidate((layer,), wd, "full"), by_language(rows, acts(rows)),
                      rank=10, seed=args.seed)  # fmt: skip
        per = test_scores(gate, test)
        entry = {"layer": layer, "weight_decay": wd, "english_heldout_added": added,
                 "val_auroc": mean_auroc(gate, val), "test": per,
                 "test_mean": {k: mean_of(per, k) for k in ("auroc", "recall_at_fpr")}}  # fmt: skip
        results.append(entry)
        print(
            layer,
            wd,
            added,
            round(entry["val_auroc"], 3),
            {k: round(v, 3) for k, v in entry["test_mean"].items()},
            flush=True,
        )
    meta = {"model": args.model, "seed": args.seed, "english_rows": len(english),
            "xsafety_rows": len(xsafety), "wall_time_s": round(time.monotonic() - started),
            "command": f"python scripts/train_data_transfer.py --out {args.out}"}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transfer.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1) + "\n", encoding="utf-8"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
