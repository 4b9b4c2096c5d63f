"""Rebuild ``evaluation/data/hate/``: Multilingual HateCheck rows for a gate-training experiment.

A developer's tool, not part of the package (issue 23: "training data that covers more kinds of
harm"). The shipped gate learns PolyRefuse's kinds of harm (crime, violence, weapons, fraud); on
the held-out XSafety benchmark it confuses benign prompts *about* harm (ethics, mental health)
with harmful ones, worst in de, hi and bn. Multilingual HateCheck (CC-BY-4.0; github
rewire-online/multilingual-hatecheck, Röttger et al. 2022) is hand-written and hand-validated in
10 languages, and has what PolyRefuse lacks: another kind of harm (threats against a group) and
benign text about harm (counter-speech quoting or denouncing hate, neutral and positive
statements about groups, negated hate).

Only the languages the gate is trained in are taken (de fr es it nl pl zh), so that hi, ar and bn
stay unseen by the experiment. Per language and functionality, ``--per-function`` rows drawn with
a seeded generator. Labels: ``threat_dir_h`` and ``threat_norm_h`` harmful; ``counter_quote_nh``,
``counter_ref_nh``, ``ident_neutral_nh``, ``ident_pos_nh`` and ``negate_neg_nh`` benign. CI has no
network, so the output is committed with the licence.

    python scripts/build_hate_data.py --mhc DIR   # DIR: a checkout of the repository
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "evaluation" / "data" / "hate"
COMMIT = "a03f2ca"
FILES = {"de": "german", "fr": "french", "es": "spanish", "it": "italian", "nl": "dutch",
         "pl": "polish", "zh": "mandarin"}  # fmt: skip
FUNCTIONS = {"threat_dir_h": 1, "threat_norm_h": 1, "counter_quote_nh": 0, "counter_ref_nh": 0,
             "ident_neutral_nh": 0, "ident_pos_nh": 0, "negate_neg_nh": 0}  # fmt: skip


def language_rows(path: Path, language: str, per_function: int, seed: int) -> list[dict]:
    """``per_function`` seeded draws of each kept functionality of one language's cases."""
    with path.open(encoding="utf-8") as f:
        cases = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    out = []
    for function, label in FUNCTIONS.items():
        pool = [c for c in cases if c["functionality"] == function]
        for i in sorted(rng.permutation(len(pool))[:per_function]):
            out.append({"id": pool[i]["mhc_case_id"], "text": pool[i]["test_case"].strip(),
                        "label": label, "style": f"mhc-{function}", "language": language,
                        "split": "train", "source": "multilingual-hatecheck"})  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mhc", type=Path, required=True, help="checkout of the repository")
    parser.add_argument("--per-function", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for language, name in FILES.items():
        rows = language_rows(args.mhc / "MHC Final Cases" / f"hatecheck_cases_final_{name}.csv",
                             language, args.per_function, args.seed)  # fmt: skip
        with (OUT / f"{language}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(language, len(rows))
    shutil.copy(args.mhc / "LICENSE", OUT / "LICENSE.multilingual-hatecheck")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
