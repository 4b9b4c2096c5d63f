"""``babelgate calibrate``: fit the gate for a model and write an artifact with its report.

Runs in the CLI process (transformers backend) or drives a vLLM engine (``--backend vllm``).
"""

from __future__ import annotations

import argparse
import json

from babelgate.gate.calibration import REPORT_MD, CalibrationOptions
from babelgate.gate.estimator import READOUTS
from babelgate.gate.hf.embedded import MODEL_HELP
from babelgate.server.calibration import calibrate_artifact


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit the gate on high-resource train splits and write an artifact",
        description=(
            "Reads the residual stream of MODEL at the post-instruction token for every prompt, "
            "chooses the layer(s), fits the low-rank logistic gate on the high-resource "
            "languages' train splits, measures every language, and writes the artifact to OUT "
            "(with calibration_report.json/.md and auroc_by_layer.png)."
        ),
    )
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument(
        "--data",
        action="append",
        default=None,
        help="PolyRefuse folder, JSON/JSONL/CSV file or folder, or hf:<name>[:split]; repeat to "
        "train on several datasets at once (each row's `style` field, else its dataset, names "
        "its prompt family) (default: PolyRefuse from $BABELGATE_DATA or "
        "../shared/data/polyrefuse, plus the project's question and narrative prompts, "
        "evaluation/data/styles)",
    )
    p.add_argument(
        "--preset",
        choices=("auto", "paper", "robust"),
        default="auto",
        help="paper: METHOD.md's single layer chosen on validation AUROC (reproduction); "
        "robust: layers read and weight decay chosen by held-out-style validation (needs "
        "training data of >= 2 prompt families, e.g. --data <polyrefuse> --data "
        "evaluation/data/styles); auto (default): robust when the data holds >= 2 families, "
        "else paper",
    )
    p.add_argument(
        "--out",
        default=None,
        help="artifact directory to create (default: the model's cached default calibration, "
        "made on first use and reused after; its report is printed)",
    )
    p.add_argument("--languages", default=None, help="comma-separated codes to evaluate")
    p.add_argument("--layer", type=int, default=None, help="force the layer (default: chosen)")
    p.add_argument("--rank", type=int, default=10, help="rank of the gate's basis (default 10)")
    p.add_argument(
        "--readout",
        choices=READOUTS,
        default="low-rank",
        help="what the gate's logistic unit reads: low-rank (METHOD: the projections on the "
        "basis of the training languages' harm directions; default) or full (the whole "
        "residual of each layer read; --rank is then unused)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="AdamW weight decay of the paper preset's readout (default: METHOD's 0.01; the "
        "robust preset chooses its own)",
    )
    p.add_argument("--max-per-class", type=int, default=None, help="cap per class and language")
    p.add_argument(
        "--eval-max-per-class", type=int, default=None, help="cap for evaluation splits only"
    )
    p.add_argument(
        "--family-balance",
        action="store_true",
        help="robust preset: per language and class, cut each prompt family to the smallest "
        "one's count (better under style shift on the embedded model, but it flagged most "
        "MMLU questions harmful; see README)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--steering-lambda",
        type=float,
        default=1.0,
        help="steering strength lambda: alpha = lambda * (q75 of harmful - q25 of harmless "
        "projections on v) (METHOD: 1; choose it for your model with `babelgate sweep`)",
    )
    p.add_argument(
        "--threshold-k",
        type=_threshold_k,
        default="auto",
        help="per-language thresholds stored in the artifact: from k train examples per class "
        "(0: keep only the zero-shot threshold), 'all' (the whole train pool, each prompt "
        "family weighted equally) or 'auto' (all for the robust preset, 4 for paper; default)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    p.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16, float16)")
    p.add_argument(
        "--no-activation-cache",
        action="store_true",
        help="do not read or write the activation cache (<cache>/activations)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _threshold_k(text: str) -> int | str:
    """``--threshold-k``: a count, 'all' or 'auto'."""
    if text in ("all", "auto"):
        return text
    try:
        return int(text)
    except ValueError:
        msg = f"expected an integer, 'all' or 'auto', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def run(args: argparse.Namespace) -> int:
    options = CalibrationOptions(
        languages=[x for x in (args.languages or "").split(",") if x.strip()] or None,
        preset=args.preset,
        layer=args.layer,
        rank=args.rank,
        max_per_class=args.max_per_class,
        eval_max_per_class=args.eval_max_per_class,
        balance_families=args.family_balance,
        seed=args.seed,
        steering_lambda=args.steering_lambda,
        readout=args.readout,
        weight_decay=args.weight_decay,
        threshold_k=args.threshold_k,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    artifact, report = calibrate_artifact(
        args.out,
        options,
        model=args.model,
        data=args.data,
        backend=args.backend,
        dtype=args.dtype,
        activation_cache=not args.no_activation_cache,
        force=args.force,
    )
    print((artifact / REPORT_MD).read_text())
    if report is None:
        print(f"artifact: {artifact}")
        return 0
    print(f"artifact written to {artifact}")
    print(json.dumps({"layers": report["layers"], "wall_time_s": report["wall_time_s"]}))
    return 0
