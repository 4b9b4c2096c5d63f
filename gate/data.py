"""Labelled prompts from PolyRefuse, plain JSON / JSONL / CSV files, or Hugging Face datasets.

Runs in the CLI process. Every loader returns the same flat list of ``LabelledPrompt`` so the
calibration, recalibration and evaluation code never learns where data came from. Label 1 means
harmful, 0 harmless.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from babelgate.gate.languages import validate_language

SPLITS = ("train", "val", "test")
TEXT_FIELDS = ("text", "prompt", "instruction_translated", "instruction", "input", "question")
LABEL_FIELDS = ("label", "harmful", "is_harmful", "class")
_LABEL_WORDS = {
    "1": 1, "harmful": 1, "unsafe": 1, "true": 1, "yes": 1, "positive": 1,
    "0": 0, "harmless": 0, "safe": 0, "benign": 0, "false": 0, "no": 0, "negative": 0,
}


class DataError(ValueError):
    """Data that cannot be used as labelled prompts; the message says which row and why."""


@dataclass(frozen=True)
class LabelledPrompt:
    """One prompt with its label (1 = harmful), language code, split and origin.

    ``style`` names the prompt family ("instruction", "question", "narrative", ...; "" when a
    dataset does not say): the shift evaluation trains on some families and tests on others.
    """

    text: str
    label: int
    language: str
    split: str
    source: str
    style: str = ""


def parse_label(value: object, where: str) -> int:
    """Map the label spellings found in the wild (0/1, bools, harmful/harmless, safe/unsafe)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    word = str(value).strip().lower()
    if word in _LABEL_WORDS:
        return _LABEL_WORDS[word]
    raise DataError(f"{where}: label {value!r} is not harmful/harmless, 1/0 or true/false")


def normalise_split(name: str, where: str) -> str:
    """Map split spellings (validation, dev, eval) onto train / val / test."""
    key = name.strip().lower()
    key = {"validation": "val", "dev": "val", "valid": "val", "eval": "test"}.get(key, key)
    if key not in SPLITS:
        raise DataError(f"{where}: unknown split {name!r} (use train, val or test)")
    return key


def _pick(record: Mapping[str, object], fields: Sequence[str]) -> object | None:
    for name in fields:
        value = record.get(name)
        if value not in (None, ""):
            return value
    return None


def records_to_prompts(
    records: Iterable[Mapping[str, object]],
    *,
    source: str,
    language: str | None = None,
    split: str | None = None,
    label: int | None = None,
) -> list[LabelledPrompt]:
    """Turn dict rows into prompts. Per-row ``language``/``split``/``label`` fields win over the
    defaults given here; a row without text, label or language is an error naming the row."""
    out: list[LabelledPrompt] = []
    for n, rec in enumerate(records, start=1):
        where = f"{source} row {n}"
        if not isinstance(rec, Mapping):
            raise DataError(f"{where}: expected an object with text and label, got {rec!r:.60}")
        text = _pick(rec, TEXT_FIELDS)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: no text (looked for fields {', '.join(TEXT_FIELDS)})")
        raw_label = _pick(rec, LABEL_FIELDS)
        if raw_label is None and label is None:
            raise DataError(f"{where}: no label (fields {', '.join(LABEL_FIELDS)})")
        lab = parse_label(raw_label, where) if raw_label is not None else int(label)  # type: ignore[arg-type]
        lang = rec.get("language") or rec.get("lang") or language
        if not lang:
            raise DataError(f"{where}: no language field; pass --language for the whole file")
        out.append(
            LabelledPrompt(
                text=text.strip(),
                label=lab,
                language=validate_language(str(lang)),
                split=normalise_split(str(rec.get("split") or split or "train"), where),
                source=source,
                style=str(rec.get("style") or ""),
            )
        )
    return out


def load_file(
    path: str | Path, *, language: str | None = None, split: str | None = None
) -> list[LabelledPrompt]:
    """Load a JSON array, JSONL or CSV file of labelled prompts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
        elif suffix == ".json":
            records = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(records, dict):
                records = records.get("data") or records.get("rows") or [records]
        elif suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as f:
                records = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        else:
            raise DataError(f"{path}: unsupported format {suffix!r} (use .json, .jsonl or .csv)")
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot parse ({exc})") from exc
    prompts = records_to_prompts(records, source=str(path), language=language, split=split)
    if not prompts:
        raise DataError(f"{path}: no rows")
    return prompts


def is_polyrefuse(root: Path) -> bool:
    """True if ``root`` has PolyRefuse's layout (``PolyRefuse/`` and ``dataset/splits/``)."""
    return (root / "PolyRefuse").is_dir()


def polyrefuse_languages(root: str | Path) -> list[str]:
    """Languages present in a PolyRefuse folder (from its train files, plus English)."""
    names = sorted((Path(root) / "PolyRefuse").glob("harmful_train_translated_*.json"))
    langs = {p.stem.rsplit("_", 1)[1] for p in names}
    if (Path(root) / "dataset" / "splits" / "harmful_train.json").is_file():
        langs.add("en")
    return sorted(langs)


def _polyrefuse_file(root: Path, kind: str, split: str, lang: str) -> Path:
    """Path of one PolyRefuse file, following its quirks: English train/val live under
    ``dataset/splits`` (harmless ones with a ``_200_sampled`` suffix)."""
    if lang == "en" and split in ("train", "val"):
        suffix = "_200_sampled" if kind == "harmless" else ""
        return root / "dataset" / "splits" / f"{kind}_{split}{suffix}.json"
    return root / "PolyRefuse" / f"{kind}_{split}_translated_{lang}.json"


def load_polyrefuse(
    root: str | Path,
    *,
    languages: Sequence[str] | None = None,
    splits: Sequence[str] = SPLITS,
) -> list[LabelledPrompt]:
    """Load PolyRefuse. Test files keep the target-language text in ``instruction_translated``
    (``instruction`` is the English source); train/val keep it in ``instruction``. Missing files
    (PolyRefuse has no Chinese harmless test split) are skipped: callers check class balance."""
    root = Path(root)
    if not is_polyrefuse(root):
        raise DataError(f"{root}: not a PolyRefuse folder (expected {root}/PolyRefuse/)")
    available = polyrefuse_languages(root)
    wanted = [validate_language(x) for x in languages] if languages else available
    missing = [x for x in wanted if x not in available]
    if missing:
        raise DataError(
            f"languages {missing} are not in {root} (it has: {', '.join(available)})"
        )
    out: list[LabelledPrompt] = []
    for lang in wanted:
        for split in splits:
            if split not in SPLITS:
                raise DataError(f"unknown split {split!r}: use one of {SPLITS}")
            for kind, label in (("harmful", 1), ("harmless", 0)):
                path = _polyrefuse_file(root, kind, split, lang)
                if not path.is_file():
                    continue
                rows = json.loads(path.read_text(encoding="utf-8"))
                texts = [r.get("instruction_translated") or r["instruction"] for r in rows]
                out.extend(
                    LabelledPrompt(
                        t.strip(), label, lang, split, f"polyrefuse:{path.name}", "instruction"
                    )
                    for t in texts
                )
    return out


def load_hf_dataset(
    name: str,
    *,
    split: str = "train",
    language: str | None = None,
    config: str | None = None,
) -> list[LabelledPrompt]:
    """Load a Hugging Face dataset by name (needs the hub or its local cache)."""
    import datasets  # lazy: about 1 s to import, and only hub datasets need it

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # any hub/cache failure: say what to do instead
        raise DataError(
            f"cannot load Hugging Face dataset {name!r} split {split!r} ({exc}); "
            "pass a local JSON/JSONL/CSV file instead"
        ) from exc
    return records_to_prompts(ds, source=f"hf:{name}", language=language, split=split)


def load_dataset(
    source: str | Path,
    *,
    languages: Sequence[str] | None = None,
    splits: Sequence[str] = SPLITS,
    language: str | None = None,
) -> list[LabelledPrompt]:
    """Load labelled prompts from any supported source.

    ``source``: a PolyRefuse folder; a JSON/JSONL/CSV file (rows need text, label and, unless
    ``language`` is given, a language field; a ``split`` field is optional); a folder of such
    files; or ``hf:<name>[:<split>]`` for a Hugging Face dataset. ``languages`` filters the result.
    """
    text = str(source)
    if text.startswith("hf:"):
        name, _, split = text[3:].partition(":")
        prompts = load_hf_dataset(name, split=split or "train", language=language)
    else:
        path = Path(text).expanduser()
        if path.is_dir() and is_polyrefuse(path):
            return load_polyrefuse(path, languages=languages, splits=splits)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.suffix.lower() in (".json", ".jsonl", ".csv")
            )
            if not files:
                raise DataError(f"{path}: no .json/.jsonl/.csv files")
            prompts = [p for f in files for p in load_file(f, language=language)]
        elif path.exists():
            prompts = load_file(path, language=language)
        else:
            raise DataError(
                f"{text}: no such file or folder (for a Hugging Face dataset write hf:<name>)"
            )
    if languages:
        keep = {validate_language(x) for x in languages}
        absent = keep - {p.language for p in prompts}
        if absent:
            raise DataError(f"{text}: no rows for language(s) {sorted(absent)}")
        prompts = [p for p in prompts if p.language in keep]
    return [p for p in prompts if p.split in splits]


def select(
    prompts: Sequence[LabelledPrompt], *, language: str, split: str
) -> list[LabelledPrompt]:
    """The prompts of one language and split."""
    return [p for p in prompts if p.language == language and p.split == split]


def subsample(
    prompts: Sequence[LabelledPrompt], max_per_class: int | None, seed: int
) -> list[LabelledPrompt]:
    """At most ``max_per_class`` of each label, drawn reproducibly; order kept."""
    if max_per_class is None:
        return list(prompts)
    rng = random.Random(seed)
    keep: set[int] = set()
    for label in (0, 1):
        idx = [i for i, p in enumerate(prompts) if p.label == label]
        keep.update(rng.sample(idx, min(max_per_class, len(idx))))
    return [p for i, p in enumerate(prompts) if i in keep]


def check_both_classes(prompts: Sequence[LabelledPrompt], what: str) -> None:
    """Refuse empty or one-class data before any model time is spent on it."""
    n_harmful = sum(p.label for p in prompts)
    n_harmless = len(prompts) - n_harmful
    if not prompts:
        raise DataError(f"{what}: no prompts")
    if n_harmful == 0 or n_harmless == 0:
        raise DataError(
            f"{what}: needs harmful and harmless examples (got {n_harmful} harmful, "
            f"{n_harmless} harmless)"
        )
