"""The per-language threshold rule (METHOD §4): class-balanced F1 over midpoint candidates.

Runs in any process (calibration CLI, API server admin endpoints, vLLM worker hook). This is the
heart of the method: the high-resource readout stays fixed and only this threshold is re-set per
language from a handful of labelled examples, so it must behave sensibly down to one example per
class, with tied and non-separable scores.
"""

from __future__ import annotations

import numpy as np

EDGE_MARGIN = 1e-6
"""Offset of the two outer candidates below the minimum and above the maximum score."""


def _validated(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores float64, labels bool) after the checks every threshold entry point needs."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.size == 0:
        raise ValueError("no scores given: need at least one harmful and one harmless example")
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels: give one label per score")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity: check the activations fed to the gate")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (harmless) or 1 (harmful)")
    y = y.astype(bool)
    if y.all() or not y.any():
        present = "harmful" if y.any() else "harmless"
        raise ValueError(
            f"only {present} examples given: a threshold needs at least one harmful and one "
            "harmless example"
        )
    return s, y


def _class_cells(y: np.ndarray, groups: object | None) -> list[tuple[np.ndarray, float]]:
    """(members, weight of each) per class, or per class within each group: 0.5 / n of its
    class, or with ``groups`` 0.5 / (n_groups * n of its class in its group), so every group
    (prompt family) counts as much as every other and both classes count equally inside each.
    Counts times one weight per cell, so without groups the arithmetic is METHOD §4's exactly
    (ties between candidates stay exact ties)."""
    if groups is None:
        return [(y, 0.5 / y.sum()), (~y, 0.5 / (~y).sum())]
    g = np.asarray(groups, dtype=object).reshape(-1)
    if g.shape != y.shape:
        raise ValueError(f"{y.size} labels but {g.size} groups: give one group per example")
    names = sorted(set(g.tolist()), key=str)
    lacking = [str(x) for x in names if y[g == x].all() or not y[g == x].any()]
    if lacking:
        raise ValueError(
            f"group(s) {lacking} hold only one class: every group needs a harmful and a "
            "harmless example"
        )
    cells = []
    for name in names:
        for members in ((g == name) & y, (g == name) & ~y):
            cells.append((members, 0.5 / (len(names) * members.sum())))
    return cells


def _balanced_f1_many(
    s: np.ndarray, y: np.ndarray, taus: np.ndarray, groups: object | None = None
) -> np.ndarray:
    """Class-balanced F1 of the rule ``s >= tau`` for every tau in ``taus`` (weights from
    ``_class_cells``)."""
    fires = s[None, :] >= taus[:, None]  # (n_taus, n)
    tp = fn = fp = np.zeros(len(taus))
    for members, w in _class_cells(y, groups):
        hits = (fires & members).sum(axis=1)
        if members[y].any():  # a harmful cell
            tp = tp + w * hits
            fn = fn + w * (members.sum() - hits)
        else:
            fp = fp + w * hits
    denom = 2.0 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * tp / denom, 0.0)


def balanced_f1(scores: object, labels: object, tau: float) -> float:
    """Class-balanced F1 of calling an example harmful iff its score is >= ``tau``.

    Each harmful example weighs 0.5 / n_harmful (a TP if it fires, else an FN) and each harmless
    one 0.5 / n_harmless (an FP if it fires), so both classes count equally however unbalanced
    the k-shot sample is. F1 = 2TP / (2TP + FP + FN), 0 when that denominator is 0.
    """
    s, y = _validated(scores, labels)
    return float(_balanced_f1_many(s, y, np.array([float(tau)]))[0])


def threshold_candidates(scores: object) -> np.ndarray:
    """The candidate thresholds, ascending: the midpoints between consecutive sorted unique
    scores, plus min - 1e-6 (everything fires) and max + 1e-6 (nothing fires)."""
    u = np.unique(np.asarray(scores, dtype=np.float64).reshape(-1))
    mids = (u[:-1] + u[1:]) / 2.0
    return np.concatenate([[u[0] - EDGE_MARGIN], mids, [u[-1] + EDGE_MARGIN]])


def balanced_f1_threshold(scores: object, labels: object, groups: object | None = None) -> float:
    """The threshold with the best class-balanced F1 among the candidates; ties go to the lowest.

    ``scores`` are gate logits, ``labels`` 1 = harmful, 0 = harmless; at least one of each.
    Preferring the lowest threshold on ties errs towards flagging: with one example per class
    and inverted scores the rule keeps everything harmful (F1 2/3) rather than nothing (F1 0).

    ``groups`` (one name per example, e.g. the prompt family) weighs every group equally, each
    with both classes equal inside it (see ``_class_cells``). Without it, a pool of 460
    benchmark instructions and 48 questions per class sets the threshold for instructions
    alone, where benign prompts (Alpaca tasks) score far lower than benign questions do. With
    a single group it is exactly METHOD.md §4's rule.
    """
    s, y = _validated(scores, labels)
    taus = threshold_candidates(s)
    f1 = _balanced_f1_many(s, y, taus, groups)
    return float(taus[int(np.argmax(f1))])


def traffic_threshold(
    target: object, reference: object, reference_threshold: float, quantile: float = 0.25
) -> float:
    """A threshold for a language without labels, from unlabelled traffic of it.

    The gate's scores of one language sit shifted against another's (a benign Swahili prompt
    scores far higher than a benign English one), so the zero-shot threshold of the training
    languages fits neither. This moves a reference language's trusted ``reference_threshold`` by
    how far the target language's unlabelled scores sit from the reference's unlabelled scores,
    measured at a low ``quantile`` of each: traffic is mostly benign, and a low quantile stays in
    the benign bulk even when a minority of requests are harmful.
    """
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    r = np.asarray(reference, dtype=np.float64).reshape(-1)
    if t.size == 0 or r.size == 0:
        raise ValueError("traffic thresholds need scores of both the target and the reference")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(r))):
        raise ValueError("scores contain NaN or infinity")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    shift = np.quantile(t, quantile) - np.quantile(r, quantile)
    return float(reference_threshold + shift)


def harmless_below(harmful_scores: object, threshold: float, max_share: float = 0.02) -> float:
    """The abstain band's lower edge: a score below it is confidently harmless.

    The largest value such that at most ``max_share`` of the language's harmful calibration
    scores lie strictly below it (the ``floor(max_share * n)``-th smallest, 0-based), never above
    ``threshold``. Between it and the threshold a verdict is unsure and nothing is done: ablating
    the harm direction there is what removed the model's own refusals on held-out traffic.
    """
    s = np.sort(np.asarray(harmful_scores, dtype=np.float64).reshape(-1))
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("need at least one finite harmful score")
    if not 0.0 <= max_share < 1.0:
        raise ValueError(f"max_share must be in [0, 1), got {max_share}")
    return float(min(s[int(np.floor(max_share * s.size))], threshold))
