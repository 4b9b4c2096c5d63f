"""Choose a gate configuration on one held-out dataset and test it once on another.

A developer's experiment, not part of the package. Every gate the robust preset or the
candidates README built was chosen on its own training distribution (held-out prompt family,
PolyRefuse validation) and none of those choices predicted the protection benchmark. This
script chooses on data from outside the training sources instead, and keeps the test apart:

- **train**: the shipped gate's sources, PolyRefuse train and the style prompts in the 10
  training languages (``--topics`` adds the project's topics family: another grid axis);
- **dev** (choice): the English rows of the held-out sources other than XSafety (Do-Not-Answer,
  SimpleSafetyTests and XSTest's unsafe contrasts, against XSTest's safe prompts);
- **test** (reported once, for the chosen configuration and the shipped gate): every XSafety
  row, per language (the protection benchmark's rows in all 10 languages are drawn from these).

The grid: the layer read (every other middle layer), the readout (low-rank of rank 1, 3 or 10,
or full), AdamW's weight decay, and the training data; ``--pairs`` adds full readouts of two
layers (the layer and the one 4 or 8 blocks before it, as the robust preset's spans).
The rule: among the configurations whose mean AUROC on PolyRefuse's validation split (32
prompts per class in each of the 14 languages, as ``babelgate calibrate`` samples it) is at most
``--max-val-drop`` below the shipped gate's (issue 23 bounds the in-distribution loss at 0.02),
the highest dev recall at a false-positive rate of at most 10 % (the operating point a guard
that refuses needs), ties to the higher dev AUROC. Every configuration's dev and test numbers go
to ``search.json``, with the rank correlation between dev and test over the grid: whether this
dev set predicts the test at all. Gates are fitted and scored by the library
(``gate.selection.fit_on``); activations go through the cache ``babelgate calibrate`` fills.

    python scripts/gate_search.py --out docs/eval/qwen2.5-coder-0.5b/gate-search
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from babelgate.evaluation.heldout import load_heldout
from babelgate.gate.activation_cache import CachedBackend
from babelgate.gate.data import LabelledPrompt, load_dataset, subsample
from babelgate.gate.estimator import HarmfulnessGate
from babelgate.gate.hf.backend import TransformersBackend
from babelgate.gate.languages import HIGH_RESOURCE
from babelgate.gate.metrics import auroc, bootstrap_auroc_interval, recall_at_fpr
from babelgate.gate.selection import Candidate, fit_on
from babelgate.paths import cache_root

STYLES = Path("evaluation/data/styles")
TOPICS = Path("evaluation/data/topics")
LAYERS = tuple(range(8, 23, 2))
READOUTS = (("low-rank", 1), ("low-rank", 3), ("low-rank", 10), ("full", 10))
WEIGHT_DECAYS = (0.01, 0.1, 1.0)
MAX_FPR = 0.1
VAL_PER_CLASS = 32  # calibrate's --eval-max-per-class for the shipped artifacts


def readouts(pairs: bool) -> list[tuple[tuple[int, ...], str, int]]:
    """The grid's (layers read, readout, rank): every layer with every readout, and with
    ``pairs`` each layer's full readout together with the layer 4 or 8 blocks before it."""
    out = [((layer,), readout, rank) for layer in LAYERS for readout, rank in READOUTS]
    if pairs:
        out += [((layer - span, layer), "full", 10) for layer in LAYERS for span in (4, 8)
                if layer - span >= 0]  # fmt: skip
    return out


def training_rows(polyrefuse: str, topics: bool) -> list[LabelledPrompt]:
    """The train split of the training languages from the shipped gate's sources."""
    rows = load_dataset(polyrefuse, splits=["train"]) + load_dataset(STYLES)
    if topics:
        rows += load_dataset(TOPICS)
    return [p for p in rows if p.split == "train" and p.language in HIGH_RESOURCE]


def by_language(rows: list[LabelledPrompt], acts: np.ndarray) -> dict:
    """{language: (all-layer activations, labels)} for ``fit_on``."""
    out = {}
    for lang in sorted({p.language for p in rows}):
        idx = [i for i, p in enumerate(rows) if p.language == lang]
        out[lang] = (acts[idx], np.array([rows[i].label for i in idx]))
    return out


def validation_rows(polyrefuse: str, seed: int) -> list[LabelledPrompt]:
    """PolyRefuse's validation split, sampled per language as ``babelgate calibrate`` does."""
    return per_language_sample(load_dataset(polyrefuse, splits=["val"]), VAL_PER_CLASS, seed)


def per_language_sample(rows: list[LabelledPrompt], n: int, seed: int) -> list[LabelledPrompt]:
    """At most ``n`` rows per class of each language (``subsample``, the same seed each)."""
    out: list[LabelledPrompt] = []
    for lang in sorted({r.language for r in rows}):
        out += subsample([r for r in rows if r.language == lang], n, seed)
    return out


def mean_auroc(gate: HarmfulnessGate, data: dict) -> float:
    """Mean over languages of the gate's AUROC on ``{language: (activations, labels)}``."""
    return float(np.mean([auroc(gate.score_all_layers(a), y) for a, y in data.values()]))


def point(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc(scores, labels), "recall_at_fpr": recall_at_fpr(scores, labels, MAX_FPR)}


def test_scores(
    gate: HarmfulnessGate, test: dict, *, intervals: bool = False
) -> dict[str, dict[str, float]]:
    """Per XSafety language: AUROC and recall at FPR <= ``MAX_FPR`` (and, with ``intervals``,
    the AUROC's bootstrap interval: only for the gates the report tabulates)."""
    out = {}
    for lang, (acts, y) in test.items():
        s = gate.score_all_layers(acts)
        out[lang] = point(s, y)
        if intervals:
            out[lang]["low"], out[lang]["high"] = bootstrap_auroc_interval(s, y)
    return out


def mean_of(per_language: dict[str, dict[str, float]], key: str) -> float:
    return float(np.mean([v[key] for v in per_language.values()]))


def spearman(a: list[float], b: list[float]) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def render(result: dict) -> str:
    meta, chosen, shipped = result["meta"], result["chosen"], result["shipped"]
    lines = [
        "# A gate chosen on one held-out dataset, tested on another",
        "",
        f"Model `{meta['model']}`. Command: `{meta['command']}` ({meta['wall_time_s']} s, "
        f"{meta['n_candidates']} configurations). Train: {meta['train']}. Dev (the choice): "
        f"{meta['dev']}. Test (reported for the chosen configuration and the shipped gate "
        "only): every XSafety row, per language. The rule: among configurations whose mean "
        "PolyRefuse validation AUROC is at most "
        f"{meta['max_val_drop']:g} below the shipped gate's ({result['shipped']['val']:.3f}), "
        f"the highest dev recall at a false-positive rate <= {MAX_FPR:g}, ties to the higher dev "
        f"AUROC ({meta['n_admissible']} configurations admissible).",
        "",
        f"Chosen: **{chosen['describe']}** (dev recall {chosen['dev']['recall_at_fpr']:.3f}, dev "
        f"AUROC {chosen['dev']['auroc']:.3f}, validation AUROC {chosen['val']:.3f}; the shipped "
        f"gate: dev recall {shipped['dev']['recall_at_fpr']:.3f}, dev AUROC "
        f"{shipped['dev']['auroc']:.3f}).",
        "",
        "Does the dev set predict the test? Spearman rank correlation over all configurations, "
        f"dev against test (mean over languages): AUROC {result['spearman']['auroc']:.2f}, "
        f"recall at FPR <= {MAX_FPR:g} {result['spearman']['recall_at_fpr']:.2f}.",
        "",
        f"| language | shipped AUROC | chosen AUROC | shipped recall at FPR <= {MAX_FPR:g} | "
        "chosen recall |",
        "|---|---|---|---|---|",
    ]
    for lang in sorted(chosen["test"]):
        s, c = shipped["test"][lang], chosen["test"][lang]
        lines.append(
            f"| {lang} | {s['auroc']:.3f} [{s['low']:.2f}, {s['high']:.2f}] | {c['auroc']:.3f} "
            f"[{c['low']:.2f}, {c['high']:.2f}] | {s['recall_at_fpr']:.2f} | "
            f"{c['recall_at_fpr']:.2f} |"
        )
    lines.append(
        f"| mean | **{mean_of(shipped['test'], 'auroc'):.3f}** | "
        f"**{mean_of(chosen['test'], 'auroc'):.3f}** | "
        f"**{mean_of(shipped['test'], 'recall_at_fpr'):.3f}** | "
        f"**{mean_of(chosen['test'], 'recall_at_fpr'):.3f}** |"
    )
    lines += ["", f"Recall at FPR <= {MAX_FPR:g} takes the best threshold per language on the "
              "test rows themselves: an upper bound on what a threshold rule could reach."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:qwen2.5-coder-0.5b")
    parser.add_argument("--artifact", default="server/artifacts/qwen2.5-coder-0.5b/robust")
    parser.add_argument("--polyrefuse", default="../shared/data/polyrefuse")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-val-drop", type=float, default=0.02)
    parser.add_argument("--pairs", action="store_true", help="add two-layer full readouts")
    parser.add_argument("--render", action="store_true", help="only rewrite search.md")
    args = parser.parse_args()
    if args.render:
        result = json.loads((args.out / "search.json").read_text(encoding="utf-8"))
        (args.out / "search.md").write_text(render(result), encoding="utf-8")
        return 0

    started = time.monotonic()
    backend = CachedBackend(TransformersBackend(args.model), cache_root() / "activations")
    shipped_gate = HarmfulnessGate.load(args.artifact, expect_model=backend.model_info)
    heldout = load_heldout()
    dev_rows = [p for p in heldout if p.language == "en"
                and not (p.style or "").startswith("xsafety-")]  # fmt: skip
    dev = (backend.activations([p.text for p in dev_rows], batch_size=16),
           np.array([p.label for p in dev_rows]))  # fmt: skip
    xsafety = [p for p in heldout if (p.style or "").startswith("xsafety-")]
    test = by_language(xsafety, backend.activations([p.text for p in xsafety], batch_size=16))
    val_rows = validation_rows(args.polyrefuse, args.seed)
    val = by_language(val_rows, backend.activations([p.text for p in val_rows], batch_size=16))
    train = {}
    for topics in (False, True):
        rows = training_rows(args.polyrefuse, topics)
        train[topics] = by_language(rows, backend.activations([p.text for p in rows],
                                                              batch_size=16))  # fmt: skip
    print(f"dev {len(dev_rows)} rows, test {len(xsafety)}, train "
          f"{ {k: sum(len(y) for _, y in v.values()) for k, v in train.items()} }", flush=True)

    grid, gates = [], []
    for topics, (layers, readout, rank), wd in itertools.product(
        (False, True), readouts(args.pairs), WEIGHT_DECAYS
    ):
        cand = Candidate(layers, wd, readout)
        gate = fit_on(cand, train[topics], rank=rank, seed=args.seed)
        per = test_scores(gate, test)
        entry = {
            "layer": layers[-1], "layers": list(layers), "readout": readout,
            "rank": rank if readout == "low-rank" else None,
            "weight_decay": wd, "topics": topics,
            "describe": cand.describe() + (f", rank {rank}" if readout == "low-rank" else "")
                        + (", + topics" if topics else ""),
            "dev": point(gate.score_all_layers(dev[0]), dev[1]),
            "val": mean_auroc(gate, val),
            "test": per,
            "test_mean": {"auroc": mean_of(per, "auroc"),
                          "recall_at_fpr": mean_of(per, "recall_at_fpr")},
        }  # fmt: skip
        grid.append(entry)
        gates.append(gate)
        print(entry["describe"], round(entry["val"], 3),
              {k: round(v, 3) for k, v in entry["dev"].items()},
              {k: round(v, 3) for k, v in entry["test_mean"].items()}, flush=True)

    shipped = {"describe": f"shipped gate ({Path(args.artifact).name})",
               "dev": point(shipped_gate.score_all_layers(dev[0]), dev[1]),
               "val": mean_auroc(shipped_gate, val),
               "test": test_scores(shipped_gate, test, intervals=True)}  # fmt: skip
    admissible = [i for i, e in enumerate(grid) if e["val"] >= shipped["val"] - args.max_val_drop]
    if not admissible:
        raise SystemExit("no configuration keeps the validation AUROC: nothing to choose")
    best = max(admissible, key=lambda i: (grid[i]["dev"]["recall_at_fpr"],
                                          grid[i]["dev"]["auroc"]))  # fmt: skip
    chosen = {**grid[best], "test": test_scores(gates[best], test, intervals=True)}
    result = {
        "meta": {
            "model": args.model, "seed": args.seed, "n_candidates": len(grid),
            "max_val_drop": args.max_val_drop, "n_admissible": len(admissible),
            "train": "PolyRefuse train + styles (+ topics where marked), 10 training languages",
            "dev": f"{len(dev_rows)} English rows of Do-Not-Answer, SimpleSafetyTests, XSTest",
            "wall_time_s": round(time.monotonic() - started),
            "command": f"python scripts/gate_search.py --artifact {args.artifact} "
                       f"{'--pairs ' if args.pairs else ''}--out {args.out}",
        },
        "chosen": chosen,
        "shipped": shipped,
        "spearman": {
            key: spearman([e["dev"][key] for e in grid], [e["test_mean"][key] for e in grid])
            for key in ("auroc", "recall_at_fpr")
        },
        "grid": grid,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "search.md").write_text(render(result), encoding="utf-8")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
