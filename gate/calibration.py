"""The calibration pipeline behind ``babelgate calibrate``: data -> activations -> layer -> gate.

Runs in the CLI process (or the API server's process on first use of the embedded model). It uses
only the gate library and an ``ActivationBackend``; it never re-implements the method. Steps:

1. load labelled prompts; training set = the high-resource languages' train splits;
2. read the residual stream at the post-instruction token at every layer, once per prompt;
3. choose the configuration from data. Preset ``paper`` (METHOD.md, for reproduction): fit the
   gate at each middle layer and keep the one with the best mean high-resource *validation*
   AUROC. Preset ``robust``: layers read (one or two) and weight decay chosen by held-out-style
   validation over the prompt families in the training data (``gate.selection``). No
   target-language data is used to choose either way;
4. fit the gate, measure per language (test split, or val where the test split lacks a class)
   AUROC, F1 at the zero-shot threshold and F1 after k-shot recalibration, and whether the
   language's labelled pool is separated at all (a language it is not is marked unprotected);
5. write the artifact atomically, with ``calibration_report.{json,md}`` and an AUROC plot inside.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from babelgate.gate.activations import ActivationBackend
from babelgate.gate.data import (
    DataError,
    LabelledPrompt,
    check_both_classes,
    load_dataset,
    select,
    subsample,
)
from babelgate.gate.estimator import (
    MIN_PROTECTED_AUROC,
    READOUTS,
    WEAK_FAMILY_AUROC,
    GateConfig,
    HarmfulnessGate,
    ThresholdRecord,
)
from babelgate.gate.kshot import kshot_draws
from babelgate.gate.languages import HIGH_RESOURCE, language_name, tier, validate_language
from babelgate.gate.metrics import auroc, f1_score
from babelgate.gate.plot import png, pyplot
from babelgate.gate.selection import Candidate, candidates, fit_on, select_robust
from babelgate.gate.style_check import balance_families, check_rows, family_auroc, family_of
from babelgate.gate.threshold import balanced_f1_threshold

# "auto" (the default) resolves to "robust" when the training data holds two or more prompt
# families and to "paper" otherwise: on the embedded model the robust configuration won under
# style shift without losing in-distribution to the paper's (docs/eval/embedded/shift/shift.md),
# but it needs a held-out family to choose on.
PRESETS: tuple[str, ...] = ("auto", "paper", "robust")

# Part of the cached default artifact's name: bumped when what the default calibration writes
# changes, so a cache made by an older babelgate is recalibrated rather than served as is
# (2: the per-family style check, ``gate.style_check``; 3: thresholds from the whole train
# pool, prompt families weighted equally).
DEFAULT_ARTIFACT_REVISION = 3

PAPER_THRESHOLD_K = 4
"""METHOD §4's headline: the stored threshold comes from 4 examples per class."""
REPORT_JSON = "calibration_report.json"
REPORT_MD = "calibration_report.md"
REPORT_PNG = "auroc_by_layer.png"


@dataclass
class CalibrationOptions:
    """What ``babelgate calibrate`` exposes; defaults follow METHOD.md, except ``preset``."""

    languages: Sequence[str] | None = None  # languages to evaluate (default: all in the data)
    preset: str = "auto"  # "paper" (METHOD.md), "robust" (held-out-style selection) or "auto"
    layer: int | None = None  # None: choose from data (forces a single-layer paper gate)
    rank: int = 10
    max_per_class: int | None = None  # cap per class and language, train and evaluation
    eval_max_per_class: int | None = None  # separate cap for the evaluation splits
    seed: int = 0
    k_values: tuple[int, ...] = (1, 4)
    k_draws: int = 5  # random draws of the k examples, averaged in the report
    k_pool_per_class: int = 64  # train examples per class activations are computed for
    # Per-language thresholds stored in the artifact: from k train examples per class (METHOD
    # §4; 0: none), "all" (the language's whole train pool, each prompt family weighted
    # equally) or "auto" (all for the robust preset, 4 for the paper's).
    threshold_k: int | str = "auto"
    batch_size: int = 16
    progress: bool = True
    data_name: str = "in-memory prompts"  # recorded in the report when data is a list
    min_auroc: float = MIN_PROTECTED_AUROC  # at or below: the language is marked unprotected
    weak_family_auroc: float = WEAK_FAMILY_AUROC  # below, on a family: the language is weak on it
    # robust: as many training rows of each family per language and class. Off by default: on
    # the embedded model it raised AUROC under style shift but flagged 85-90 % of English MMLU
    # questions harmful (5 % unbalanced), see README.
    balance_families: bool = False
    # Steering strength: alpha = lambda * (q75 harmful - q25 harmless projections), METHOD §5
    # (lambda = 1); `babelgate sweep` measures which lambda makes a model refuse.
    steering_lambda: float = 1.0
    # What the gate's logistic unit reads (``gate.estimator.READOUTS``): "low-rank" (METHOD §3)
    # or "full" (the whole residual of each layer read).
    readout: str = "low-rank"
    # AdamW's weight decay for the paper preset's readout (None: METHOD's 0.01); the robust
    # preset chooses its own.
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"readout {self.readout!r} is not one of {', '.join(READOUTS)}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        if self.preset == "robust" and self.layer is not None:
            raise ValueError("--layer fixes the paper's single layer: use it with --preset paper")
        if self.preset == "robust" and self.weight_decay is not None:
            raise ValueError(
                "--weight-decay fixes the paper preset's readout: the robust preset chooses its "
                "own; use it with --preset paper"
            )
        k = self.threshold_k
        if k not in ("auto", "all") and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"threshold_k must be an int >= 0, 'all' or 'auto', got {k!r}")

    def stored_threshold_k(self, preset: str) -> int | str:
        """``threshold_k`` with "auto" resolved for the chosen preset."""
        if self.threshold_k == "auto":
            return "all" if preset == "robust" else PAPER_THRESHOLD_K
        return self.threshold_k

    @property
    def eval_cap(self) -> int | None:
        """Per-class cap for evaluation splits (falls back to ``max_per_class``)."""
        if self.eval_max_per_class is not None:
            return self.eval_max_per_class
        return self.max_per_class


@dataclass
class _Split:
    """Prompts of one role with their all-layer activations ``(n, n_layers, d)``."""

    prompts: list[LabelledPrompt]
    acts: np.ndarray = field(repr=False)

    @property
    def labels(self) -> np.ndarray:
        return np.array([p.label for p in self.prompts], dtype=np.int64)


def _layer_train(
    train: dict[str, _Split], j: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {lang: (s.acts[:, j], s.labels) for lang, s in train.items()}


def candidate_layers(num_layers: int) -> list[int]:
    """The middle half of the network, where the paper's chosen layers lie (10/32, 15/28,
    20/42): early layers hold lexical features, the last ones next-token features."""
    lo = max(0, num_layers // 4)
    hi = min(num_layers - 1, (3 * num_layers) // 4)
    return list(range(lo, hi + 1))


def _store_threshold(
    gate: HarmfulnessGate,
    lang: str,
    pool: _Split,
    pool_scores: np.ndarray,
    threshold_k: int | str,
    opts: CalibrationOptions,
) -> ThresholdRecord | None:
    """Set ``lang``'s threshold from its train pool: k drawn examples per class (METHOD §4),
    or with "all" every example of the pool's families that hold both classes, each family
    weighted equally, so the threshold is not the one that fits benchmark instructions alone
    (whose benign Alpaca tasks score far below benign questions). Protection is judged on the
    whole pool either way. None when the pool has too few examples."""
    if threshold_k == "all":
        families = [family_of(p) for p in pool.prompts]
        labels: dict[str, set[int]] = {}
        for fam, p in zip(families, pool.prompts, strict=True):
            labels.setdefault(fam, set()).add(p.label)
        usable = {fam for fam, seen in labels.items() if seen == {0, 1}}
        keep = [i for i, f in enumerate(families) if f in usable]
        if not keep:
            return None
        record = gate.recalibrate_from_scores(
            lang, pool_scores[keep], pool.labels[keep], min_auroc=opts.min_auroc,
            evidence=(pool_scores, pool.labels), groups=[families[i] for i in keep],
        )  # fmt: skip
        how = (f"all {len(keep)} labelled train examples, each of its prompt families "
               f"({', '.join(sorted(usable))}) weighted equally")  # fmt: skip
    else:
        draws = kshot_draws(pool.labels, int(threshold_k), 1, opts.seed, lang)
        if not draws:
            return None
        record = gate.recalibrate_from_scores(
            lang, pool_scores[draws[0]], pool.labels[draws[0]],
            min_auroc=opts.min_auroc, evidence=(pool_scores, pool.labels),
        )  # fmt: skip
        how = f"{threshold_k} per class drawn from the {lang} train split (seed {opts.seed})"
    record.note = (
        f"{record.note} babelgate calibrate: {how}; protection judged on "
        f"{len(pool.prompts)} train examples"
    ).strip()
    return record


@dataclass
class PaperLayerChoice:
    """The paper preset's layer and what choosing it produced."""

    layer: int
    selection: dict  # the report's ``layer_selection``: reason, candidates, val AUROC by layer
    gates: list[HarmfulnessGate] = field(repr=False)  # a paper gate per layer (AUROC-by-layer)


@dataclass
class _Encoded:
    """Every role's rows with their activations, and the lookup the style check needs."""

    splits: dict[tuple[str, str], _Split]
    all_acts: np.ndarray = field(repr=False)
    index: dict[str, int]

    def acts_of(self, rows: Sequence[LabelledPrompt]) -> np.ndarray:
        return self.all_acts[[self.index[p.text] for p in rows]]


def calibrate(
    backend: ActivationBackend,
    data: str | Path | Sequence[LabelledPrompt],
    out: str | Path,
    options: CalibrationOptions | None = None,
    *,
    force: bool = False,
) -> tuple[HarmfulnessGate, dict]:
    """Fit the gate on ``data`` with ``backend`` and write the artifact and report to ``out``.

    Everything is validated before model time is spent; the artifact directory appears only
    when complete (``force`` replaces an existing one atomically).
    """
    opts = options or CalibrationOptions()
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists: choose another --out or pass --force to replace it")
    started = time.time()
    prompts, data_name, languages = _load_prompts(data, opts)
    present = sorted({p.language for p in prompts})
    preset, preset_reason = resolve_preset(prompts, opts)
    balanced = opts.balance_families and preset == "robust"
    threshold_k = opts.stored_threshold_k(preset)
    hrl = [x for x in HIGH_RESOURCE if x in present]
    if not hrl:
        raise DataError(f"{data_name} has no high-resource language to train on ({HIGH_RESOURCE})")
    roles = _training_roles(prompts, hrl, opts, balanced=balanced)
    eval_split = _evaluation_roles(prompts, languages, roles, opts)
    checked = check_rows(prompts, languages, max_per_class=opts.eval_cap, seed=opts.seed)
    encoded = _encode(backend, roles, checked, opts)
    splits = encoded.splits
    train = {lang: splits[("train", lang)] for lang in hrl}

    paper = _choose_layer(backend.num_layers, train, splits, hrl, opts)
    rank = min(opts.rank, len(hrl))
    gate, selection = _fit_gate(backend, preset, train, paper, rank, opts)
    by_family = family_auroc(
        Candidate(gate.layers, gate.config.weight_decay, gate.config.readout),
        {lang: (sp.prompts, sp.acts) for lang, sp in train.items()},
        {key: (rows, encoded.acts_of(rows)) for key, rows in checked.items()},
        rank=rank,
        seed=opts.seed,
    )
    gate.metadata = {"family_auroc": by_family, "weak_family_auroc": opts.weak_family_auroc}
    per_language: dict[str, dict] = {}
    auroc_by_layer: dict[str, list[float]] = {}
    for lang in languages:
        per_language[lang] = _measure_language(
            gate, lang, splits, eval_split[lang], by_family, threshold_k, opts
        )
        ev = splits[("eval", lang)]
        auroc_by_layer[lang] = [
            auroc(g.score(ev.acts[:, lj]), ev.labels) for lj, g in enumerate(paper.gates)
        ]

    report = {
        "model": asdict(backend.model_info),
        "data": data_name,
        "preset": preset,
        "preset_reason": preset_reason,
        "layer": gate.layer,
        "layers": list(gate.layers),
        "weight_decay": gate.config.weight_decay,
        "balance_families": balanced,
        "layer_selection": selection,
        **_report_summary(gate, train, per_language, hrl, threshold_k, opts),
        "languages": per_language,
        "auroc_by_layer": auroc_by_layer,
        "wall_time_s": round(time.time() - started, 1),
        "n_prompts_encoded": len(encoded.index),
    }
    _save_with_report(gate, report, out, force=force)
    return gate, report


def _load_prompts(
    data: str | Path | Sequence[LabelledPrompt], opts: CalibrationOptions
) -> tuple[list[LabelledPrompt], str, list[str]]:
    """The labelled prompts, the data's name for the report and the languages to evaluate
    (each one checked to be in the data)."""
    prompts = list(data) if not isinstance(data, str | Path) else load_dataset(data)
    data_name = str(data) if isinstance(data, str | Path) else opts.data_name
    present = sorted({p.language for p in prompts})
    languages = [validate_language(x) for x in opts.languages] if opts.languages else present
    missing = [x for x in languages if x not in present]
    if missing:
        raise DataError(f"language(s) {missing} not in {data_name} (it has {', '.join(present)})")
    return prompts, data_name, languages


def _training_roles(
    prompts: Sequence[LabelledPrompt],
    hrl: list[str],
    opts: CalibrationOptions,
    *,
    balanced: bool,
) -> dict[tuple[str, str], list[LabelledPrompt]]:
    """``("train", lang)`` and ``("val", lang)`` rows of each high-resource language: the cap
    applies per prompt family (dataset); ``balanced`` evens the families out."""
    roles: dict[tuple[str, str], list[LabelledPrompt]] = {}
    for lang in hrl:
        rows = select(prompts, language=lang, split="train")
        roles[("train", lang)] = [
            p
            for fam in sorted({family_of(r) for r in rows})
            for p in subsample([r for r in rows if family_of(r) == fam], opts.max_per_class,
                               opts.seed)
        ]  # fmt: skip
        if balanced:
            roles[("train", lang)] = balance_families(roles[("train", lang)], opts.seed)
        check_both_classes(roles[("train", lang)], f"{lang} train split")
        val = select(prompts, language=lang, split="val")
        if val:
            roles[("val", lang)] = subsample(val, opts.eval_cap, opts.seed)
    return roles


def _evaluation_roles(
    prompts: Sequence[LabelledPrompt],
    languages: list[str],
    roles: dict[tuple[str, str], list[LabelledPrompt]],
    opts: CalibrationOptions,
) -> dict[str, str]:
    """Add each evaluated language's ``("eval", lang)`` rows (its test split, or val where
    the test split lacks a class) and ``("pool", lang)`` rows (the k-shot and threshold pool)
    to ``roles``; returns the split evaluated per language."""
    eval_split: dict[str, str] = {}
    for lang in languages:
        chosen = None
        for split in ("test", "val"):
            rows = select(prompts, language=lang, split=split)
            if rows and 0 < sum(p.label for p in rows) < len(rows):
                chosen = split
                break
        if chosen is None:
            raise DataError(f"{lang}: neither a test nor a val split with both classes")
        eval_split[lang] = chosen
        roles[("eval", lang)] = subsample(
            select(prompts, language=lang, split=chosen), opts.eval_cap, opts.seed
        )
        if ("train", lang) in roles:  # high-resource: draw k-shot examples from its train rows
            roles[("pool", lang)] = roles[("train", lang)]
            continue
        pool = select(prompts, language=lang, split="train")
        if pool and 0 < sum(p.label for p in pool) < len(pool):
            cap = min(opts.k_pool_per_class, opts.max_per_class or opts.k_pool_per_class)
            roles[("pool", lang)] = subsample(pool, cap, opts.seed + 1)
    return eval_split


def _encode(
    backend: ActivationBackend,
    roles: dict[tuple[str, str], list[LabelledPrompt]],
    checked: dict,
    opts: CalibrationOptions,
) -> _Encoded:
    """One forward pass per distinct prompt text, all layers at once."""
    texts = sorted({p.text for rows in [*roles.values(), *checked.values()] for p in rows})
    index = {t: i for i, t in enumerate(texts)}
    all_acts = backend.activations(texts, None, batch_size=opts.batch_size, progress=opts.progress)
    splits = {
        key: _Split(rows, all_acts[[index[p.text] for p in rows]]) for key, rows in roles.items()
    }
    return _Encoded(splits, all_acts, index)


def _fit_gate(
    backend: ActivationBackend,
    preset: str,
    train: dict[str, _Split],
    paper: PaperLayerChoice,
    rank: int,
    opts: CalibrationOptions,
) -> tuple[HarmfulnessGate, dict]:
    """The preset's gate fitted on all training rows, and the report's ``layer_selection``:
    the paper's single layer, or the robust configuration chosen by held-out family."""
    if preset == "robust":
        families = _families(train)
        grid = candidates(candidate_layers(backend.num_layers), readout=opts.readout)
        best, robust = select_robust(grid, families, rank=rank, seed=opts.seed)
        selection = {
            **robust,
            "paper_layer": paper.layer,
            "paper_reason": paper.selection["reason"],
        }
        gate = fit_on(best, {lang: (sp.acts, sp.labels) for lang, sp in train.items()},
                      rank=rank, seed=opts.seed, steering_lambda=opts.steering_lambda)  # fmt: skip
        gate.model = backend.model_info
        return gate, selection
    config = GateConfig(layer=paper.layer, rank=rank, seed=opts.seed,
                        steering_lambda=opts.steering_lambda, readout=opts.readout,
                        **({} if opts.weight_decay is None
                           else {"weight_decay": opts.weight_decay}))  # fmt: skip
    gate = HarmfulnessGate(config, backend.model_info)
    gate.fit({lang: (sp.acts[:, paper.layer], sp.labels) for lang, sp in train.items()})
    return gate, paper.selection


def _measure_language(
    gate: HarmfulnessGate,
    lang: str,
    splits: dict[tuple[str, str], _Split],
    eval_split: str,
    by_family: dict[str, dict[str, float]],
    threshold_k: int | str,
    opts: CalibrationOptions,
) -> dict:
    """The report's row for ``lang``: AUROC and F1 (zero-shot, k-shot) on its evaluation rows,
    its protection status from the labelled pool; stores its threshold in ``gate``."""
    ev = splits[("eval", lang)]
    scores = gate.score_all_layers(ev.acts)
    zero = gate.zero_shot_threshold
    row: dict = {
        "name": language_name(lang),
        "tier": tier(lang),
        "eval_split": eval_split,
        "n_harmful": int(ev.labels.sum()),
        "n_harmless": int(len(ev.labels) - ev.labels.sum()),
        "auroc": auroc(scores, ev.labels),
        "f1_zero_shot": f1_score(scores >= zero, ev.labels),
        "f1_k": {},
        "f1_k_std": {},
        "status": "unknown",
        "family_auroc": by_family.get(lang, {}),
        "weak_families": gate.weak_families(lang),
    }
    if ("val", lang) in splits:  # high-resource val: already encoded for layer choice
        val = splits[("val", lang)]
        row["auroc_val"] = auroc(gate.score_all_layers(val.acts), val.labels)
    pool = splits.get(("pool", lang))
    pool_scores = gate.score_all_layers(pool.acts) if pool is not None else None
    for k in opts.k_values:
        f1s = []
        if pool is not None:
            for draw in kshot_draws(pool.labels, k, opts.k_draws, opts.seed, lang):
                tau = balanced_f1_threshold(pool_scores[draw], pool.labels[draw])
                f1s.append(f1_score(scores >= tau, ev.labels))
        row["f1_k"][str(k)] = float(np.mean(f1s)) if f1s else None
        row["f1_k_std"][str(k)] = float(np.std(f1s)) if f1s else None
    if pool is not None:
        row["pool_auroc"] = auroc(pool_scores, pool.labels)
        row["status"] = "protected" if row["pool_auroc"] > opts.min_auroc else "unprotected"
    if pool is not None and threshold_k:
        record = _store_threshold(gate, lang, pool, pool_scores, threshold_k, opts)
        if record is not None:
            row["threshold"] = record.value
    return row


def _report_summary(
    gate: HarmfulnessGate,
    train: dict[str, _Split],
    per_language: dict[str, dict],
    hrl: list[str],
    threshold_k: int | str,
    opts: CalibrationOptions,
) -> dict:
    """The report's entries between the layer selection and the per-language rows."""
    return {
        "families": {f: len(rows) for f, rows in _family_rows(train).items()},
        "unprotected_languages": [
            x for x, r in per_language.items() if r["status"] == "unprotected"
        ],
        "min_auroc": opts.min_auroc,
        "weak_languages": {
            x: r["weak_families"] for x, r in per_language.items() if r["weak_families"]
        },
        "weak_family_auroc": opts.weak_family_auroc,
        "readout": gate.config.readout,
        "rank": gate.config.rank,
        "alpha": gate.alpha,
        "steering_lambda": gate.config.steering_lambda,
        "zero_shot_threshold": gate.zero_shot_threshold,
        "threshold_k": threshold_k,
        "training_languages": hrl,
        "n_train": {lang: len(s.prompts) for lang, s in train.items()},
        "seed": opts.seed,
        "max_per_class": opts.max_per_class,
        "eval_max_per_class": opts.eval_cap,
        "k_draws": opts.k_draws,
    }


def _save_with_report(gate: HarmfulnessGate, report: dict, out: Path, *, force: bool) -> None:
    """Write the artifact with the report (JSON, Markdown, AUROC plot) inside, atomically."""
    gate.metadata.update(
        layer_selection=report["layer_selection"]["reason"],
        data=report["data"],
        report=REPORT_JSON,
        wall_time_s=report["wall_time_s"],
    )
    extra = {
        REPORT_JSON: json.dumps(report, indent=2, ensure_ascii=False).encode(),
        REPORT_MD: render_markdown(report).encode(),
        REPORT_PNG: render_auroc_plot(report),
    }
    gate.save(out, force=force, extra_files=extra)


def training_families(prompts: Sequence[LabelledPrompt]) -> set[str]:
    """The prompt families among the high-resource training rows."""
    return {family_of(p) for p in prompts if p.split == "train" and p.language in HIGH_RESOURCE}


def resolve_preset(
    prompts: Sequence[LabelledPrompt], opts: CalibrationOptions
) -> tuple[str, str]:
    """The preset a calibration runs (``auto`` resolved) and why; raises before any model time
    is spent when ``robust`` is asked of data it cannot calibrate on."""
    families = sorted(training_families(prompts))
    if opts.preset == "robust" and len(families) < 2:
        raise DataError(
            "--preset robust chooses its configuration on a held-out prompt family, but the "
            f"training rows form one family ({', '.join(families)}): add a dataset of "
            "another style (e.g. --data evaluation/data/styles) or use --preset paper"
        )
    if opts.preset != "auto":
        return opts.preset, "asked for"
    if opts.layer is not None:
        return "paper", "auto: --layer fixes the paper's single layer"
    if opts.weight_decay is not None:
        return "paper", "auto: --weight-decay fixes the paper preset's readout"
    if len(families) < 2:
        return "paper", (
            f"auto: the training rows form one prompt family ({', '.join(families)}); robust "
            "needs two or more to choose on a held-out one"
        )
    return "robust", f"auto: {len(families)} prompt families ({', '.join(families)})"


def _family_rows(train: dict[str, _Split]) -> dict[str, list[tuple[str, int]]]:
    """{family: [(language, row index)]} over the training splits."""
    out: dict[str, list[tuple[str, int]]] = {}
    for lang, sp in train.items():
        for i, p in enumerate(sp.prompts):
            out.setdefault(family_of(p), []).append((lang, i))
    return out


def _families(train: dict[str, _Split]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The training rows as ``gate.selection`` families: {family: {language: (acts, labels)}}."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for fam, rows in _family_rows(train).items():
        for lang in sorted({lang for lang, _ in rows}):
            idx = [i for x, i in rows if x == lang]
            out.setdefault(fam, {})[lang] = (train[lang].acts[idx], train[lang].labels[idx])
    return out


def paper_layer(num_layers: int, val_auroc: Mapping[int, float]) -> int:
    """The paper's layer choice (METHOD.md): among the middle layers (``candidate_layers``),
    the best mean high-resource validation AUROC, compared at 4 decimals so noise does not
    decide; ties go to the earlier layer, a layer without a value counts as AUROC 0."""
    return max(candidate_layers(num_layers), key=lambda j: (round(val_auroc.get(j, 0.0), 4), -j))


def _choose_layer(
    num_layers: int,
    train: dict[str, _Split],
    splits: dict,
    hrl: list[str],
    opts: CalibrationOptions,
) -> PaperLayerChoice:
    """Fit a paper gate at every layer (the report's AUROC-by-layer plot); pick the forced
    layer or the best mean HRL-val AUROC among the middle layers (the paper's choice)."""
    middle = candidate_layers(num_layers)
    gates: list[HarmfulnessGate] = []
    val_auroc: dict[int, float] = {}
    for j in range(num_layers):
        g = HarmfulnessGate(GateConfig(layer=j, rank=min(opts.rank, len(hrl)), seed=opts.seed))
        g.fit(_layer_train(train, j))
        gates.append(g)
        vals = [
            auroc(g.score(splits[("val", lang)].acts[:, j]), splits[("val", lang)].labels)
            for lang in hrl
            if ("val", lang) in splits
        ]
        if vals:
            val_auroc[j] = float(np.mean(vals))
    if opts.layer is not None:
        if not 0 <= opts.layer < num_layers:
            raise ValueError(f"--layer {opts.layer} out of range 0..{num_layers - 1}")
        layer = opts.layer
        reason = f"layer {layer} was given with --layer"
    elif val_auroc:
        layer = paper_layer(num_layers, val_auroc)
        reason = (
            f"layer {layer}: highest mean high-resource validation AUROC of the gate "
            f"({val_auroc[layer]:.4f}, {len(hrl)} languages) among the middle layers "
            f"{middle[0]}..{middle[-1]} (ties go to the earlier layer); no target-language "
            "data was used to choose it"
        )
    else:
        layer = middle[len(middle) // 2]
        reason = f"layer {layer}: no validation split in the data, took the middle layer"
    selection = {
        "reason": reason,
        "candidates": middle,
        "hrl_val_auroc_by_layer": {str(j): v for j, v in val_auroc.items()},
    }
    return PaperLayerChoice(layer, selection, gates)


def render_markdown(report: dict) -> str:
    """A human summary of a calibration report."""
    layers = "+".join(str(x) for x in report["layers"])
    readout = (
        "full readout (the whole residual of each layer)"
        if report.get("readout") == "full"
        else f"rank {report['rank']} per layer"
    )
    unprotected = report["unprotected_languages"]
    weak = report["weak_languages"]
    lines = [
        f"# babelgate calibration: {report['model']['id']}",
        "",
        f"- preset **{report['preset']}** ({report['preset_reason']}), layer(s) **{layers}** — "
        f"{report['layer_selection']['reason']}",
        f"- {readout}, weight decay {report['weight_decay']:g}, alpha "
        f"{report['alpha']:.4f}, zero-shot threshold {report['zero_shot_threshold']:.4f}",
        f"- trained on {', '.join(report['training_languages'])} "
        f"({sum(report['n_train'].values())} prompts; families"
        + (" balanced" if report.get("balance_families") else "")
        + ": "
        + ", ".join(f"{f} {n}" for f, n in report["families"].items())
        + f"), data `{report['data']}`, seed {report['seed']}, wall time "
        f"{report['wall_time_s']} s",
        "- unprotected languages (labelled pool AUROC <= "
        f"{report['min_auroc']}): **{', '.join(unprotected) if unprotected else 'none'}**",
        f"- weak on a prompt family (cross-fitted AUROC < {report['weak_family_auroc']}): **"
        + ("; ".join(f"{x}: {', '.join(f)}" for x, f in weak.items()) if weak else "none")
        + "**",
        "",
        "| language | tier | split | n harmful / harmless | AUROC | F1 zero-shot | F1 k=1 | "
        "F1 k=4 | threshold | pool AUROC | status | AUROC per family |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    for lang, row in report["languages"].items():
        lines.append(
            f"| {lang} ({row['name']}) | {row['tier']} | {row['eval_split']} | "
            f"{row['n_harmful']} / {row['n_harmless']} | {fmt(row['auroc'])} | "
            f"{fmt(row['f1_zero_shot'])} | {fmt(row['f1_k'].get('1'))} | "
            f"{fmt(row['f1_k'].get('4'))} | {fmt(row.get('threshold'))} | "
            f"{fmt(row.get('pool_auroc'))} | {row['status']} | "
            + (", ".join(f"{f} {fmt(v)}" for f, v in row["family_auroc"].items()) or "—")
            + " |"
        )
    lines += [
        "",
        f"F1 at k = mean over {report['k_draws']} draws of k harmful + k harmless examples "
        "from the language's train split; the threshold column is the per-language threshold "
        f"stored in the artifact ({_threshold_text(report.get('threshold_k'))}; — = falls back "
        "to the zero-shot threshold). Status: how well "
        "the gate separates the language's labelled train pool (unknown: no labelled examples "
        "of the language); an unprotected language gets the server's fallback action. AUROC "
        "per family: the gate's configuration refitted on half of the training items and "
        "scored on the language's rows of each prompt family from the other half, both ways "
        "(gate.style_check); a family below the floor is one the language is weak on.",
        "",
    ]
    return "\n".join(lines)


def _threshold_text(threshold_k: int | str | None) -> str:
    """How the report's stored thresholds were set, in words."""
    if threshold_k == "all":
        return "set on the whole train pool, each prompt family weighted equally"
    return f"set on {threshold_k} train examples per class"


def render_auroc_plot(report: dict) -> bytes:
    """PNG: gate AUROC per layer for every evaluated language, chosen layer marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for lang, values in report["auroc_by_layer"].items():
        style = "-" if tier(lang) == "high" else "--"
        ax.plot(range(len(values)), values, style, label=lang, linewidth=1.2)
    ax.axvline(report["layer"], color="black", linestyle=":", label=f"layer {report['layer']}")
    ax.set_xlabel("layer (output of decoder block)")
    ax.set_ylabel("gate AUROC (evaluation split)")
    ax.set_title(f"babelgate gate AUROC per layer — {report['model']['id']}")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(ncol=5, fontsize=7, loc="lower right")
    fig.tight_layout()
    return png(fig)
