"""HarmfulnessGate on synthetic Gaussian activations with a planted harmfulness direction."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from babelgate.gate.artifact import ModelInfo
from babelgate.gate.directions import steering_alpha
from babelgate.gate.estimator import GateConfig, HarmfulnessGate, ThresholdRecord
from babelgate.gate.languages import UnknownLanguageError
from babelgate.gate.metrics import auroc
from babelgate.gate.threshold import balanced_f1_threshold

D = 32


def planted_direction() -> np.ndarray:
    v = np.random.default_rng(42).normal(size=D)
    return v / np.linalg.norm(v)


def synthetic_train(
    langs: tuple[str, ...] = ("en", "de", "fr"), n: int = 60, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per language: harmful = noise + 3 v + language offset, harmless = noise + offset."""
    rng = np.random.default_rng(seed)
    v = planted_direction()
    train = {}
    for lang in langs:
        offset = rng.normal(size=D)
        harmful = rng.normal(size=(n, D)) + 3.0 * v + offset
        harmless = rng.normal(size=(n, D)) + offset
        acts = np.vstack([harmful, harmless]).astype(np.float32)
        train[lang] = (acts, np.r_[np.ones(n), np.zeros(n)].astype(np.int64))
    return train


def stacked(train):
    return (
        np.vstack([a for a, _ in train.values()]),
        np.concatenate([y for _, y in train.values()]),
    )


@pytest.fixture(scope="module")
def gate() -> HarmfulnessGate:
    return HarmfulnessGate(GateConfig(layer=4, rank=3)).fit(synthetic_train())


def test_recovers_the_planted_direction(gate):
    assert gate.direction.dtype == np.float32 and gate.direction.shape == (D,)
    assert float(gate.direction @ planted_direction()) > 0.95
    for d in gate.language_directions.values():
        assert float(d @ planted_direction()) > 0.85
    assert gate.basis.shape == (D, 3)
    assert gate.training_languages == ["en", "de", "fr"]
    assert gate.layer == 4 and gate.hidden_size == D


def test_scores_separate_and_linear_form_matches_score(gate):
    fresh = synthetic_train(seed=7)  # new draws; new offsets shift whole languages
    for acts, labels in fresh.values():
        assert auroc(gate.score(acts), labels) > 0.95
    acts, _ = stacked(fresh)
    scores = gate.score(acts)
    assert scores.shape == (len(acts),)
    u, c = gate.linear_form()
    assert u.shape == (D,)
    np.testing.assert_allclose(acts @ u + c, scores, atol=1e-5)
    assert gate.score(acts[0]).shape == ()
    assert float(gate.score(acts[0])) == pytest.approx(float(scores[0]), abs=1e-9)


def test_alpha_and_zero_shot_threshold_follow_the_method(gate):
    acts, labels = stacked(synthetic_train())
    proj = acts.astype(np.float64) @ gate.direction.astype(np.float64)
    assert gate.alpha == pytest.approx(steering_alpha(proj[labels == 1], proj[labels == 0]))
    assert gate.alpha > 0
    assert gate.zero_shot_threshold == balanced_f1_threshold(gate.score(acts), labels)


def test_fit_is_deterministic():
    a = HarmfulnessGate(GateConfig(layer=0, rank=2)).fit(synthetic_train())
    b = HarmfulnessGate(GateConfig(layer=0, rank=2)).fit(synthetic_train())
    np.testing.assert_array_equal(a.linear_form()[0], b.linear_form()[0])
    assert a.zero_shot_threshold == b.zero_shot_threshold


def test_threshold_falls_back_to_zero_shot_and_says_so():
    gate = HarmfulnessGate(GateConfig(layer=4, rank=3)).fit(synthetic_train())
    record = gate.threshold("sw")
    assert record.source == "default"
    assert record.value == gate.zero_shot_threshold
    assert record.k is None and "zero-shot" in record.note
    assert gate.thresholds == {}

    manual = gate.set_threshold("SW", 1.25, note="ops")
    assert manual.language == "sw" and manual.source == "manual"
    assert gate.threshold("sw") == manual and list(gate.thresholds) == ["sw"]
    assert gate.clear_threshold("sw") == manual
    assert gate.threshold("sw").source == "default"
    with pytest.raises(ValueError, match="finite"):
        gate.set_threshold("sw", float("nan"))
    with pytest.raises(ValueError, match="clear_threshold"):
        gate.set_threshold("sw", 0.0, source="default")


def test_recalibrate_sets_the_language_threshold_and_decide_uses_it():
    gate = HarmfulnessGate(GateConfig(layer=4, rank=3)).fit(synthetic_train())
    acts, labels = stacked(synthetic_train(langs=("sw",), n=2, seed=3))
    record = gate.recalibrate("sw", acts, labels)
    assert record.source == "recalibrated"
    assert (record.k, record.n_harmful, record.n_harmless) == (2, 2, 2)
    assert record.value == balanced_f1_threshold(gate.score(acts), labels)
    assert gate.recalibrate_from_scores("sw", gate.score(acts), labels).value == record.value

    far = gate.set_threshold("yo", 1e6)
    assert not gate.decide(acts, "yo").any()
    assert gate.decide(acts, "sw").tolist() == (gate.score(acts) >= record.value).tolist()
    assert far.value == 1e6
    with pytest.raises(ValueError, match=r"cannot recalibrate 'sw'.*only harmful"):
        gate.recalibrate("sw", acts[:2], labels[:2])
    gate.fit(synthetic_train())
    assert gate.thresholds == {}, "a refit changes the logit scale, so old thresholds go"


def test_threshold_record_round_trip_and_validation():
    rec = ThresholdRecord("sw", 0.5, "recalibrated", 1, 1, 1, "2026-01-01T00:00:00+00:00")
    assert ThresholdRecord.from_dict(rec.to_dict()) == rec
    with pytest.raises(ValueError, match="source"):
        ThresholdRecord("sw", 0.5, "guess", None, None, None, "t")
    with pytest.raises(ValueError, match="canonical"):
        ThresholdRecord("SW", 0.5, "manual", None, None, None, "t")
    with pytest.raises(ValueError, match="lacks"):
        ThresholdRecord.from_dict({"language": "sw", "value": 0.5})


def test_fit_refuses_bad_training_data():
    good = synthetic_train()
    en_x, en_y = good["en"]
    cfg = GateConfig(layer=4, rank=2)
    with pytest.raises(ValueError, match="no training data"):
        HarmfulnessGate(cfg).fit({})
    with pytest.raises(ValueError, match="only harmful"):
        HarmfulnessGate(cfg).fit({**good, "de": (en_x[:5], np.ones(5))})
    nan_x = en_x.copy()
    nan_x[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        HarmfulnessGate(cfg).fit({**good, "en": (nan_x, en_y)})
    with pytest.raises(ValueError, match="dimension 31"):
        HarmfulnessGate(cfg).fit({**good, "fr": (en_x[:, :31], en_y)})
    with pytest.raises(UnknownLanguageError, match="english"):
        HarmfulnessGate(cfg).fit({"english": good["en"]})
    with pytest.raises(ValueError, match="lower --rank or add languages"):
        HarmfulnessGate(GateConfig(layer=4, rank=4)).fit(good)
    model = ModelInfo("m", "f" * 16, "LlamaForCausalLM", 30, 64)
    with pytest.raises(ValueError, match="hidden size is 64"):
        HarmfulnessGate(cfg, model).fit(good)
    with pytest.raises(ValueError, match="layer 30 does not exist"):
        HarmfulnessGate(GateConfig(layer=30), model)


def test_unfitted_gate_says_how_to_get_a_fitted_one():
    with pytest.raises(RuntimeError, match=r"call fit\(train\) or HarmfulnessGate.load"):
        HarmfulnessGate(GateConfig(layer=0)).score(np.zeros(D))


def test_traffic_threshold_moves_the_reference_by_the_quantile_shift(gate):
    g = copy.deepcopy(gate)
    en = g.set_threshold("en", 1.0)
    ref = np.arange(20.0)  # 25th percentile 4.75 (linear interpolation)
    record = g.set_traffic_threshold("sw", ref + 5.0, ref, en)  # shift 5
    assert (record.language, record.value, record.source) == ("sw", pytest.approx(6.0), "traffic")
    assert record.auroc is None and record.harmless_below is None and record.k is None
    assert "'en'" in record.note and "20 'sw'" in record.note
    assert g.threshold("sw") == record
    with pytest.raises(ValueError, match="at least 20 unlabelled prompts"):
        g.set_traffic_threshold("sw", ref[:19], ref, en)
    with pytest.raises(ValueError, match="reference needs one set from labels"):
        g.set_traffic_threshold("sw", ref, ref, g.threshold("th"))
    with pytest.raises(ValueError, match="its own reference"):
        g.set_traffic_threshold("en", ref, ref, en)
