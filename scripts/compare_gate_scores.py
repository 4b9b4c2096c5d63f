"""Per-language gate AUROC and recall at a false-positive rate of several protection
``scores.jsonl`` files.

A developer's tool, not part of the package: it compares gate candidates scored on the same
held-out rows by ``babelgate eval --protection`` (each file's rows: ``language``, ``label``,
``score``) and prints two Markdown tables, a column per file, the mean over languages last:
AUROC with its bootstrap 95 % interval, then the recall at a false-positive rate of at most
``--max-fpr`` (the best threshold per language, chosen on these rows: an upper bound on what any
threshold rule could reach; AUROC alone hides where on the ROC curve a gate gains).

    python scripts/compare_gate_scores.py [--max-fpr 0.1] NAME=FILE [NAME=FILE ...]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from babelgate.gate.metrics import auroc, bootstrap_auroc_interval, recall_at_fpr


def rows_by_language(path: Path) -> dict[str, tuple[list[float], list[int]]]:
    """language -> (scores, labels) of the file's rows."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {
        lang: ([r["score"] for r in rows if r["language"] == lang],
               [r["label"] for r in rows if r["language"] == lang])
        for lang in sorted({r["language"] for r in rows})
    }  # fmt: skip


def table(title: str, named: dict[str, dict], cell: Callable[[list, list], tuple]) -> None:
    """One Markdown table: ``cell(scores, labels)`` -> (value, text) per language and file."""
    langs = sorted(set.intersection(*(set(t) for t in named.values())))
    values = {name: {lang: cell(*data[lang]) for lang in langs} for name, data in named.items()}
    print(f"\n{title}\n")
    print("| language | " + " | ".join(named) + " |")
    print("|---|" + "---|" * len(named))
    for lang in langs:
        print(f"| {lang} | " + " | ".join(v[lang][1] for v in values.values()) + " |")
    means = [f"**{np.mean([v[lang][0] for lang in langs]):.3f}**" for v in values.values()]
    print("| mean | " + " | ".join(means) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-fpr", type=float, default=0.1)
    parser.add_argument("files", nargs="+", metavar="NAME=FILE")
    args = parser.parse_args()
    named = {name: rows_by_language(Path(path))
             for name, path in (arg.split("=", 1) for arg in args.files)}  # fmt: skip

    def auroc_cell(scores: list, labels: list) -> tuple[float, str]:
        value = auroc(scores, labels)
        low, high = bootstrap_auroc_interval(scores, labels)
        return value, f"{value:.3f} [{low:.2f}, {high:.2f}]"

    def recall_cell(scores: list, labels: list) -> tuple[float, str]:
        value = recall_at_fpr(scores, labels, args.max_fpr)
        return value, f"{value:.2f}"

    table("Gate AUROC [bootstrap 95 %]:", named, auroc_cell)
    table(f"Recall at a false-positive rate <= {args.max_fpr:g} (best threshold per language, "
          "chosen on these rows):", named, recall_cell)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
