"""The one k-shot sampler (gate/kshot.py): what it draws, and that it is one stream per key."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from babelgate.gate.kshot import kshot_draws, kshot_indices, kshot_rng

LABELS = np.array([1, 0, 1, 0, 1, 0, 1, 0, 0])


def test_indices_are_k_harmful_then_k_harmless_without_replacement():
    idx = kshot_indices(LABELS, 3, kshot_rng(0, "en", 3))
    assert idx.dtype == np.int64 and len(idx) == 6
    assert list(LABELS[idx]) == [1, 1, 1, 0, 0, 0]
    assert len(set(idx.tolist())) == 6


def test_seeding_is_seed_then_stream_with_strings_by_crc32():
    expected = np.random.default_rng([7, zlib.crc32(b"yo"), 4]).choice(
        np.flatnonzero(LABELS == 1), 4, replace=False
    )
    got = kshot_indices(LABELS, 4, kshot_rng(7, "yo", 4))
    np.testing.assert_array_equal(got[:4], expected)
    other = kshot_draws(LABELS, 2, 20, 7, "de")
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(other, kshot_draws(LABELS, 2, 20, 7, "yo"), strict=True)
    )
    np.testing.assert_array_equal(np.stack(other), np.stack(kshot_draws(LABELS, 2, 20, 7, "de")))


def test_usable_mask_and_too_few_rows():
    usable = np.array([True, True, False, True, False, True, False, True, True])
    idx = kshot_indices(LABELS, 1, kshot_rng(0), usable=usable)
    assert set(idx.tolist()) <= set(np.flatnonzero(usable).tolist())
    with pytest.raises(ValueError, match="only 1 usable harmful examples for k=2"):
        kshot_indices(LABELS, 2, kshot_rng(0), usable=usable)
    few = kshot_indices(LABELS, 2, kshot_rng(0), usable=usable, allow_fewer=True)
    assert sorted(LABELS[few].tolist()) == [0, 0, 1]
    assert kshot_draws(LABELS, 5, 3, 0) == []  # only 4 harmful rows
    with pytest.raises(ValueError, match="k must be >= 1"):
        kshot_indices(LABELS, 0, kshot_rng(0))
