"""Choosing the gate's configuration by held-out-*style* validation (the ``robust`` preset).

Runs in the CLI process (calibration, the shift evaluation). The paper picks one layer by
validation AUROC on the training distribution; on PolyRefuse that distribution is one prompt
style (imperative benchmark instructions vs Alpaca tasks), so the choice rewards a readout of
phrasing. Here every candidate (layers read, weight decay) is scored by leave-one-family-out:
fit on the training rows of all prompt families but one, measure AUROC on the held-out family,
per training language, and average. The winner is the configuration that generalises to a way
of asking it never saw; the final gate is then fitted on all families.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from babelgate.gate.estimator import GateConfig, HarmfulnessGate
from babelgate.gate.metrics import auroc

# Defaults of the robust grid: every other middle layer, alone or with one earlier layer read
# 4 or 8 blocks before it, and three strengths of AdamW's decoupled weight decay.
SPANS: tuple[int, ...] = (0, 4, 8)
WEIGHT_DECAYS: tuple[float, ...] = (0.01, 0.1, 1.0)

# {family: {language: (activations (n, num_layers, d), labels (n,))}}
FamilyData = Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Candidate:
    """One configuration of the grid: the layers read (ascending) and the weight decay."""

    layers: tuple[int, ...]
    weight_decay: float
    readout: str = "low-rank"  # gate.estimator.READOUTS

    def config(self, rank: int, seed: int, steering_lambda: float = 1.0) -> GateConfig:
        return GateConfig(
            layer=self.layers[-1],
            rank=rank,
            weight_decay=self.weight_decay,
            seed=seed,
            steering_lambda=steering_lambda,
            feature_layers=self.layers if len(self.layers) > 1 else (),
            readout=self.readout,
        )

    def describe(self) -> str:
        layers = "+".join(str(x) for x in self.layers)
        full = ", full readout" if self.readout == "full" else ""
        return f"layers {layers}, weight decay {self.weight_decay:g}{full}"


def candidates(
    middle: Sequence[int],
    *,
    spans: Sequence[int] = SPANS,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    stride: int = 2,
    readout: str = "low-rank",
) -> list[Candidate]:
    """The grid over the middle layers (every ``stride``-th), spans and weight decays, all
    with the given ``readout``."""
    out = []
    for layer in list(middle)[::stride]:
        for span in spans:
            if span and layer - span < 0:
                continue
            layers = (layer - span, layer) if span else (layer,)
            out.extend(Candidate(layers, wd, readout) for wd in weight_decays)
    return out


def fit_on(
    candidate: Candidate,
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    rank: int,
    seed: int,
    steering_lambda: float = 1.0,
) -> HarmfulnessGate:
    """Fit ``candidate`` on ``{language: (all-layer activations, labels)}``."""
    gate = HarmfulnessGate(candidate.config(min(rank, len(data)), seed, steering_lambda))
    picked = list(candidate.layers)
    return gate.fit({lang: (gate.inputs(a[:, picked]), y) for lang, (a, y) in data.items()})


def merge(families: FamilyData, keep: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pool the named families per language (languages needing both classes once pooled)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for fam in keep:
        for lang, (a, y) in families[fam].items():
            if lang in out:
                a = np.concatenate([out[lang][0], a])
                y = np.concatenate([out[lang][1], y])
            out[lang] = (a, y)
    return {lang: (a, y) for lang, (a, y) in out.items() if 0 < y.sum() < len(y)}


def held_out_style_auroc(
    candidate: Candidate, families: FamilyData, *, rank: int, seed: int
) -> dict[str, float]:
    """Per held-out family: mean over its languages of the AUROC of a gate fitted on the
    other families (languages whose held-out rows lack a class are skipped)."""
    out: dict[str, float] = {}
    for held in families:
        train = merge(families, [f for f in families if f != held])
        if not train:
            continue
        gate = fit_on(candidate, train, rank=rank, seed=seed)
        values = [
            auroc(gate.score_all_layers(a), y)
            for a, y in families[held].values()
            if 0 < y.sum() < len(y)
        ]
        if values:
            out[held] = float(np.mean(values))
    return out


def select_robust(
    grid: Sequence[Candidate], families: FamilyData, *, rank: int, seed: int
) -> tuple[Candidate, dict]:
    """The candidate with the best mean held-out-family AUROC (ties: fewer layers read, then
    the earlier layer, then less weight decay), with the whole table for the report."""
    if len(families) < 2:
        raise ValueError(
            "the robust preset chooses its configuration on a held-out prompt family, so it "
            f"needs training data of at least two families (styles); got {sorted(families)}. "
            "Add a dataset of another style (--data can be given several times) or use "
            "--preset paper"
        )
    table = []
    for cand in grid:
        per = held_out_style_auroc(cand, families, rank=rank, seed=seed)
        table.append((cand, per, float(np.mean(list(per.values()))) if per else 0.0))
    best = max(
        table,
        key=lambda t: (round(t[2], 4), -len(t[0].layers), -t[0].layers[-1], -t[0].weight_decay),
    )
    return best[0], {
        "reason": (
            f"{best[0].describe()}: best mean held-out-family AUROC {best[2]:.4f} "
            f"(leave-one-family-out over {', '.join(sorted(families))}) among {len(grid)} "
            "configurations; no target-language data was used to choose it"
        ),
        "grid": [
            {"layers": list(c.layers), "weight_decay": c.weight_decay, "held_out": per, "mean": m}
            for c, per, m in table
        ],
    }
