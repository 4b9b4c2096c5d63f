"""The steering sweep behind ``babelgate sweep``: how well steering makes a model refuse, per
layer and steering strength.

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

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from babelgate.evaluation.portable import source_name
from babelgate.gate.artifact import read_manifest
from babelgate.gate.calibration import candidate_layers
from babelgate.gate.data import DataError, load_dataset, normalise_split, select, subsample
from babelgate.gate.directions import mean_difference, steering_alpha
from babelgate.gate.estimator import HarmfulnessGate
from babelgate.gate.hf.backend import TransformersBackend
from babelgate.gate.hf.reference import ReferenceRouter, SteeringParams
from babelgate.gate.languages import validate_language
from babelgate.gate.metrics import selectivity
from babelgate.gate.plot import png, pyplot
from babelgate.paths import data_dir
from babelgate.refusal.judge import RefusalMarkerJudge

SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
SWEEP_PNG = "sweep.png"


@dataclass
class SweepOptions:
    """What ``babelgate sweep`` exposes (its flags, parsed)."""

    out: Path
    model: str | None = None  # None: the embedded model
    artifact: Path | None = None  # v and alpha from this artifact (its layer only)
    data: str | Path | None = None  # None: PolyRefuse (``paths.data_dir()``)
    languages: Sequence[str] = ("en",)
    layers: list[int] | None = None  # None: five across the middle (``default_layers``)
    lambdas: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    n: int = 16  # swept prompts per class and language
    fit_n: int = 64  # train prompts per class and language for v
    split: str = "val"
    max_new_tokens: int = 32
    seed: int = 0
    dtype: str = "float32"
    force: bool = False
    progress: bool = True


def default_layers(num_layers: int) -> list[int]:
    """Five layers spread over the middle half of the network (where the paper's layers lie)."""
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
    lines += render_by_language(report)
    return "\n".join(lines)


def best_by_language(cells: Sequence[dict[str, Any]], languages: Sequence[str]) -> dict[str, Any]:
    """Per language, the cell with the highest selectivity in that language alone (its
    steered harmful refusal minus its ablated harmless refusal), ties to the smaller lambda, then
    the earlier layer: the per-language strength and layer the pooled choice averages over."""
    out: dict[str, Any] = {}
    for lang in languages:
        scored = [
            (c["harmful_refusal_by_language"][lang] - c["harmless_refusal_by_language"][lang], c)
            for c in cells
            if all(lang in c[k] for k in ("harmful_refusal_by_language",
                                          "harmless_refusal_by_language"))
        ]  # fmt: skip
        if not scored:
            continue
        sel, best = max(scored, key=lambda t: (t[0], -t[1]["lambda"], -t[1]["layer"]))
        out[lang] = {"layer": best["layer"], "lambda": best["lambda"], "selectivity": sel,
                     "harmful_refusal": best["harmful_refusal_by_language"][lang]}  # fmt: skip
    return out


def render_by_language(report: dict[str, Any]) -> list[str]:
    """Steered harmful refusal % per cell and language, and each language's best cell."""
    langs = [x for x in report["languages"] if x in report.get("best_by_language", {})]
    if not langs:
        return []
    b = report["baseline"]["harmful_refusal_by_language"]
    lines = ["", "Per language: harmful refusal % (steered), the unsteered model first.", "",
             "| layer | lambda | " + " | ".join(langs) + " |", "|---:|---:|" + "---:|" * len(langs),
             "| none | — | " + " | ".join(f"{b.get(x, float('nan')):.1f}" for x in langs) + " |"]
    for c in report["cells"]:
        by = c["harmful_refusal_by_language"]
        lines.append(f"| {c['layer']} | {c['lambda']:g} | "
                     + " | ".join(f"{by.get(x, float('nan')):.1f}" for x in langs) + " |")
    lines += ["", "Best per language (its own selectivity, harmful steered minus harmless "
              "ablated): " + "; ".join(
                  f"{x} layer {v['layer']}, lambda {v['lambda']:g} ({v['selectivity']:+.1f})"
                  for x, v in report["best_by_language"].items()) + "."]  # fmt: skip
    return lines


def render_heatmap(report: dict[str, Any]) -> bytes:
    """PNG: three layer x lambda heatmaps (harmful refusal, harmless refusal, selectivity)."""
    plt = pyplot()
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
    return png(fig)


def _draw(prompts, language: str, split: str, n: int, seed: int, what: str):
    """n harmful + n harmless prompts of one language and split, drawn reproducibly."""
    rows = select(prompts, language=language, split=split)
    n_harmful = sum(p.label for p in rows)
    if n_harmful == 0 or n_harmful == len(rows):
        raise DataError(
            f"{what}: language {language!r} has no {'harmful' if n_harmful == 0 else 'harmless'} "
            f"prompts in the {split} split; choose another --split or language"
        )
    return subsample(rows, n, seed)


def run_sweep(options: SweepOptions) -> dict[str, Any]:
    """Run the sweep and write sweep.json, sweep.md and sweep.png to ``options.out``; returns
    the report (``render_table(report)`` is what sweep.md holds)."""
    started = time.perf_counter()
    out = Path(options.out)
    existing = [name for name in (SWEEP_JSON, SWEEP_MD, SWEEP_PNG) if (out / name).exists()]
    if existing and not options.force:
        raise FileExistsError(f"{out} holds sweep results: choose another --out or pass --force")
    layers, lambdas = options.layers, list(options.lambdas)
    languages = [validate_language(x) for x in options.languages]
    split = normalise_split(options.split, "--split")
    if options.n < 1 or options.fit_n < 2 or options.max_new_tokens < 1:
        raise ValueError("--n and --max-new-tokens must be >= 1 and --fit-n >= 2")
    data = options.data or data_dir()
    if data is None:
        raise FileNotFoundError("no --data given and no PolyRefuse found ($BABELGATE_DATA)")
    prompts = load_dataset(data, languages=languages)
    swept = [
        p for lang in languages for p in _draw(prompts, lang, split, options.n, options.seed, data)
    ]
    harmful = [p for p in swept if p.label == 1]
    harmless = [p for p in swept if p.label == 0]

    backend = TransformersBackend(options.model, dtype=getattr(torch, options.dtype))
    progress = options.progress
    if options.artifact:
        directions = directions_from_artifact(Path(options.artifact), backend, layers)
    else:
        layers = layers or default_layers(backend.num_layers)
        fit = [
            p
            for lang in languages
            for p in _draw(prompts, lang, "train", options.fit_n, options.seed, data)
        ]
        directions = fitted_directions(fit, backend, layers, progress)

    grid = run_grid(
        backend,
        directions,
        lambdas,
        harmful,
        harmless,
        max_new_tokens=options.max_new_tokens,
        progress=progress,
    )
    best = max(grid["cells"], key=lambda c: (c["selectivity"], -c["lambda"]))
    report = {
        "model": backend.model_info.id,
        "model_fingerprint": backend.model_info.fingerprint,
        "data": source_name(data),
        "languages": languages,
        "split": split,
        "n_per_class": options.n,
        "seed": options.seed,
        "max_new_tokens": options.max_new_tokens,
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
        "best_by_language": best_by_language(grid["cells"], languages),
    }
    report["wall_time_s"] = round(time.perf_counter() - started, 1)
    table = render_table(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / SWEEP_MD).write_text(table + "\n")
    (out / SWEEP_PNG).write_bytes(render_heatmap(report))
    return report
