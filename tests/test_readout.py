"""The standardised logistic readout: determinism under its seed, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babelgate.gate.metrics import auroc
from babelgate.gate.readout import LogisticReadout


def toy_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    harmful = rng.normal(size=(30, 3)) + np.array([3.0, 0.0, 10.0])
    harmless = rng.normal(size=(50, 3)) + np.array([-3.0, 0.0, 10.0])
    return np.vstack([harmful, harmless]), np.r_[np.ones(30), np.zeros(50)]


def test_two_fits_are_bit_identical_whatever_the_global_rng():
    z, y = toy_set()
    a = LogisticReadout().fit(z, y)
    torch.manual_seed(1234)
    torch.rand(17)
    b = LogisticReadout().fit(z, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.intercept_ == b.intercept_
    np.testing.assert_array_equal(a.decision_function(z), b.decision_function(z))


def test_a_different_seed_gives_a_different_fit():
    z, y = toy_set()
    a = LogisticReadout(seed=0).fit(z, y)
    b = LogisticReadout(seed=1).fit(z, y)
    assert not np.array_equal(a.coef_, b.coef_)


def test_separates_a_separable_toy_set():
    z, y = toy_set()
    readout = LogisticReadout().fit(z, y)
    logits = readout.decision_function(z)
    assert auroc(logits, y) == 1.0
    assert np.all((logits > 0) == (y == 1))
    assert readout.coef_[0] > abs(readout.coef_[1])  # the informative feature dominates


def test_standardisation_uses_training_mean_and_population_std():
    z, y = toy_set()
    z[:, 1] = 5.0  # constant feature: std 0 must not divide by zero
    readout = LogisticReadout(epochs=3).fit(z, y)
    np.testing.assert_allclose(readout.mean_, z.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(readout.std_[[0, 2]], z.std(axis=0)[[0, 2]], rtol=1e-6)
    assert readout.std_[1] == 1.0
    assert np.all(np.isfinite(readout.decision_function(z)))
    assert readout.coef_.shape == (3,) and isinstance(readout.intercept_, float)


def test_refuses_one_class_and_unfitted_use():
    z, _ = toy_set()
    with pytest.raises(ValueError, match="both harmful"):
        LogisticReadout().fit(z, np.ones(len(z)))
    with pytest.raises(RuntimeError, match="not fitted"):
        LogisticReadout().decision_function(z)
