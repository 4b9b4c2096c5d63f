"""Multi-layer gates and unprotected languages, on synthetic activations with known structure."""

from __future__ import annotations

import numpy as np
import pytest

from babelgate.gate.estimator import MIN_PROTECTED_AUROC, GateConfig, HarmfulnessGate

D = 16


def two_layer_train(seed: int = 0, n: int = 40) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(n, 2, D) activations: layer 0 carries the label along e0, layer 1 along e1."""
    rng = np.random.default_rng(seed)
    out = {}
    for lang in ("en", "de", "fr"):
        y = np.r_[np.ones(n), np.zeros(n)].astype(np.int64)
        acts = rng.normal(size=(2 * n, 2, D))
        acts[:, 0, 0] += 3.0 * y
        acts[:, 1, 1] += 3.0 * y
        out[lang] = (acts.astype(np.float32), y)
    return out


def test_config_requires_the_decision_layer_to_be_the_last_read():
    assert GateConfig(layer=9, feature_layers=(9, 5, 5)).layers == (5, 9)
    assert GateConfig(layer=9).layers == (9,)
    with pytest.raises(ValueError, match="end at the gate's layer"):
        GateConfig(layer=5, feature_layers=(5, 9))


def test_two_layer_gate_linear_form_is_the_sum_of_per_layer_dot_products(tmp_path):
    gate = HarmfulnessGate(GateConfig(layer=7, rank=2, feature_layers=(3, 7))).fit(
        two_layer_train()
    )
    assert gate.basis.shape == (2, D, 2) and gate.readout.coef_.shape == (4,)
    x = np.random.default_rng(5).normal(size=(6, 2, D))
    u, c = gate.linear_form()
    assert u.shape == (2, D)
    by_hand = x[:, 0] @ u[0] + x[:, 1] @ u[1] + c
    np.testing.assert_allclose(gate.score(x), by_hand, rtol=1e-9, atol=1e-9)
    assert gate.score(x[0]) == pytest.approx(by_hand[0])
    # The steering direction is the last layer's: the label lives along e1 there.
    assert abs(float(gate.direction[1])) > 0.9
    with pytest.raises(ValueError, match=r"\(n, 2, d\)"):
        gate.score(x[:, 0])
    back = HarmfulnessGate.load(gate.save(tmp_path / "g"))
    assert back.layers == (3, 7)
    np.testing.assert_array_equal(back.score(x), gate.score(x))


def test_single_layer_gate_is_the_one_layer_case_of_the_multi_layer_code():
    train = {k: (a[:, 1], y) for k, (a, y) in two_layer_train().items()}
    single = HarmfulnessGate(GateConfig(layer=7, rank=2)).fit(train)
    as_multi = HarmfulnessGate(GateConfig(layer=7, rank=2, feature_layers=(7,))).fit(train)
    x = np.random.default_rng(1).normal(size=(4, D))
    np.testing.assert_array_equal(single.score(x), as_multi.score(x))
    assert single.basis.shape == (D, 2) and single.linear_form()[0].shape == (D,)


def test_recalibration_marks_a_language_the_gate_cannot_separate_as_unprotected():
    gate = HarmfulnessGate(GateConfig(layer=7, rank=2)).fit(
        {k: (a[:, 1], y) for k, (a, y) in two_layer_train().items()}
    )
    e1 = np.zeros(D)
    e1[1] = 3.0
    # k = 1, harmful scored above harmless: AUROC 1, protected.
    good = gate.recalibrate("sw", np.stack([e1, -e1]), np.array([1, 0]))
    assert good.protected and good.auroc == 1.0
    # Inverted (harmful below harmless): AUROC 0, unprotected, and the note says so.
    bad = gate.recalibrate("yo", np.stack([-e1, e1]), np.array([1, 0]))
    assert not bad.protected and bad.auroc == 0.0 and bad.note.startswith("UNPROTECTED")
    assert gate.unprotected_languages == ["yo"]
    # Evidence beyond the k examples decides protection when given (calibration's pool).
    scores = gate.score(np.stack([e1, -e1]))
    flat = gate.recalibrate_from_scores(
        "sw", scores, np.array([1, 0]),
        evidence=(np.array([0.0, 0.0, 0.0, 0.0]), np.array([1, 1, 0, 0])),
    )
    assert flat.auroc == 0.5 and flat.auroc <= MIN_PROTECTED_AUROC and not flat.protected
