"""Harmfulness directions (METHOD §2), the low-rank SVD basis (§3) and the steering strength (§5).

Runs in any process that fits a gate (calibration CLI, notebooks). Everything is computed in
float64 for stable differences of means; the estimator casts to float32 for storage.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def mean_difference(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit vector along mean(harmful) - mean(harmless) of ``acts`` (n, d); labels 1 = harmful."""
    x = np.asarray(acts, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"need activations (n, d) and n labels, got {x.shape} and {y.shape}")
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        raise ValueError("a difference in means needs both harmful (1) and harmless (0) examples")
    diff = x[pos].mean(axis=0) - x[neg].mean(axis=0)
    norm = float(np.linalg.norm(diff))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(
            "harmful and harmless activations have the same mean (or are not finite): "
            "no direction to extract; check the labels and the layer"
        )
    return diff / norm


def pooled_direction(train: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The steering direction v: one difference in means over all languages' rows stacked."""
    if not train:
        raise ValueError("no training languages given")
    acts = np.concatenate([np.asarray(a, dtype=np.float64) for a, _ in train.values()])
    labels = np.concatenate([np.asarray(y).reshape(-1) for _, y in train.values()])
    return mean_difference(acts, labels)


def language_directions(
    train: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[list[str], np.ndarray]:
    """Per-language unit directions d_l, in the mapping's order: (languages, array (k, d))."""
    if not train:
        raise ValueError("no training languages given")
    langs = list(train)
    dirs = []
    for lang in langs:
        acts, labels = train[lang]
        try:
            dirs.append(mean_difference(acts, labels))
        except ValueError as err:
            raise ValueError(f"language {lang!r}: {err}") from err
    return langs, np.stack(dirs)


def svd_basis(directions: np.ndarray, rank: int) -> np.ndarray:
    """Top-``rank`` right singular vectors of the stacked unit directions, as columns (d, r).

    Each column's sign is fixed so that it has a positive dot product with the mean direction
    (or, if orthogonal to it, a positive largest-magnitude entry), making the basis deterministic
    across LAPACK builds.
    """
    dirs = np.asarray(directions, dtype=np.float64)
    if dirs.ndim != 2:
        raise ValueError(f"directions must be (k, d), got shape {dirs.shape}")
    k = min(dirs.shape)
    if not 1 <= rank <= k:
        raise ValueError(
            f"rank {rank} is not possible with {dirs.shape[0]} language directions of dimension "
            f"{dirs.shape[1]}: the rank must be between 1 and {k}; lower --rank or add languages"
        )
    _, _, vt = np.linalg.svd(dirs, full_matrices=False)
    basis = vt[:rank].T.copy()
    mean_dir = dirs.mean(axis=0)
    for j in range(rank):
        col = basis[:, j]
        dot = float(col @ mean_dir)
        ref = dot if abs(dot) > 1e-12 else float(col[np.argmax(np.abs(col))])
        if ref < 0:
            basis[:, j] = -col
    return basis


def steering_alpha(proj_harmful: np.ndarray, proj_harmless: np.ndarray, lam: float = 1.0) -> float:
    """Steering strength: lam * (q75 of harmful projections on v - q25 of harmless ones).

    Quantiles are numpy's default (linear interpolation), as in the reference code.
    """
    h = np.asarray(proj_harmful, dtype=np.float64).reshape(-1)
    b = np.asarray(proj_harmless, dtype=np.float64).reshape(-1)
    if h.size == 0 or b.size == 0:
        raise ValueError("steering_alpha needs harmful and harmless projections")
    return float(lam * (np.quantile(h, 0.75) - np.quantile(b, 0.25)))
