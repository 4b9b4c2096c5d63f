"""``babelgate sweep``: refusal under steering over a layer x lambda grid (flags only).

Runs in the CLI process. The experiment is ``evaluation.sweep``; this module parses flags and
prints its table. Heavy imports happen inside ``run`` so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from babelgate.evaluation.sweep import (
    SWEEP_JSON,
    SWEEP_MD,
    SWEEP_PNG,
    SweepOptions,
    render_table,
    run_sweep,
)
from babelgate.gate.hf.embedded import MODEL_HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="measure refusal under steering over a layer x lambda grid",
        description=(
            "Steers harmful prompts and ablates harmless ones with the transformers reference "
            "routing for every layer x lambda, judges refusals with the multilingual marker "
            "judge, prints the table (harmful refusal %%, harmless refusal %%, selectivity) and "
            "writes sweep.json, sweep.md and sweep.png to OUT."
        ),
    )
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument(
        "--artifact",
        default=None,
        help="take v and alpha from this gate artifact (its layer only); default: fit a pooled "
        "difference-in-means direction per layer from --data's train split",
    )
    p.add_argument(
        "--data",
        default=None,
        help="labelled prompts: PolyRefuse folder, JSON/JSONL/CSV file(s) or hf:<name> "
        "(default: $BABELGATE_DATA or ../shared/data/polyrefuse)",
    )
    p.add_argument("--languages", default="en", help="comma-separated prompt languages (en)")
    p.add_argument(
        "--layers", default=None, help="comma-separated layers (default: 5 across the middle)"
    )
    p.add_argument("--lambdas", default="1,2,4", help="comma-separated lambdas (default 1,2,4)")
    p.add_argument("--n", type=int, default=16, help="prompts per class and language (16)")
    p.add_argument(
        "--fit-n", type=int, default=64, help="train prompts per class and language for v (64)"
    )
    p.add_argument(
        "--split", default="val", help="split the swept prompts come from (val; test, train)"
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens per answer (32)")
    p.add_argument("--out", required=True, help="directory for sweep.json/.md/.png")
    p.add_argument("--seed", type=int, default=0, help="which prompts are drawn")
    p.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16, float16)")
    p.add_argument("--force", action="store_true", help="overwrite results in an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_list(text: str | None, kind: type, what: str) -> list[Any] | None:
    """``"8,14,20"`` -> ``[8, 14, 20]``; None stays None; a bad item names the option."""
    if text is None:
        return None
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"--{what}: {text!r} is not a comma-separated list of numbers") from exc
    if not values:
        raise ValueError(f"--{what} is empty")
    return values


def run(args: argparse.Namespace) -> int:
    options = SweepOptions(
        out=Path(args.out),
        model=args.model,
        artifact=Path(args.artifact) if args.artifact else None,
        data=args.data,
        languages=[x for x in args.languages.split(",") if x.strip()],
        layers=parse_list(args.layers, int, "layers"),
        lambdas=parse_list(args.lambdas, float, "lambdas"),
        n=args.n,
        fit_n=args.fit_n,
        split=args.split,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        dtype=args.dtype,
        force=args.force,
        progress=not args.no_progress,
    )
    report = run_sweep(options)
    out = options.out
    print(render_table(report))
    print(f"written: {out / SWEEP_JSON}, {out / SWEEP_MD}, {out / SWEEP_PNG}")
    return 0
