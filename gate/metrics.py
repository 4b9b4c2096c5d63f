"""Evaluation metrics: AUROC (separation), plain binary F1 (the gate's decisions), selectivity,
and the 95 % intervals every reported rate carries (Wilson for a proportion, a bootstrap over
prompts for AUROC).

Runs in any process (calibration, benchmarks, reports). Pure numpy so the core stays free of
scikit-learn; ``auroc`` matches ``sklearn.metrics.roc_auc_score`` including ties.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def _binary_labels(labels: object, n: int) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if y.size != n:
        raise ValueError(f"{n} scores/predictions but {y.size} labels: give one label each")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (harmless) or 1 (harmful)")
    return y.astype(bool)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
    ends = np.concatenate([starts[1:], [xs.size]])  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(scores: object, labels: object) -> float:
    """Area under the ROC curve: P(harmful score > harmless score), ties counted 0.5.

    Computed as the Mann–Whitney U statistic from average ranks (O(n log n)).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary_labels(labels, s.size)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both harmful (1) and harmless (0) examples")
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def recall_at_fpr(scores: object, labels: object, max_fpr: float) -> float:
    """The highest recall of any threshold (flag ``score >= t``) whose false-positive rate is at
    most ``max_fpr``: a point of the ROC curve, not a threshold anyone could have set beforehand
    (it is chosen on the rows it is measured on), so it bounds what thresholds can buy."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary_labels(labels, s.size)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    if not y.any() or y.all():
        raise ValueError("recall at a false-positive rate needs harmful (1) and harmless (0) rows")
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    harmful, harmless = np.sort(s[y]), np.sort(s[~y])
    # Flagging at most floor(max_fpr * n) harmless rows: the threshold just above the harmless
    # score ranked one past them (or anything at all, when every harmless row may be flagged).
    allowed = int(np.floor(max_fpr * harmless.size + 1e-9))
    if allowed >= harmless.size:
        return 1.0
    bar = harmless[harmless.size - 1 - allowed]  # must flag strictly above this score
    return float((harmful > bar).mean())


def f1_score(predictions: object, labels: object) -> float:
    """Plain binary F1 with harmful (1) as the positive class; 0 when there is nothing to score
    (no harmful labels and no harmful predictions)."""
    p = np.asarray(predictions).reshape(-1)
    if not np.all((p == 0) | (p == 1)):
        raise ValueError("predictions must be 0/1 or booleans")
    p = p.astype(bool)
    y = _binary_labels(labels, p.size)
    tp = int((p & y).sum())
    fp = int((p & ~y).sum())
    fn = int((~p & y).sum())
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def selectivity(harmful_refusal_rate: float, harmless_refusal_rate: float) -> float:
    """Selectivity delta in percentage points: harmful refusal % minus harmless refusal %.

    Inputs are fractions in [0, 1] (e.g. 0.879 and 0.011 give 86.8).
    """
    for name, rate in (("harmful_refusal_rate", harmful_refusal_rate),
                       ("harmless_refusal_rate", harmless_refusal_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {rate!r}")
    return 100.0 * (float(harmful_refusal_rate) - float(harmless_refusal_rate))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95 % by default).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes,
    which matters for the small cells (24-40 prompts) the reports have. (nan, nan) when n is 0.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_auroc_interval(
    scores: object, labels: object, *, draws: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``auroc``: prompts resampled with replacement within
    each class (so every draw has both), ``draws`` times with a seeded generator."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary_labels(labels, s.size)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUROC needs both harmful (1) and harmless (0) examples")
    rng = np.random.default_rng(seed)
    both = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    values = [
        auroc(np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)]), both)
        for _ in range(draws)
    ]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
