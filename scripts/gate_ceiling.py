"""How far a linear readout of the residual stream can separate XSafety's harmful and benign rows.

A developer's diagnostic, not part of the package. Its first part is **not a held-out result**:
those probes are fitted on XSafety itself, the source of the protection benchmark's multilingual
rows. It asks
whether the shipped gate's held-out failure (mean AUROC 0.69, hi and bn at chance) comes from
the model, which would not represent the difference in those languages, or from what the gate was
fitted on (PolyRefuse's phrasing of crime and violence against Alpaca-style tasks).

For every XSafety language of ``evaluation/data/heldout`` (crimes: harmful; ethics, mental
health, commonsense: benign), on the residual at the last prompt token of each layer:

- ``shipped``: the shipped gate's score on all of the language's rows (its AUROC and bootstrap
  interval: the benchmark's 80 rows per language are a sample of these);
- ``cv_dim``, ``cv_logistic``: 5-fold cross-validation within the language, the probe fitted on
  four fifths of the language's own rows. ``dim``: the difference in means
  (``gate.directions.mean_difference``), ``logistic``: the gate's readout
  (``gate.readout.LogisticReadout``) on the whole residual;
- ``lolo_*``: fitted on the other nine languages' rows, scored on this one. XSafety's languages
  are translations of the same items, so this measures transfer across languages with the
  content held fixed, not transfer to new content.

Then one check across datasets, which is held out: the logistic probe fitted on every XSafety row
of every language, on the shipped gate's calibration sources (PolyRefuse train and the style
prompts, all 14 languages; the shipped readout was fitted on 10 of them), and on both, each
scored on the English rows from other sources (Do-Not-Answer, SimpleSafetyTests and XSTest's
unsafe contrasts against XSTest's safe prompts), at the gate's layer and at the layer with the
best mean ``cv_logistic`` (chosen on XSafety alone), beside the shipped gate on the same rows.
And the probe fitted on the shipped gate's own sources, scored on each language's XSafety rows:
held out, and comparable with the shipped gate's column.

Activations go through the activation cache that ``babelgate calibrate`` fills, so a re-run only
computes prompts it has not seen. Run from the repository root, one model job at a time:

    python scripts/gate_ceiling.py --out docs/eval/qwen2.5-coder-0.5b/gate-ceiling

It writes ``ceiling.json`` (every layer) and ``ceiling.md`` (the gate's layer and the best one);
``--render`` rewrites ``ceiling.md`` from ``ceiling.json`` without the model.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from babelgate.evaluation.heldout import load_heldout
from babelgate.gate.activation_cache import CachedBackend
from babelgate.gate.data import load_dataset
from babelgate.gate.directions import mean_difference
from babelgate.gate.estimator import HarmfulnessGate
from babelgate.gate.hf.backend import TransformersBackend
from babelgate.gate.metrics import auroc, bootstrap_auroc_interval
from babelgate.gate.readout import LogisticReadout
from babelgate.paths import cache_root

FOLDS = 5
STYLES = Path("evaluation/data/styles")  # the question and narrative prompts calibration reads
Probe = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def dim_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Projection on the training rows' difference in means."""
    return x_test.astype(np.float64) @ mean_difference(x_train, y_train)


def logistic_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """The gate's readout (paper defaults, seed 0) on the whole residual."""
    return LogisticReadout().fit(x_train, y_train).decision_function(x_test)


PROBES: dict[str, Probe] = {"dim": dim_probe, "logistic": logistic_probe}


def folds(labels: np.ndarray, seed: int) -> np.ndarray:
    """Fold index of each row, each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    out = np.empty(labels.size, dtype=np.int64)
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == label))
        out[idx] = np.arange(idx.size) % FOLDS
    return out


def cross_validated_auroc(probe: Probe, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """AUROC of out-of-fold scores: every row scored by a probe that did not see it."""
    fold = folds(y, seed)
    scores = np.empty(y.size)
    for k in range(FOLDS):
        test = fold == k
        scores[test] = probe(x[~test], y[~test], x[test])
    return auroc(scores, y)


def cross_dataset(
    sources: dict[str, tuple[np.ndarray, np.ndarray]],
    other: tuple[np.ndarray, np.ndarray],
    shipped: np.ndarray,
    families: np.ndarray,
    layers: dict[str, int],
) -> dict:
    """Logistic probes fitted on each training source, scored on the other datasets' rows (all
    of them, and XSTest's own safe/unsafe pairs) at each named layer; the shipped gate beside."""
    acts, y = other
    xstest = families == "xstest"
    out: dict = {"n_harmful": int(y.sum()), "n_benign": int((y == 0).sum()),
                 "shipped gate": {"all": interval(shipped, y),
                                  "xstest": interval(shipped[xstest], y[xstest])}}  # fmt: skip
    for source, (x_train, y_train) in sources.items():
        for name, layer in layers.items():
            scores = logistic_probe(x_train[:, layer], y_train, acts[:, layer])
            out[f"{source}, {name} (L{layer})"] = {
                "all": interval(scores, y),
                "xstest": interval(scores[xstest], y[xstest]),
            }
    return out


def calibration_probe_on_xsafety(
    train: tuple[np.ndarray, np.ndarray], data: dict[str, tuple[np.ndarray, np.ndarray]], layer: int
) -> dict[str, dict[str, float]]:
    """The logistic probe fitted on ``train`` at the gate's layer, scored on each language's
    XSafety rows: held out, like the shipped gate's column beside it."""
    readout = LogisticReadout().fit(train[0][:, layer], train[1])
    return {lang: interval(readout.decision_function(acts[:, layer]), y)
            for lang, (acts, y) in data.items()}  # fmt: skip


def interval(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC with its bootstrap 95 % interval."""
    low, high = bootstrap_auroc_interval(scores, labels)
    return {"auroc": auroc(scores, labels), "low": low, "high": high}


def _cell(values: list[float], layer: int) -> str:
    """The value at the gate's layer, then the best layer's value and index."""
    best = int(np.argmax(values))
    return f"{values[layer]:.2f} / {values[best]:.2f} (L{best})"


def render(result: dict) -> str:
    """``ceiling.json`` as Markdown: one row per language, means last."""
    meta, langs = result["meta"], result["languages"]
    layer = meta["gate_layers"][-1]
    probes = [k for k in next(iter(langs.values())) if k.startswith(("cv_", "lolo_"))]
    lines = [
        "# How far a linear readout separates XSafety, and what carries over",
        "",
        "A diagnostic. The first table is **not held out** (its probes are fitted on XSafety); "
        "the sections after it are.",
        "",
        f"Model `{meta['model']}`, shipped gate `{meta['artifact']}` (layers "
        f"{meta['gate_layers']}). Command: `{meta['command']}` ({meta['wall_time_s']} s). Rows: "
        "every XSafety row of `evaluation/data/heldout` (crimes harmful; ethics, mental health, "
        "commonsense benign). `shipped`: the shipped gate's AUROC [bootstrap 95 %]. `cv_*`: "
        f"{meta['folds']}-fold cross-validation inside the language; `lolo_*`: fitted on the other "
        "languages' rows (translations of the same items). `dim`: difference in means; "
        "`logistic`: the gate's readout on the whole residual. Probe cells: AUROC at the gate's "
        f"layer {layer} / at the best layer (which; picked on these rows, so it flatters).",
        "",
        "| language | harmful / benign | shipped | " + " | ".join(probes) + " |",
        "|---|---|---|" + "---|" * len(probes),
    ]
    for lang, e in langs.items():
        s = e["shipped"]
        lines.append(f"| {lang} | {e['n_harmful']} / {e['n_benign']} | {s['auroc']:.2f} "
                     f"[{s['low']:.2f}, {s['high']:.2f}] | "
                     + " | ".join(_cell(e[p], layer) for p in probes) + " |")  # fmt: skip
    mean = {p: np.mean([e[p] for e in langs.values()], axis=0).tolist() for p in probes}
    shipped = np.mean([e["shipped"]["auroc"] for e in langs.values()])
    lines.append(f"| mean | | {shipped:.2f} | " + " | ".join(_cell(mean[p], layer) for p in probes)
                 + " |")  # fmt: skip
    c = result["cross_dataset"]
    lines += [
        "",
        "## Across datasets (held out)",
        "",
        "Logistic probes fitted on every XSafety row above (all languages), on PolyRefuse train "
        "and the style prompts (the shipped gate's sources, all 14 languages; its readout was "
        "fitted on 10 of them), and on both, scored on the "
        f"English rows of the other sources ({c['n_harmful']} harmful: Do-Not-Answer, "
        f"SimpleSafetyTests, XSTest's unsafe contrasts; {c['n_benign']} benign: XSTest's safe "
        "prompts), and on XSTest's pairs alone. AUROC [bootstrap 95 %]:",
        "",
        "| readout | all | XSTest pairs |",
        "|---|---|---|",
    ]
    for name, e in c.items():
        if isinstance(e, dict) and "all" in e:
            lines.append(f"| {name} | {_interval(e['all'])} | {_interval(e['xstest'])} |")
    by_set = c["xsafety_by_language"]
    lines += [
        "",
        f"Probes fitted on PolyRefuse train and the style prompts at layer {layer}, in all 14 "
        "languages or in the shipped gate's 10 training languages only, scored on each "
        "language's XSafety rows (held out: they never saw XSafety), beside the shipped gate "
        "(fitted on the same sources in its 10 languages, low-rank, layers "
        f"{meta['gate_layers']}). AUROC [bootstrap 95 %]:",
        "",
        "| language | shipped gate | " + " | ".join(f"probe, {n}" for n in by_set) + " |",
        "|---|---|" + "---|" * len(by_set),
    ]
    for lang in langs:
        row = [_interval(langs[lang]["shipped"])]
        row += [_interval(by_lang[lang]) for by_lang in by_set.values()]
        lines.append(f"| {lang} | " + " | ".join(row) + " |")
    means = [
        f"{np.mean([cell['auroc'] for cell in cells.values()]):.2f}" for cells in by_set.values()
    ]
    lines.append(f"| mean | {shipped:.2f} | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def _interval(cell: dict[str, float]) -> str:
    return f"{cell['auroc']:.2f} [{cell['low']:.2f}, {cell['high']:.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:qwen2.5-coder-0.5b")
    parser.add_argument("--artifact", default="server/artifacts/qwen2.5-coder-0.5b/robust")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--polyrefuse", default="../shared/data/polyrefuse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", action="store_true", help="only rewrite ceiling.md")
    args = parser.parse_args()
    if args.render:
        result = json.loads((args.out / "ceiling.json").read_text(encoding="utf-8"))
        (args.out / "ceiling.md").write_text(render(result), encoding="utf-8")
        return 0

    started = time.monotonic()
    rows = [p for p in load_heldout() if (p.style or "").startswith("xsafety-")]
    langs = sorted({p.language for p in rows})
    backend = CachedBackend(TransformersBackend(args.model), cache_root() / "activations")
    gate = HarmfulnessGate.load(args.artifact, expect_model=backend.model_info)
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for lang in langs:
        texts = [p.text for p in rows if p.language == lang]
        labels = np.array([p.label for p in rows if p.language == lang])
        print(f"{lang}: {labels.sum()} harmful, {(labels == 0).sum()} benign", flush=True)
        data[lang] = (backend.activations(texts, batch_size=16), labels)

    english = [p for p in load_heldout(["en"]) if not (p.style or "").startswith("xsafety-")]
    print(f"en, other datasets: {len(english)} rows", flush=True)
    other = (backend.activations([p.text for p in english], batch_size=16),
             np.array([p.label for p in english]))  # fmt: skip

    report: dict[str, dict] = {}
    for lang, (acts, y) in data.items():
        shipped = gate.score_all_layers(acts)
        others = [o for o in langs if o != lang]
        x_other = np.concatenate([data[o][0] for o in others])
        y_other = np.concatenate([data[o][1] for o in others])
        entry: dict = {"n_harmful": int(y.sum()), "n_benign": int((y == 0).sum()),
                       "shipped": interval(shipped, y)}  # fmt: skip
        for name, probe in PROBES.items():
            entry[f"cv_{name}"] = [
                cross_validated_auroc(probe, acts[:, layer], y, args.seed)
                for layer in range(acts.shape[1])
            ]
            entry[f"lolo_{name}"] = [
                auroc(probe(x_other[:, layer], y_other, acts[:, layer]), y)
                for layer in range(acts.shape[1])
            ]
        report[lang] = entry
        print(lang, {k: (round(v["auroc"], 3) if isinstance(v, dict) else v)
                     for k, v in entry.items() if not isinstance(v, list)},
              {k: round(max(v), 3) for k, v in entry.items() if isinstance(v, list)},
              flush=True)  # fmt: skip

    cv_mean = np.mean([e["cv_logistic"] for e in report.values()], axis=0)
    layers = {"gate_layer": gate.layers[-1], "best_cv_layer": int(np.argmax(cv_mean))}
    families = np.array([p.style for p in english])
    calibration = load_dataset(args.polyrefuse, splits=["train"]) + load_dataset(STYLES)
    print(f"calibration sources: {len(calibration)} rows", flush=True)
    sources = {"XSafety": (np.concatenate([a for a, _ in data.values()]),
                           np.concatenate([y for _, y in data.values()])),
               "PolyRefuse train + styles": (
                   backend.activations([p.text for p in calibration], batch_size=16),
                   np.array([p.label for p in calibration]))}  # fmt: skip
    sources["both"] = tuple(np.concatenate(parts) for parts in zip(*sources.values(), strict=True))
    crossed = cross_dataset(sources, other, gate.score_all_layers(other[0]), families, layers)
    own = np.array([p.language in gate.training_languages for p in calibration])
    x_cal, y_cal = sources["PolyRefuse train + styles"]
    crossed["xsafety_by_language"] = {
        "14 languages": calibration_probe_on_xsafety((x_cal, y_cal), data, gate.layers[-1]),
        "the gate's 10": calibration_probe_on_xsafety((x_cal[own], y_cal[own]), data,
                                                      gate.layers[-1]),
    }  # fmt: skip
    print("cross-dataset", json.dumps(crossed), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "artifact": args.artifact, "gate_layers": list(gate.layers),
            "seed": args.seed, "folds": FOLDS, "wall_time_s": round(time.monotonic() - started),
            "command": "python scripts/gate_ceiling.py --out " + str(args.out)}  # fmt: skip
    result = {"meta": meta, "languages": report, "cross_dataset": crossed}
    (args.out / "ceiling.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "ceiling.md").write_text(render(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
