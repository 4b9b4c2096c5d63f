"""The one k-shot sampler: which k labelled examples per class a threshold is recalibrated on.

Runs in any process that draws few-shot examples: calibration (stored thresholds, the report's
k-shot F1), ``babelgate recalibrate --k``, the evaluation (routing thresholds, the k-shot curve,
the baselines' fits) and the style-shift evaluation. One seeding scheme and one draw rule, so
the same seed, language and k give the same examples wherever they are drawn.
"""

from __future__ import annotations

import zlib

import numpy as np
from numpy.typing import ArrayLike


def kshot_rng(seed: int, *stream: int | str) -> np.random.Generator:
    """A generator for one stream of draws: ``seed`` and what the draws are for (a language
    code, k, a fold...). Strings enter by CRC-32, so streams do not depend on list order."""
    key = [int(seed)] + [zlib.crc32(s.encode()) if isinstance(s, str) else int(s) for s in stream]
    return np.random.default_rng(key)


def kshot_indices(
    labels: ArrayLike,
    k: int,
    rng: np.random.Generator,
    *,
    usable: ArrayLike | None = None,
    allow_fewer: bool = False,
) -> np.ndarray:
    """Indices of k harmful (label 1) then k harmless (label 0) rows, drawn without replacement.

    ``usable``: boolean mask of rows that may be drawn (e.g. not a test text). A class with fewer
    than k usable rows raises ``ValueError``, or with ``allow_fewer`` gives all of its rows.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y = np.asarray(labels)
    ok = np.ones(len(y), dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    picks = []
    for label in (1, 0):
        pool = np.flatnonzero(ok & (y == label))
        if pool.size < k and not allow_fewer:
            kind = "harmful" if label else "harmless"
            raise ValueError(f"only {pool.size} usable {kind} examples for k={k}")
        picks.append(rng.choice(pool, min(k, pool.size), replace=False))
    return np.concatenate(picks).astype(np.int64)


def kshot_draws(
    labels: ArrayLike, k: int, draws: int, seed: int, *stream: int | str
) -> list[np.ndarray]:
    """``draws`` independent k-shot draws (``kshot_indices``) from the stream ``(seed, *stream,
    k)``; empty when a class has fewer than k rows."""
    y = np.asarray(labels)
    if min(int((y == 1).sum()), int((y == 0).sum())) < k:
        return []
    rng = kshot_rng(seed, *stream, k)
    return [kshot_indices(y, k, rng) for _ in range(draws)]
