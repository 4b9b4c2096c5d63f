"""The full readout (``GateConfig(readout="full")``): the logistic unit reads the whole residual.

Hand-computed values through scoring and the serving form, and the artifact round trip that
stores no basis.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from babelgate.gate.artifact import ArtifactError
from babelgate.gate.estimator import GateConfig, HarmfulnessGate
from babelgate.gate.metrics import auroc

D = 8


def planted(
    seed: int = 0, n: int = 40, layers: int = 1
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Harmful rows shifted by 2 along e0 of every layer; ``(n, d)`` or ``(n, layers, d)``."""
    rng = np.random.default_rng(seed)
    out = {}
    for lang in ("en", "de", "fr"):
        y = np.r_[np.ones(n), np.zeros(n)].astype(np.int64)
        acts = rng.normal(size=(2 * n, layers, D))
        acts[:, :, 0] += 2.0 * y[:, None]
        out[lang] = ((acts[:, 0] if layers == 1 else acts).astype(np.float32), y)
    return out


def test_unknown_readout_is_refused():
    with pytest.raises(ValueError, match="readout must be one of low-rank, full"):
        GateConfig(layer=3, readout="dense")


def test_score_and_linear_form_by_hand():
    gate = HarmfulnessGate(GateConfig(layer=3, readout="full")).fit(
        {k: (a[:, :2], y) for k, (a, y) in planted().items()}
    )
    r = gate.readout
    r.mean_ = np.array([1.0, 0.0], dtype=np.float32)
    r.std_ = np.array([2.0, 1.0], dtype=np.float32)
    r.coef_ = np.array([4.0, -1.0], dtype=np.float32)
    r.intercept_ = 0.5
    # z = ((3 - 1) / 2, (2 - 0) / 1) = (1, 2); 4 * 1 - 1 * 2 + 0.5 = 2.5
    assert gate.score(np.array([3.0, 2.0])) == pytest.approx(2.5)
    u, c = gate.linear_form()
    # u = coef / std = (2, -1); c = 0.5 - (2 * 1 + (-1) * 0) = -1.5
    np.testing.assert_allclose(u, [2.0, -1.0])
    assert c == pytest.approx(-1.5)


def test_fit_reads_every_dimension_and_stores_no_basis(tmp_path):
    train = planted()
    gate = HarmfulnessGate(GateConfig(layer=3, rank=2, readout="full")).fit(train)
    assert gate.basis is None and gate.readout.coef_.shape == (D,)
    x = np.vstack([a for a, _ in train.values()])
    y = np.concatenate([y for _, y in train.values()])
    assert auroc(gate.score(x), y) > 0.9
    assert int(np.argmax(np.abs(gate.linear_form()[0]))) == 0  # the planted dimension
    path = gate.save(tmp_path / "g")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["readout"] == "full"
    back = HarmfulnessGate.load(path)
    assert back.config.readout == "full" and back.basis is None
    np.testing.assert_array_equal(back.score(x), gate.score(x))


def test_two_layer_full_readout_is_one_dot_product_per_layer():
    gate = HarmfulnessGate(GateConfig(layer=5, feature_layers=(2, 5), readout="full")).fit(
        planted(layers=2)
    )
    assert gate.readout.coef_.shape == (2 * D,)
    x = np.random.default_rng(3).normal(size=(5, 2, D))
    u, c = gate.linear_form()
    assert u.shape == (2, D)
    np.testing.assert_allclose(gate.score(x), x[:, 0] @ u[0] + x[:, 1] @ u[1] + c, atol=1e-9)


def test_a_manifest_that_names_the_other_readout_is_refused(tmp_path):
    path = HarmfulnessGate(GateConfig(layer=3, readout="full")).fit(planted()).save(tmp_path / "g")
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["readout"] = "low-rank"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="low-rank readout"):
        HarmfulnessGate.load(path)
