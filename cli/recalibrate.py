"""``babelgate recalibrate``: set one language's threshold from k labelled examples per class.

Runs in the CLI process: it scores the examples with the artifact's model (transformers backend),
applies the paper's balanced-F1 threshold rule, and rewrites the manifest atomically.
"""

from __future__ import annotations

import argparse
import sys

from babelgate.server.calibration import band_languages, recalibrate_language


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recalibrate",
        help="set a language's threshold from k labelled examples per class",
        description=(
            "Scores the examples with the gate and keeps the threshold with the best "
            "class-balanced F1 (ties to the lowest), as in the paper; records it in the manifest."
        ),
    )
    p.add_argument("--artifact", required=True, help="artifact directory (from calibrate)")
    p.add_argument(
        "--language", required=True, help="language code, e.g. sw (--band-only: a comma list)"
    )
    p.add_argument("--examples", required=True, help="JSONL/JSON/CSV with text and label")
    p.add_argument("--k", type=int, default=None, help="use k examples per class (default: all)")
    p.add_argument("--seed", type=int, default=0, help="which k examples are drawn")
    p.add_argument("--model", default=None, help="model to score with (default: the artifact's)")
    p.add_argument(
        "--band-only",
        action="store_true",
        help="keep the threshold; measure only the abstain band (the score below which a "
        "verdict is confidently harmless) from the harmful examples",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.band_only:
        languages = [x.strip() for x in args.language.split(",") if x.strip()]
        for _, record in band_languages(args.artifact, languages, args.examples,
                                        model=args.model):  # fmt: skip
            print(f"{record.language}: threshold {record.value:.4f} kept, harmless below "
                  f"{record.harmless_below:.4f}")  # fmt: skip
        return 0
    old, record = recalibrate_language(
        args.artifact, args.language, args.examples, k=args.k, seed=args.seed, model=args.model
    )
    language = record.language
    print(
        f"{language}: threshold {old.value:.4f} ({old.source}) -> {record.value:.4f} "
        f"(recalibrated, k={record.k}: {record.n_harmful} harmful, {record.n_harmless} harmless; "
        f"AUROC of the examples {record.auroc:.2f})"
    )
    if not record.protected:
        print(
            f"WARNING: {language} is UNPROTECTED: the gate does not separate its examples "
            f"(AUROC {record.auroc:.2f}). Serving applies the unprotected-language fallback "
            "(--unprotected-action) to it; more or better examples may change this.",
            file=sys.stderr,
        )
    return 0
