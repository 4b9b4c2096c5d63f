"""The worker-side AdaSteer / CAST strategies on hand-made steps (row spans as vLLM's runner
lays them out), including a chunked prefill, against the numpy fits they apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babelgate.evaluation.baselines.fitting import cast_score, fit_adasteer, fit_cast
from babelgate.evaluation.baselines.hooks import RowSpan
from babelgate.evaluation.baselines.interventions import (
    BASELINE_CAPTURE_KEY,
    BASELINE_KEY,
    AdaSteerIntervention,
    CastIntervention,
    PromptCapture,
    request_scale,
)

N_LAYERS, D = 8, 6


def _span(req, start, stop, first_pos, num_prompt, method="cast", lang="yo"):
    extra = {BASELINE_KEY: {"id": req, "method": method, "language": lang}}
    return RowSpan(req, start, stop, first_pos, num_prompt, extra)


def _fits(seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([1] * 10 + [0] * 10)
    means = rng.normal(size=(20, N_LAYERS, D))
    means[:, :, 0] += 4.0
    means[y == 1, 2, 3] += 5.0
    last = rng.normal(size=(20, N_LAYERS, D))
    last[y == 1, :, 1] += 3.0
    return fit_cast("yo", means, last, y), fit_adasteer("yo", last, y)


def test_cast_decides_on_the_mean_over_a_chunked_prefill_and_steers_later_layers():
    cast, _ = _fits()
    hook = CastIntervention([cast.to_wire()], torch.device("cpu"), torch.float32)
    layer = cast.condition_layer
    prompt = torch.randn(5, D, dtype=torch.float64) + 3.0
    # The same prompt arrives in two chunks: rows 0-2 then rows 3-4 (last prompt token).
    for chunk, (start, first_pos) in ((prompt[:3], (0, 0)), (prompt[3:], (0, 3))):
        hidden = chunk.float().clone()
        residual = torch.zeros_like(hidden)
        step = [_span("r1", start, start + len(chunk), first_pos, 5)]
        hook.on_layer(layer, hidden, residual, step)
    rec = hook.active["r1"]
    expected = float(cast_score(prompt.mean(dim=0).numpy(), cast.condition))
    assert rec.prompt_rows_seen == 5
    assert rec.score == pytest.approx(expected, abs=1e-5)
    assert rec.fired == bool(cast.fires(prompt.mean(dim=0).numpy()))
    # A decode step at a behaviour layer: steered iff fired, by strength x behaviour vector.
    behaviour_layer = cast.behaviour_layers[0]
    hidden = torch.zeros(1, D)
    hook.on_layer(behaviour_layer, hidden, torch.zeros(1, D), [_span("r1", 0, 1, 5, 5)])
    want = 1.5 * cast.behaviour_vectors[0] if rec.fired else np.zeros(D)
    assert np.allclose(hidden[0].numpy(), want, atol=1e-5)
    hook.on_requests_gone({"r1"})
    assert hook.records(["r1"])["r1"]["score"] == pytest.approx(expected, abs=1e-5)


def test_cast_fires_only_for_its_requests():
    cast, _ = _fits()
    hook = CastIntervention([cast.to_wire()], torch.device("cpu"), torch.float32)
    hidden = torch.zeros(2, D)
    other = RowSpan("plain", 1, 2, 9, 5, {"babelgate": {"id": "x"}})
    hook.on_layer(cast.behaviour_layers[0], hidden, torch.zeros(2, D), [other])
    assert hook.active == {} and torch.count_nonzero(hidden) == 0


def test_adasteer_freezes_coefficients_at_the_last_prompt_token_and_steers_generated_rows():
    _, ada = _fits()
    hook = AdaSteerIntervention([ada.to_wire()], N_LAYERS, torch.device("cpu"), torch.float32)
    a_layer, b_layer = ada.alpha_anchor.layer, ada.beta_anchor.layer
    h_last = torch.randn(D)
    prefill = [_span("r2", 0, 4, 0, 4, method="adasteer")]
    for layer in range(N_LAYERS):
        hidden = torch.zeros(4, D)
        hidden[3] = h_last
        before = hidden.clone()
        hook.on_layer(layer, hidden, torch.zeros(4, D), prefill)
        changed = not torch.equal(hidden, before)
        # The last prompt row is steered only after both coefficients are known.
        assert changed == (layer > max(a_layer, b_layer))
        assert torch.equal(hidden[:3], before[:3])  # earlier prompt rows never
    rec = hook.active["r2"]
    alpha, beta = ada.coefficients(h_last.double().numpy(), h_last.double().numpy())
    assert (rec.alpha, rec.beta) == pytest.approx((float(alpha), float(beta)))
    hidden = torch.zeros(1, D)
    hook.on_layer(0, hidden, torch.zeros(1, D), [_span("r2", 0, 1, 4, 4, method="adasteer")])
    want = (rec.alpha + rec.beta) * ada.directions[0]
    assert np.allclose(hidden[0].numpy(), want, atol=1e-5)


def test_prompt_capture_mean_and_last_token_across_chunks():
    cap = PromptCapture(2)
    rows = torch.randn(4, D)
    for layer in range(2):
        for start, stop, first_pos in ((0, 2, 0), (0, 2, 2)):
            span = RowSpan("c", start, stop, first_pos, 4, {BASELINE_CAPTURE_KEY: "c"})
            chunk = rows[first_pos : first_pos + 2] * (layer + 1)
            cap.on_layer(layer, chunk.clone(), torch.zeros(2, D), [span])
    got = np.frombuffer(cap.pop(["c"])["c"], np.float32).reshape(2, 2, D)
    for layer in range(2):
        assert np.allclose(got[0, layer], rows[3].numpy() * (layer + 1), atol=1e-6)
        assert np.allclose(got[1, layer], rows.mean(dim=0).numpy() * (layer + 1), atol=1e-6)


def test_a_request_scale_multiplies_each_baseline_fitted_strength():
    cast, ada = _fits()
    # CAST: a prompt that fires, scale 0.5: half of 1.5 x the behaviour vector.
    gen = torch.Generator().manual_seed(0)
    prompts = (torch.randn(3, D, generator=gen, dtype=torch.float64) * 3 for _ in range(200))
    prompt = next(p for p in prompts if cast.fires(p.mean(dim=0).numpy()))
    hook = CastIntervention([cast.to_wire()], torch.device("cpu"), torch.float32)
    span = _span("r3", 0, 3, 0, 3)
    span.extra[BASELINE_KEY]["scale"] = 0.5
    hook.on_layer(cast.condition_layer, prompt.float().clone(), torch.zeros(3, D), [span])
    assert hook.active["r3"].fired and hook.active["r3"].scale == 0.5
    hidden = torch.zeros(1, D)
    step = [RowSpan("r3", 0, 1, 3, 3, span.extra)]
    hook.on_layer(cast.behaviour_layers[0], hidden, torch.zeros(1, D), step)
    assert np.allclose(hidden[0].numpy(), 0.75 * cast.behaviour_vectors[0], atol=1e-5)
    # AdaSteer, scale 2: alpha and beta (and so the added vector) twice the fitted ones.
    hook = AdaSteerIntervention([ada.to_wire()], N_LAYERS, torch.device("cpu"), torch.float32)
    h_last = torch.randn(D, generator=gen)
    span = _span("r4", 0, 4, 0, 4, method="adasteer")
    span.extra[BASELINE_KEY]["scale"] = 2.0
    for layer in range(N_LAYERS):
        hidden = torch.zeros(4, D)
        hidden[3] = h_last
        hook.on_layer(layer, hidden, torch.zeros(4, D), [span])
    alpha, beta = ada.coefficients(h_last.double().numpy(), h_last.double().numpy())
    rec = hook.active["r4"]
    assert (rec.alpha, rec.beta) == pytest.approx((2 * float(alpha), 2 * float(beta)))
    assert hook.records(["r4"])["r4"]["scale"] == 2.0


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), "x"])
def test_a_bad_request_scale_fails_the_step_loudly(scale):
    cast, _ = _fits()
    hook = CastIntervention([cast.to_wire()], torch.device("cpu"), torch.float32)
    span = _span("r5", 0, 3, 0, 3)
    span.extra[BASELINE_KEY]["scale"] = scale
    with pytest.raises(ValueError):
        hook.on_layer(cast.condition_layer, torch.zeros(3, D), torch.zeros(3, D), [span])
    assert request_scale({}) == 1.0
