"""``babelgate sweep``: how well steering makes a model refuse, per layer and steering strength.

Runs in the CLI process (transformers reference routing; no vLLM needed). For a user's own model
it answers "which layer and which lambda?" by measurement: harmful prompts are steered
(h += lambda * alpha_1 * v at the layer, the routing's harmful branch) and harmless ones ablated
(h -= (h . v) v, its harmless branch), responses are judged by the multilingual refusal-marker
judge, and the table of harmful refusal %, harmless refusal % and selectivity (their difference)
is printed and written as JSON, Markdown and a PNG heatmap. The direction v and alpha_1 (the
paper's alpha at lambda = 1) come from an artifact or, per layer, from a pooled difference in
means of train prompts fitted on the fly. An unsteered baseline row is measured too.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gate.hf.embedded import MODEL_HELP

SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
SWEEP_PNG = "sweep.png"


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


def default_layers(num_layers: int) -> list[int]:
    """Five layers spread over the middle half of the network (where the paper's layers lie)."""
    from gate.calibration import candidate_layers

    middle = candidate_layers(num_layers)
    picks = np.linspace(0, len(middle) - 1, num=min(5, len(middle))).round().astype(int)
    return sorted({middle[i] for i in picks})


@dataclass(frozen=True)
class LayerDirection:
    """What steering at one layer needs: v, alpha at lambda = 1, and a linear score form."""

    layer: int
    direction: np.ndarray
    alpha_1: float
    u: np.ndarray
    c: float
    source: str


def directions_from_artifact(artifact: Path, backend: Any, layers: list[int] | None):
    """The artifact's v and alpha (re-scaled to lambda = 1) at its layer."""
    from gate.artifact import read_manifest
    from gate.estimator import HarmfulnessGate

    gate = HarmfulnessGate.load(artifact, expect_model=backend.model_info)
    if layers is not None and layers != [gate.layer]:
        raise ValueError(
            f"{artifact} holds a gate for layer {gate.layer} only: drop --layers, pass "
            f"--layers {gate.layer}, or omit --artifact to fit a direction per layer"
        )
    v = np.asarray(gate.direction, dtype=np.float64)
    tensors = str(read_manifest(Path(artifact))["tensors_sha256"])[:16]
    source = f"artifact {Path(artifact).name} (tensors {tensors})"
    if len(gate.layers) == 1:
        u, c = gate.linear_form()
    else:  # the reference reads one layer: report the projection on v (the sweep never routes)
        u, c = v, 0.0
        source += f"; it reads layers {'+'.join(map(str, gate.layers))}, scores shown are h.v"
    return [
        LayerDirection(
            layer=gate.layer,
            direction=v,
            alpha_1=float(gate.alpha) / float(gate.config.steering_lambda),
            u=np.asarray(u, dtype=np.float64).reshape(-1),
            c=float(c),
            source=source,
        )
    ]


def fitted_directions(fit_prompts, backend: Any, layers: list[int], progress: bool):
    """Per layer: v = pooled difference in means of the train prompts, alpha_1 from their
    projections (METHOD §2, §5); the score form is the projection on v."""
    from gate.directions import mean_difference, steering_alpha

    labels = np.array([p.label for p in fit_prompts])
    acts = backend.activations([p.text for p in fit_prompts], layers, progress=progress)
    n_harmful = int(labels.sum())
    out = []
    for j, layer in enumerate(layers):
        v = mean_difference(acts[:, j], labels)
        proj = acts[:, j].astype(np.float64) @ v
        out.append(
            LayerDirection(
                layer=layer,
                direction=v,
                alpha_1=steering_alpha(proj[labels == 1], proj[labels == 0], lam=1.0),
                u=v,
                c=0.0,
                source=(
                    f"pooled difference in means of {n_harmful} harmful + "
                    f"{len(labels) - n_harmful} harmless train prompts"
                ),
            )
        )
    return out


def _rate(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else 0.0


def _by_language(prompts, flags: Sequence[bool]) -> dict[str, float]:
    langs = sorted({p.language for p in prompts})
    return {
        lang: 100.0 * _rate([f for p, f in zip(prompts, flags, strict=True) if p.language == lang])
        for lang in langs
    }


def run_grid(
    backend: Any,
    directions: list[LayerDirection],
    lambdas: list[float],
    harmful,
    harmless,
    *,
    max_new_tokens: int,
    progress: bool,
) -> dict[str, Any]:
    """Generate and judge every cell; return the baseline, the cells and every output."""
    from tqdm.auto import tqdm

    from gate.hf.reference import ReferenceRouter, SteeringParams
    from gate.metrics import selectivity
    from gate.refusal_judge import RefusalMarkerJudge

    judge = RefusalMarkerJudge()
    total = (len(harmful) + len(harmless)) * (1 + len(directions)) + len(harmful) * len(
        directions
    ) * (len(lambdas) - 1)
    bar = tqdm(total=total, desc="sweep", unit="answer", disable=not progress)

    def answer(router, prompts, policy: str) -> list[dict[str, Any]]:
        rows = []
        for p in prompts:
            result = router.generate(
                [p.text], language=p.language, policy=policy, max_new_tokens=max_new_tokens
            )[0]
            rows.append({"text": result.text, "score": result.score})
            bar.update(1)
        flags = judge.judge([r["text"] for r in rows], [p.language for p in prompts])
        for row, flag in zip(rows, flags, strict=True):
            row["refusal"] = flag
        return rows

    def summary(harmful_rows, harmless_rows) -> dict[str, Any]:
        hf = [r["refusal"] for r in harmful_rows]
        hl = [r["refusal"] for r in harmless_rows]
        return {
            "harmful_refusal": 100.0 * _rate(hf),
            "harmless_refusal": 100.0 * _rate(hl),
            "selectivity": selectivity(_rate(hf), _rate(hl)),
            "harmful_refusal_by_language": _by_language(harmful, hf),
            "harmless_refusal_by_language": _by_language(harmless, hl),
        }

    def router_for(d: LayerDirection, lam: float) -> ReferenceRouter:
        params = SteeringParams(d.layer, d.direction, lam * d.alpha_1, d.u, d.c)
        return ReferenceRouter(backend.model, backend.tokenizer, params)

    first = directions[0]
    base_router = router_for(first, 1.0)
    base_harmful = answer(base_router, harmful, "none")
    base_harmless = answer(base_router, harmless, "none")
    baseline = {
        **summary(base_harmful, base_harmless),
        "harmful_outputs": base_harmful,
        "harmless_outputs": base_harmless,
    }
    cells = []
    for d in directions:
        ablated = answer(router_for(d, 1.0), harmless, "always-ablate")
        for lam in lambdas:
            steered = answer(router_for(d, lam), harmful, "always-steer")
            cells.append(
                {
                    "layer": d.layer,
                    "lambda": lam,
                    "alpha": lam * d.alpha_1,
                    **summary(steered, ablated),
                    "harmful_outputs": steered,
                    "harmless_outputs": ablated,
                }
            )
    bar.close()
    return {"baseline": baseline, "cells": cells}


def render_table(report: dict[str, Any]) -> str:
    """The sweep as a Markdown table, baseline first."""
    lines = [
        f"babelgate sweep — {report['model']} — languages {', '.join(report['languages'])}, "
        f"{report['n_per_class']} prompts per class and language ({report['split']} split), "
        f"{report['max_new_tokens']} new tokens, judge {report['judge']}",
        "",
        "| layer | lambda | alpha | harmful refusal % (steered) | "
        "harmless refusal % (ablated) | selectivity |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    b = report["baseline"]
    lines.append(
        f"| none | — | — | {b['harmful_refusal']:.1f} | {b['harmless_refusal']:.1f} | "
        f"{b['selectivity']:+.1f} |"
    )
    for c in report["cells"]:
        lines.append(
            f"| {c['layer']} | {c['lambda']:g} | {c['alpha']:.2f} | {c['harmful_refusal']:.1f} "
            f"| {c['harmless_refusal']:.1f} | {c['selectivity']:+.1f} |"
        )
    best = report["best"]
    lines += [
        "",
        f"Best selectivity: layer {best['layer']}, lambda {best['lambda']:g} "
        f"({best['selectivity']:+.1f} points; baseline {b['selectivity']:+.1f}). "
        "Row 'none' is the unsteered model; harmless prompts are ablated (independent of lambda).",
        f"Direction: {report['direction_source']}.",
    ]
    return "\n".join(lines)


def render_heatmap(report: dict[str, Any]) -> bytes:
    """PNG: three layer x lambda heatmaps (harmful refusal, harmless refusal, selectivity)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({c["layer"] for c in report["cells"]})
    lambdas = sorted({c["lambda"] for c in report["cells"]})
    grids = {key: np.full((len(layers), len(lambdas)), np.nan) for key in
             ("harmful_refusal", "harmless_refusal", "selectivity")}
    for c in report["cells"]:
        i, j = layers.index(c["layer"]), lambdas.index(c["lambda"])
        for key, grid in grids.items():
            grid[i, j] = c[key]
    titles = {
        "harmful_refusal": "harmful refusal % (steered)",
        "harmless_refusal": "harmless refusal % (ablated)",
        "selectivity": "selectivity (points)",
    }
    fig, axes = plt.subplots(
        1, 3, figsize=(4 + 1.2 * 3 * len(lambdas), 1.5 + 0.5 * len(layers)), dpi=110
    )
    for ax, (key, grid) in zip(axes, grids.items(), strict=True):
        vmin, cmap = (-100, "RdBu") if key == "selectivity" else (0, "Reds")
        im = ax.imshow(grid, vmin=vmin, vmax=100, cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(lambdas)), [f"{x:g}" for x in lambdas])
        ax.set_yticks(range(len(layers)), [str(x) for x in layers])
        ax.set_xlabel("lambda")
        ax.set_ylabel("layer")
        ax.set_title(f"{titles[key]}\nbaseline {report['baseline'][key]:.1f}", fontsize=9)
        for i in range(len(layers)):
            for j in range(len(lambdas)):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"babelgate sweep — {report['model']}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _draw(prompts, language: str, split: str, n: int, seed: int, what: str):
    """n harmful + n harmless prompts of one language and split, drawn reproducibly."""
    from gate.data import DataError, select, subsample

    rows = select(prompts, language=language, split=split)
    n_harmful = sum(p.label for p in rows)
    if n_harmful == 0 or n_harmful == len(rows):
        raise DataError(
            f"{what}: language {language!r} has no {'harmful' if n_harmful == 0 else 'harmless'} "
            f"prompts in the {split} split; choose another --split or language"
        )
    return subsample(rows, n, seed)


def run(args: argparse.Namespace) -> int:
    from gate.calibration import default_data_dir
    from gate.data import load_dataset, normalise_split
    from gate.hf.backend import TransformersBackend
    from gate.languages import validate_language

    started = time.perf_counter()
    out = Path(args.out)
    existing = [name for name in (SWEEP_JSON, SWEEP_MD, SWEEP_PNG) if (out / name).exists()]
    if existing and not args.force:
        raise FileExistsError(f"{out} holds sweep results: choose another --out or pass --force")
    layers = parse_list(args.layers, int, "layers")
    lambdas = parse_list(args.lambdas, float, "lambdas")
    languages = [validate_language(x) for x in args.languages.split(",") if x.strip()]
    split = normalise_split(args.split, "--split")
    if args.n < 1 or args.fit_n < 2 or args.max_new_tokens < 1:
        raise ValueError("--n and --max-new-tokens must be >= 1 and --fit-n >= 2")
    data = args.data or default_data_dir()
    if data is None:
        raise FileNotFoundError("no --data given and no PolyRefuse found ($BABELGATE_DATA)")
    prompts = load_dataset(data, languages=languages)
    swept = [p for lang in languages for p in _draw(prompts, lang, split, args.n, args.seed, data)]
    harmful = [p for p in swept if p.label == 1]
    harmless = [p for p in swept if p.label == 0]

    import torch

    backend = TransformersBackend(args.model, dtype=getattr(torch, args.dtype))
    progress = not args.no_progress
    if args.artifact:
        directions = directions_from_artifact(Path(args.artifact), backend, layers)
    else:
        layers = layers or default_layers(backend.num_layers)
        fit = [
            p
            for lang in languages
            for p in _draw(prompts, lang, "train", args.fit_n, args.seed, data)
        ]
        directions = fitted_directions(fit, backend, layers, progress)

    grid = run_grid(
        backend,
        directions,
        lambdas,
        harmful,
        harmless,
        max_new_tokens=args.max_new_tokens,
        progress=progress,
    )
    best = max(grid["cells"], key=lambda c: (c["selectivity"], -c["lambda"]))
    report = {
        "model": backend.model_info.id,
        "model_fingerprint": backend.model_info.fingerprint,
        "data": str(data),
        "languages": languages,
        "split": split,
        "n_per_class": args.n,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "judge": "refusal-markers",
        "direction_source": directions[0].source,
        "layers": [d.layer for d in directions],
        "lambdas": lambdas,
        "alpha_at_lambda_1": {str(d.layer): d.alpha_1 for d in directions},
        "prompts": {
            "harmful": [{"text": p.text, "language": p.language} for p in harmful],
            "harmless": [{"text": p.text, "language": p.language} for p in harmless],
        },
        **grid,
        "best": {k: best[k] for k in ("layer", "lambda", "alpha", "selectivity")},
    }
    report["wall_time_s"] = round(time.perf_counter() - started, 1)
    table = render_table(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / SWEEP_MD).write_text(table + "\n")
    (out / SWEEP_PNG).write_bytes(render_heatmap(report))
    print(table)
    print(f"written: {out / SWEEP_JSON}, {out / SWEEP_MD}, {out / SWEEP_PNG}")
    return 0
