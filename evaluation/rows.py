"""Helpers on the evaluation's prompt rows, shared by ``runner`` (which produces the results)
and ``report`` (which reads them), so neither imports the other's internals.

Runs in the CLI process; pure Python and numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from babelgate.evaluation.kshot import ScoredPool
from babelgate.gate.data import LabelledPrompt


def text_sha(text: str) -> str:
    """Short content hash of a text: row keys, judgement cache keys, run settings."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def scored_pool(rows: Sequence[LabelledPrompt], scores: Sequence[float]) -> ScoredPool:
    """Gate scores of ``rows`` with their labels and texts."""
    return ScoredPool(np.asarray(scores), np.array([p.label for p in rows]),
                      tuple(p.text for p in rows))
