"""Directions, SVD basis and steering strength on hand examples."""

from __future__ import annotations

import numpy as np
import pytest

from babelgate.gate.directions import (
    language_directions,
    mean_difference,
    pooled_direction,
    steering_alpha,
    svd_basis,
)


def test_mean_difference_hand_example():
    acts = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    # mean harmful (2, 0) - mean harmless (0, 1) = (2, -1), norm sqrt(5)
    np.testing.assert_allclose(mean_difference(acts, [1, 1, 0]), np.array([2.0, -1.0]) / 5**0.5)


def test_mean_difference_refuses_missing_class_and_zero_difference():
    with pytest.raises(ValueError, match="both harmful"):
        mean_difference(np.ones((2, 3)), [1, 1])
    with pytest.raises(ValueError, match="same mean"):
        mean_difference(np.ones((2, 3)), [1, 0])


def test_pooled_direction_weights_rows_not_languages():
    train = {
        "en": (np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([1, 0])),
        "de": (np.array([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), np.array([1, 0, 0, 0])),
    }
    # stacked: harmful mean (1, .5), harmless mean (0, 0)
    np.testing.assert_allclose(pooled_direction(train), np.array([1.0, 0.5]) / 1.25**0.5)
    langs, dirs = language_directions(train)
    assert langs == ["en", "de"]
    np.testing.assert_allclose(dirs, [[1.0, 0.0], [0.0, 1.0]])


def test_language_directions_names_the_failing_language():
    train = {"en": (np.eye(2), np.array([1, 0])), "sw": (np.eye(2), np.array([1, 1]))}
    with pytest.raises(ValueError, match="'sw'"):
        language_directions(train)


def test_svd_basis_on_orthogonal_inputs():
    dirs = np.eye(5)[:3]  # e1, e2, e3 in R^5
    basis = svd_basis(dirs, 3)
    assert basis.shape == (5, 3)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(basis @ basis.T, np.diag([1.0, 1, 1, 0, 0]), atol=1e-12)
    assert np.all(basis.T @ dirs.mean(axis=0) > 0)


def test_svd_basis_orders_by_singular_value_with_fixed_signs():
    e1, e2 = np.eye(4)[0], np.eye(4)[1]
    dirs = np.stack([e1, e1, -e2])  # singular values sqrt(2), 1, 0
    np.testing.assert_allclose(svd_basis(dirs, 1)[:, 0], e1, atol=1e-12)
    # second vector is +-e2; its sign follows the mean direction (2/3, -1/3, 0, 0)
    np.testing.assert_allclose(svd_basis(dirs, 2), np.stack([e1, -e2], axis=1), atol=1e-12)
    np.testing.assert_allclose(svd_basis(-dirs, 2), -svd_basis(dirs, 2), atol=1e-12)


@pytest.mark.parametrize("rank", [0, 4])
def test_svd_basis_rank_out_of_range(rank):
    with pytest.raises(ValueError, match="lower --rank or add languages"):
        svd_basis(np.eye(6)[:3], rank)


def test_steering_alpha_hand_example():
    # q75 of {0..4} = 3, q25 of {0, 4} = 1
    assert steering_alpha([0, 1, 2, 3, 4], [0, 4]) == 2.0
    assert steering_alpha([0, 1, 2, 3, 4], [0, 4], lam=0.5) == 1.0
    # linear interpolation: q75 of {1, 2} = 1.75, q25 of {0, 1, 2, 3} = 0.75
    assert steering_alpha([1.0, 2.0], [0.0, 1.0, 2.0, 3.0]) == pytest.approx(1.0)
