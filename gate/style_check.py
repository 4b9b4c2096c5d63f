"""How well a fitted gate's configuration holds per language on each prompt family (style).

Runs in the CLI process (calibration, the shift evaluation). A language's threshold can be
sound on the prompts it was calibrated on and the gate still fail on another way of asking
(on the embedded model, Korean questions at AUROC 0.66 and narratives 0.62 against 0.83
for instructions). The check
measures that at calibration time, from labelled rows of every family in the data: the gate's
configuration is refitted twice on the training rows, each time on half of the *items* (a
prompt and its translations share an item, so share a half), and each checked row is scored by
the refit that never saw its item in any language. A language whose AUROC on a family falls
below ``gate.estimator.WEAK_FAMILY_AUROC`` is reported weak on that family: the artifact, the
calibration report, ``GET /admin/thresholds`` and a metric say so, so an operator never reads
one in-distribution number as protection against every phrasing.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from babelgate.gate.data import LabelledPrompt, subsample
from babelgate.gate.metrics import auroc
from babelgate.gate.selection import Candidate, fit_on

# Fewer checked rows than this per class and the family is not checked for the language.
MIN_CHECK_PER_CLASS = 4
CHECK_SPLITS: tuple[str, ...] = ("test", "val", "train")

# {(language, family): (prompts, all-layer activations (n, num_layers, d))}
CheckRows = Mapping[tuple[str, str], tuple[Sequence[LabelledPrompt], np.ndarray]]


def family_of(prompt: LabelledPrompt) -> str:
    """The prompt family (style) a row belongs to: its ``style``, else its dataset."""
    return prompt.style or Path(prompt.source.split(":")[-1]).stem or "unnamed"


def item_fold(prompt: LabelledPrompt) -> int:
    """0 or 1 from the prompt's item id (translations of one item share it) or its text."""
    key = prompt.source.split("#", 1)[1] if "#" in prompt.source else prompt.text
    return zlib.crc32(key.encode("utf-8")) % 2


def balance_families(rows: Sequence[LabelledPrompt], seed: int) -> list[LabelledPrompt]:
    """Per language, every family cut to the smallest family's count per class (reproducibly
    drawn), so no one way of asking dominates the readout (``--family-balance``). PolyRefuse's
    instructions outnumber the project's questions and narratives 10 to 1; balanced, the
    embedded model's robust gate gained 0.045 and 0.067 mean AUROC on narratives (seeds 0 and
    1) but flagged 85-90 % of English MMLU questions harmful (79 % with whole-pool thresholds:
    ``bench/benign_flagged.py --family-balance``), so it is not the default.
    Families lacking a class do not set the count; rows of one family come back unchanged."""
    out: list[LabelledPrompt] = []
    for lang in sorted({p.language for p in rows}):
        mine = [p for p in rows if p.language == lang]
        families: dict[str, list[LabelledPrompt]] = {}
        for p in mine:
            families.setdefault(family_of(p), []).append(p)
        families = dict(sorted(families.items()))
        counts = [
            min(n, len(fam) - n)
            for fam in families.values()
            if 0 < (n := sum(p.label for p in fam)) < len(fam)
        ]
        if len(families) < 2 or not counts:
            out += mine
            continue
        out += [p for fam in families.values() for p in subsample(fam, min(counts), seed)]
    return out


def check_rows(
    prompts: Sequence[LabelledPrompt],
    languages: Sequence[str],
    *,
    max_per_class: int | None,
    seed: int,
) -> dict[tuple[str, str], list[LabelledPrompt]]:
    """Per (language, family) the rows to check: the family's first split among test, val and
    train holding ``MIN_CHECK_PER_CLASS`` of each class, capped at ``max_per_class``. Empty
    when the data hold one family (the in-distribution AUROC already says it all)."""
    if len({family_of(p) for p in prompts}) < 2:
        return {}
    out: dict[tuple[str, str], list[LabelledPrompt]] = {}
    for lang in languages:
        rows = [p for p in prompts if p.language == lang]
        for fam in sorted({family_of(p) for p in rows}):
            for split in CHECK_SPLITS:
                chosen = [p for p in rows if family_of(p) == fam and p.split == split]
                n_harmful = sum(p.label for p in chosen)
                if min(n_harmful, len(chosen) - n_harmful) >= MIN_CHECK_PER_CLASS:
                    out[(lang, fam)] = subsample(chosen, max_per_class, seed)
                    break
    return out


def mean_fold_auroc(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The mean AUROC of cross-fitted folds' ``(scores, labels)`` (folds lacking a class are
    skipped). Two refits share no logit scale, so their scores are never ranked together."""
    values = [auroc(s, y) for s, y in parts if 0 < np.sum(y) < len(y)]
    return float(np.mean(values)) if values else None


def family_auroc(
    candidate: Candidate,
    train: Mapping[str, tuple[Sequence[LabelledPrompt], np.ndarray]],
    check: CheckRows,
    *,
    rank: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """{language: {family: cross-fitted AUROC}} of ``candidate`` fitted on ``train``
    (``{language: (prompts, all-layer activations)}``), two folds by item (see module doc)."""
    parts: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for fold in (0, 1):
        data = {}
        for lang, (rows, acts) in train.items():
            keep = np.array([item_fold(p) != fold for p in rows])
            y = np.array([p.label for p in rows])[keep]
            if 0 < y.sum() < len(y):
                data[lang] = (acts[keep], y)
        if not data:
            continue
        gate = fit_on(candidate, data, rank=rank, seed=seed)
        for key, (rows, acts) in check.items():
            mine = np.array([item_fold(p) == fold for p in rows])
            if mine.any():
                y = np.array([p.label for p in rows])[mine]
                parts.setdefault(key, []).append((gate.score_all_layers(acts[mine]), y))
    out: dict[str, dict[str, float]] = {}
    for (lang, fam), folds in sorted(parts.items()):
        value = mean_fold_auroc(folds)
        if value is not None:
            out.setdefault(lang, {})[fam] = value
    return out

