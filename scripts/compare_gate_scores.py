"""Per-language gate AUROC (bootstrap 95 % interval) of several protection ``scores.jsonl`` files.

A developer's tool, not part of the package: it compares gate candidates scored on the same
held-out rows by ``babelgate eval --protection`` (each file's rows: ``language``, ``label``,
``score``) and prints one Markdown table, a column per file, the mean over languages last.

    python scripts/compare_gate_scores.py NAME=FILE [NAME=FILE ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from babelgate.gate.metrics import auroc, bootstrap_auroc_interval


def per_language(path: Path) -> dict[str, tuple[float, float, float]]:
    """language -> (AUROC, low, high) over the file's rows."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    out = {}
    for lang in sorted({r["language"] for r in rows}):
        scores = [r["score"] for r in rows if r["language"] == lang]
        labels = [r["label"] for r in rows if r["language"] == lang]
        out[lang] = (auroc(scores, labels), *bootstrap_auroc_interval(scores, labels))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="NAME=FILE")
    args = parser.parse_args()
    named = dict(arg.split("=", 1) for arg in args.files)
    tables = {name: per_language(Path(path)) for name, path in named.items()}
    langs = sorted(set.intersection(*(set(t) for t in tables.values())))
    print("| language | " + " | ".join(tables) + " |")
    print("|---|" + "---|" * len(tables))
    for lang in langs:
        cells = [f"{t[lang][0]:.3f} [{t[lang][1]:.2f}, {t[lang][2]:.2f}]" for t in tables.values()]
        print(f"| {lang} | " + " | ".join(cells) + " |")
    means = [f"**{np.mean([t[lang][0] for lang in langs]):.3f}**" for t in tables.values()]
    print("| mean | " + " | ".join(means) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
