"""``babelgate recalibrate``: set one language's threshold from k labelled examples per class.

Runs in the CLI process: it scores the examples with the artifact's model (transformers backend),
applies the paper's balanced-F1 threshold rule, and rewrites the manifest atomically.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from gate.kshot import kshot_indices, kshot_rng


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
    p.add_argument("--language", required=True, help="language code, e.g. sw")
    p.add_argument("--examples", required=True, help="JSONL/JSON/CSV with text and label")
    p.add_argument("--k", type=int, default=None, help="use k examples per class (default: all)")
    p.add_argument("--seed", type=int, default=0, help="which k examples are drawn")
    p.add_argument("--model", default=None, help="model to score with (default: the artifact's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gate.data import DataError, check_both_classes, load_file
    from gate.estimator import HarmfulnessGate
    from gate.hf.backend import TransformersBackend
    from gate.languages import validate_language

    language = validate_language(args.language)
    examples = load_file(args.examples, language=language)
    examples = [e for e in examples if e.language == language] or examples
    check_both_classes(examples, str(args.examples))
    if args.k is not None:
        if args.k < 1:
            raise DataError("--k must be at least 1")
        labels = [e.label for e in examples]
        for label in (1, 0):
            if labels.count(label) < args.k:
                raise DataError(
                    f"--k {args.k} but only {labels.count(label)} examples with label {label}"
                )
        draw = kshot_indices(labels, args.k, kshot_rng(args.seed, language, args.k))
        examples = [examples[i] for i in draw]
    gate = HarmfulnessGate.load(args.artifact)
    backend = TransformersBackend(args.model or gate.model.id)
    gate = HarmfulnessGate.load(args.artifact, expect_model=backend.model_info)
    acts = gate.inputs(
        backend.activations([e.text for e in examples], list(gate.layers), progress=False)
    )
    labels = np.array([e.label for e in examples])
    old = gate.threshold(language)
    record = gate.recalibrate(language, acts, labels)
    record.note = f"{record.note} babelgate recalibrate from {args.examples}".strip()
    gate.save_thresholds(args.artifact)
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
