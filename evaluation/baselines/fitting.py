"""The baselines the paper beats, adapted as in its evaluation (METHOD §6): AdaSteer and CAST.

Runs in the process that fits them (``babelgate eval``); pure numpy. What is fitted here travels
to the vLLM worker as plain lists (``to_wire``) and is applied there by
``evaluation/baselines/interventions.py``, inside the same per-request hook as routing, so all
policies are compared in one serving mechanism.

Both are fitted per target language from a few labelled train prompts of that language (32 per
class in the paper) and from activations at *every* decoder layer:

- AdaSteer (Zhao et al., 2025), adapted: the refusal direction RD and the harmfulness direction
  HD are the same per-layer difference in means (harmful minus harmless, last prompt token,
  unnormalised). At the alpha layer and the beta layer, the last prompt token's position along
  that axis is measured in units of the distance between the two class means (0 at the harmless
  mean, 1 at the harmful mean, like the reference code's anchor normalisation); clamped linear
  maps turn it into alpha (pushes towards refusal: 0 at the harmless mean, ``alpha_max`` at the
  harmful mean) and beta (pushes away from refusal: ``-beta_max`` at the harmless mean, 0 at the
  harmful mean). The hook adds ``alpha * RD[l] + beta * HD[l]`` at every layer on generated
  tokens. The reference code fits the maps' constants by searching steering strengths that flip
  behaviour; we anchor them at the class means instead (no generation needed to fit), with
  ``alpha_max = beta_max = 0.1`` (inside the reference's clamp ranges).
- CAST (Lee et al., 2025), adapted: at each candidate condition layer, the condition vector is
  the first principal component of the paired, pair-centred prompt-mean activations (harmful_i,
  harmless_i); the score is ``cos(h_mean, tanh(P h_mean))`` with ``P = c c^T / c.c`` over the
  mean of the prompt's residuals. The layer, threshold and comparator (fire above or below) are
  chosen by F1 on the fitting examples, per language. When it fires, ``1.5 x`` a behaviour
  vector is added at a range of later layers at all positions; the behaviour vector is the
  per-layer difference in means (harmful minus harmless, last prompt token) divided by the
  number of behaviour layers, so the total added over the range is 1.5 x one layer's class gap
  (the reference adds 1.5 x unit PCA vectors of refusal/compliance *responses*, which need
  response data we do not have in every language).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from babelgate.gate.metrics import f1_score
from babelgate.gate.threshold import threshold_candidates

ADASTEER_ALPHA_MAX = 0.1
ADASTEER_BETA_MAX = 0.1
CAST_STRENGTH = 1.5
COMPARATORS = ("above", "below")


def _check_classes(
    acts: np.ndarray, labels: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(acts, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if x.ndim != 3:
        raise ValueError(f"{what}: activations must be (n, n_layers, d), got shape {x.shape}")
    if x.shape[0] != y.size:
        raise ValueError(f"{what}: {x.shape[0]} activations but {y.size} labels")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{what}: labels must be 0 (harmless) or 1 (harmful)")
    if not (y == 1).any() or not (y == 0).any():
        raise ValueError(f"{what}: needs harmful and harmless examples")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: activations contain NaN or infinity")
    return x, y.astype(bool)


def mean_difference(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-layer ``mean(harmful) - mean(harmless)``, unnormalised: (n_layers, d)."""
    x, y = _check_classes(acts, labels, "mean_difference")
    return x[y].mean(axis=0) - x[~y].mean(axis=0)


def separation(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-layer d' of the projections on the class-mean difference: gap of the class means
    over the pooled standard deviation (how well one direction separates the classes)."""
    x, y = _check_classes(acts, labels, "separation")
    diff = x[y].mean(axis=0) - x[~y].mean(axis=0)
    unit = diff / np.maximum(np.linalg.norm(diff, axis=1, keepdims=True), 1e-12)
    proj = np.einsum("nld,ld->nl", x, unit)
    pooled = np.sqrt(0.5 * (proj[y].var(axis=0) + proj[~y].var(axis=0)))
    gap = proj[y].mean(axis=0) - proj[~y].mean(axis=0)
    return gap / np.maximum(pooled, 1e-12)


def _best_in_window(values: np.ndarray, lo: float, hi: float) -> int:
    n = values.size
    start = min(max(round(lo * n), 0), n - 1)
    stop = min(max(round(hi * n), start + 1), n)
    return start + int(np.argmax(values[start:stop]))


@dataclass(frozen=True)
class AxisAnchor:
    """Position along one layer's class axis: ``(h . unit - offset) / span`` is 0 at the harmless
    mean and 1 at the harmful mean."""

    layer: int
    unit: np.ndarray
    offset: float
    span: float

    def position(self, h: np.ndarray) -> np.ndarray:
        return (np.asarray(h, dtype=np.float64) @ self.unit - self.offset) / self.span


def _anchor(x: np.ndarray, y: np.ndarray, layer: int) -> AxisAnchor:
    mu_pos, mu_neg = x[y, layer].mean(axis=0), x[~y, layer].mean(axis=0)
    diff = mu_pos - mu_neg
    span = float(np.linalg.norm(diff))
    if span <= 0:
        raise ValueError(f"layer {layer}: harmful and harmless means coincide")
    unit = diff / span
    return AxisAnchor(layer, unit, float(mu_neg @ unit), span)


@dataclass(frozen=True)
class AdaSteerParams:
    """Adapted AdaSteer for one language (see the module docstring)."""

    language: str
    directions: np.ndarray  # (n_layers, d): RD = HD per layer
    alpha_anchor: AxisAnchor
    beta_anchor: AxisAnchor
    alpha_max: float = ADASTEER_ALPHA_MAX
    beta_max: float = ADASTEER_BETA_MAX

    def coefficients(
        self, h_alpha: np.ndarray, h_beta: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) from last-prompt-token residuals at the alpha and beta layers."""
        xa = self.alpha_anchor.position(h_alpha)
        xb = self.beta_anchor.position(h_beta)
        alpha = np.clip(self.alpha_max * xa, 0.0, self.alpha_max)
        beta = np.clip(-self.beta_max * (1.0 - xb), -self.beta_max, 0.0)
        return alpha, beta

    def to_wire(self) -> dict[str, Any]:
        def anchor(a: AxisAnchor) -> dict[str, Any]:
            return {"layer": a.layer, "unit": a.unit.tolist(), "offset": a.offset, "span": a.span}

        return {
            "method": "adasteer",
            "language": self.language,
            "directions": np.asarray(self.directions, np.float32).tolist(),
            "alpha": anchor(self.alpha_anchor),
            "beta": anchor(self.beta_anchor),
            "alpha_max": self.alpha_max,
            "beta_max": self.beta_max,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "alpha_layer": self.alpha_anchor.layer,
            "beta_layer": self.beta_anchor.layer,
            "alpha_max": self.alpha_max,
            "beta_max": self.beta_max,
        }


def fit_adasteer(
    language: str,
    last_token_acts: np.ndarray,
    labels: np.ndarray,
    *,
    alpha_max: float = ADASTEER_ALPHA_MAX,
    beta_max: float = ADASTEER_BETA_MAX,
) -> AdaSteerParams:
    """Fit adapted AdaSteer from last-prompt-token residuals (n, n_layers, d) of one language.

    The alpha layer is the best-separating layer in the first third of the stack (20-35% depth,
    where the reference reads RD: layer 8 of 32), the beta layer the best in 35-50% (the
    reference reads HD at layer 13 of 32).
    """
    x, y = _check_classes(last_token_acts, labels, f"AdaSteer ({language})")
    sep = separation(x, y)
    alpha_layer = _best_in_window(sep, 0.2, 0.35)
    beta_layer = _best_in_window(sep, 0.35, 0.5)
    return AdaSteerParams(
        language=language,
        directions=x[y].mean(axis=0) - x[~y].mean(axis=0),
        alpha_anchor=_anchor(x, y, alpha_layer),
        beta_anchor=_anchor(x, y, beta_layer),
        alpha_max=alpha_max,
        beta_max=beta_max,
    )


def condition_vector(h_harmful: np.ndarray, h_harmless: np.ndarray) -> np.ndarray:
    """CAST's condition vector: first principal component of the pair-centred activations.

    Pairs are (harmful_i, harmless_i) for i < min(n_harmful, n_harmless); each pair is centred on
    its own mean, the 2m centred vectors are stacked, and the top right singular vector (unit
    norm) is returned. Its sign is irrelevant: the CAST score depends on ``c c^T`` only.
    """
    a = np.asarray(h_harmful, dtype=np.float64)
    b = np.asarray(h_harmless, dtype=np.float64)
    m = min(len(a), len(b))
    if m == 0:
        raise ValueError("CAST condition vector needs a harmful and a harmless example at least")
    a, b = a[:m], b[:m]
    centre = (a + b) / 2.0
    stacked = np.concatenate([a - centre, b - centre])
    _, _, vt = np.linalg.svd(stacked, full_matrices=False)
    return vt[0]


def cast_score(h_mean: np.ndarray, condition: np.ndarray) -> np.ndarray:
    """``cos(h, tanh(P h))`` with ``P = c c^T / (c . c)``, for one (d,) or many (n, d) means."""
    h = np.asarray(h_mean, dtype=np.float64)
    c = np.asarray(condition, dtype=np.float64)
    single = h.ndim == 1
    h2 = h[None, :] if single else h
    coef = (h2 @ c) / float(c @ c)
    t = np.tanh(coef[:, None] * c[None, :])
    denom = np.linalg.norm(h2, axis=1) * np.linalg.norm(t, axis=1)
    cos = np.where(denom > 0, np.sum(h2 * t, axis=1) / np.maximum(denom, 1e-300), 0.0)
    return cos[0] if single else cos


def fires(scores: np.ndarray, threshold: float, comparator: str) -> np.ndarray:
    """Where CAST's condition holds: ``score >= threshold`` ("above") or ``<=`` ("below")."""
    s = np.asarray(scores, dtype=np.float64)
    if comparator == "above":
        return s >= threshold
    if comparator == "below":
        return s <= threshold
    raise ValueError(f"comparator must be one of {COMPARATORS}, got {comparator!r}")


@dataclass(frozen=True)
class CastParams:
    """Adapted CAST for one language (see the module docstring)."""

    language: str
    condition_layer: int
    condition: np.ndarray  # (d,)
    threshold: float
    comparator: str
    train_f1: float
    behaviour_layers: tuple[int, ...]
    behaviour_vectors: np.ndarray  # (len(behaviour_layers), d), strength not applied
    strength: float = CAST_STRENGTH

    def score(self, h_mean: np.ndarray) -> np.ndarray:
        return cast_score(h_mean, self.condition)

    def fires(self, h_mean: np.ndarray) -> np.ndarray:
        return fires(self.score(h_mean), self.threshold, self.comparator)

    def to_wire(self) -> dict[str, Any]:
        return {
            "method": "cast",
            "language": self.language,
            "condition_layer": self.condition_layer,
            "condition": np.asarray(self.condition, np.float32).tolist(),
            "threshold": self.threshold,
            "comparator": self.comparator,
            "behaviour_layers": list(self.behaviour_layers),
            "behaviour_vectors": np.asarray(self.behaviour_vectors, np.float32).tolist(),
            "strength": self.strength,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "condition_layer": self.condition_layer,
            "threshold": self.threshold,
            "comparator": self.comparator,
            "train_f1": self.train_f1,
            "behaviour_layers": [self.behaviour_layers[0], self.behaviour_layers[-1]],
            "strength": self.strength,
        }


def behaviour_layer_range(num_layers: int) -> tuple[int, ...]:
    """CAST's behaviour layers: the third quarter of the stack (the reference steers layers
    15-23 of 32-layer models)."""
    start = num_layers // 2
    stop = max(start + 1, (3 * num_layers) // 4)
    return tuple(range(start, stop))


def condition_layer_candidates(num_layers: int) -> tuple[int, ...]:
    """Condition layers tried by the F1 search: every layer before the behaviour range, so the
    decision (taken when the prompt's last row reaches it) precedes every behaviour layer."""
    return tuple(range(0, behaviour_layer_range(num_layers)[0]))


def tune_condition(
    scores_by_layer: dict[int, np.ndarray], labels: np.ndarray
) -> tuple[int, float, str, float]:
    """(layer, threshold, comparator, F1) maximising plain F1 (harmful = positive) over the
    candidate thresholds (``gate.threshold.threshold_candidates``) of every layer and both
    comparators; ties keep the earliest layer, "above" before "below", the lowest threshold."""
    y = np.asarray(labels).reshape(-1).astype(int)
    best: tuple[float, int, float, str] | None = None
    for layer in sorted(scores_by_layer):
        s = np.asarray(scores_by_layer[layer], dtype=np.float64)
        for comparator in COMPARATORS:
            for tau in threshold_candidates(s):
                f1 = f1_score(fires(s, float(tau), comparator), y)
                if best is None or f1 > best[0]:
                    best = (f1, layer, float(tau), comparator)
    if best is None:
        raise ValueError("no condition layers to tune")
    f1, layer, tau, comparator = best
    return layer, tau, comparator, f1


def fit_cast(
    language: str,
    prompt_mean_acts: np.ndarray,
    last_token_acts: np.ndarray,
    labels: np.ndarray,
    *,
    condition_layers: Sequence[int] | None = None,
    strength: float = CAST_STRENGTH,
) -> CastParams:
    """Fit adapted CAST from prompt-mean and last-token residuals (n, n_layers, d) of a language."""
    xm, y = _check_classes(prompt_mean_acts, labels, f"CAST ({language})")
    xl, _ = _check_classes(last_token_acts, labels, f"CAST ({language})")
    n_layers = xm.shape[1]
    behaviour = behaviour_layer_range(n_layers)
    layers = list(condition_layers) if condition_layers else list(
        condition_layer_candidates(n_layers)
    )
    vectors: dict[int, np.ndarray] = {}
    scores: dict[int, np.ndarray] = {}
    for layer in layers:
        c = condition_vector(xm[y, layer], xm[~y, layer])
        vectors[layer] = c
        scores[layer] = cast_score(xm[:, layer], c)
    layer, tau, comparator, f1 = tune_condition(scores, y)
    diff = xl[y].mean(axis=0) - xl[~y].mean(axis=0)
    return CastParams(
        language=language,
        condition_layer=layer,
        condition=vectors[layer],
        threshold=tau,
        comparator=comparator,
        train_f1=float(f1),
        behaviour_layers=behaviour,
        behaviour_vectors=diff[list(behaviour)] / len(behaviour),
        strength=strength,
    )
