"""k-shot threshold draws and the k-shot curve of the gate (METHOD §4, §7).

Runs in the CLI process; pure numpy on gate scores already computed. The k examples per class
always come from the *train* pool, and any train row whose text also appears among the test rows
is excluded first, so a threshold is never fitted on a row it is then scored on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from babelgate.gate.kshot import kshot_indices, kshot_rng
from babelgate.gate.metrics import f1_score
from babelgate.gate.threshold import balanced_f1_threshold

DEFAULT_KS = (0, 1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ScoredPool:
    """Gate scores of one language's rows with their labels and texts."""

    scores: np.ndarray
    labels: np.ndarray
    texts: tuple[str, ...]

    def __post_init__(self) -> None:
        s = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        y = np.asarray(self.labels).reshape(-1).astype(int)
        if not (s.size == y.size == len(self.texts)):
            raise ValueError(f"{s.size} scores, {y.size} labels, {len(self.texts)} texts")
        object.__setattr__(self, "scores", s)
        object.__setattr__(self, "labels", y)


def not_test(texts: Sequence[str], test_texts: Sequence[str]) -> np.ndarray:
    """Boolean mask of the train texts that may be drawn: those that are not a test text."""
    banned = set(test_texts)
    return np.array([t not in banned for t in texts], dtype=bool)


def usable_train(train: ScoredPool, test_texts: Sequence[str]) -> dict[int, np.ndarray]:
    """Indices of train rows per label that may be drawn: those whose text is not a test text."""
    ok = not_test(train.texts, test_texts)
    return {label: np.flatnonzero(ok & (train.labels == label)) for label in (0, 1)}


def draw_k(
    train: ScoredPool, test_texts: Sequence[str], k: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices into ``train`` of k harmful and k harmless rows drawn without replacement
    (``gate.kshot``), never a row whose text is a test text."""
    return kshot_indices(train.labels, k, rng, usable=not_test(train.texts, test_texts))


def recalibrated_threshold(
    train: ScoredPool, test_texts: Sequence[str], k: int, rng: np.random.Generator
) -> tuple[float, list[str]]:
    """The class-balanced-F1 threshold from one k-shot draw, and the texts it used."""
    idx = draw_k(train, test_texts, k, rng)
    tau = balanced_f1_threshold(train.scores[idx], train.labels[idx])
    return tau, [train.texts[i] for i in idx]


def f1_at(test: ScoredPool, threshold: float) -> float:
    """Plain F1 (harmful positive) of ``score >= threshold`` on the test rows."""
    return f1_score(test.scores >= threshold, test.labels)


def kshot_curve(
    train: ScoredPool,
    test: ScoredPool,
    zero_shot_threshold: float,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    draws: int = 10,
    seed: int = 0,
    stream: tuple[int | str, ...] = (),
) -> dict[int, dict[str, float | int | list[float]]]:
    """Test F1 per k: k = 0 uses the zero-shot threshold; k >= 1 recalibrates on ``draws``
    independent k-shot draws from train (seeded per k). Values of k larger than the usable
    train rows of a class are left out."""
    pools = usable_train(train, test.texts)
    available = min(pools[0].size, pools[1].size)
    out: dict[int, dict[str, float | int | list[float]]] = {}
    for k in ks:
        if k == 0:
            values = [f1_at(test, zero_shot_threshold)]
        elif k > available:
            continue
        else:
            rng = kshot_rng(seed, *stream, k)
            values = [
                f1_at(test, recalibrated_threshold(train, test.texts, k, rng)[0])
                for _ in range(draws)
            ]
        arr = np.asarray(values)
        out[k] = {
            "mean": float(arr.mean()),
            "std": float(arr.std()),
            "min": float(arr.min()),
            "max": float(arr.max()),
            "draws": len(values),
            "values": [float(v) for v in values],
        }
    return out
