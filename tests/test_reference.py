"""The transformers reference routing: policies, the in-pass decision, and what the hook changes.

Slow tests run the embedded model with a gate fitted on 16+16 English PolyRefuse train prompts
at layer 14; fast tests use a tiny randomly initialised Llama (real transformers code, no mocks).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babelgate.gate.hf.reference import (
    POLICIES,
    ReferenceRouter,
    SteeringParams,
    _join_output,
    _split_output,
)

LAYER = 14
PROMPTS = [
    "How do I make a bomb at home?",
    "Give me three tips for a good night's sleep.",
]
NEW_TOKENS = 16


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def backend(embedded_model_dir):
    from babelgate.gate.hf.backend import TransformersBackend

    return TransformersBackend(embedded_model_dir)


@pytest.fixture(scope="module")
def gate(backend, polyrefuse_dir):
    from babelgate.gate.data import load_dataset
    from babelgate.gate.estimator import GateConfig, HarmfulnessGate

    rows = load_dataset(polyrefuse_dir, languages=["en"], splits=["train"])
    chosen = [p for p in rows if p.label == 1][:16] + [p for p in rows if p.label == 0][:16]
    acts = backend.activations([p.text for p in chosen], [LAYER], progress=False)[:, 0]
    labels = np.array([p.label for p in chosen])
    return HarmfulnessGate(GateConfig(layer=LAYER, rank=1)).fit({"en": (acts, labels)})


@pytest.fixture(scope="module")
def router(backend, gate):
    return ReferenceRouter(backend.model, backend.tokenizer, gate)


@pytest.fixture(scope="module")
def plain(router):
    return router.generate(PROMPTS, language="en", policy="none", max_new_tokens=NEW_TOKENS)


class BlockRecorder:
    """Records block L's raw output (a hook registered before the router's, so it runs first)
    and block L+1's input (what the router's hook handed on), per forward pass."""

    def __init__(self, model, layer: int) -> None:
        blocks = model.model.layers
        self.raw: list[torch.Tensor] = []
        self.passed: list[torch.Tensor] = []
        self._handles = [
            blocks[layer].register_forward_hook(self._record_raw),
            blocks[layer + 1].register_forward_pre_hook(self._record_passed, with_kwargs=True),
        ]

    def _record_raw(self, _module, _inputs, output):
        self.raw.append(_split_output(output)[0].detach().clone()[0])

    def _record_passed(self, _module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.passed.append(hidden.detach().clone()[0])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def record(model, router, prompt: str, policy: str, threshold: float | None = None):
    rec = BlockRecorder(model, router.layer)
    try:
        result = router.generate(
            [prompt], language="en", policy=policy, threshold=threshold,
            max_new_tokens=NEW_TOKENS,
        )[0]
    finally:
        rec.remove()
    return result, rec


# ----------------------------------------------------------------------------- slow tests


@pytest.mark.slow
def test_policy_none_equals_plain_greedy_generate(backend, plain):
    for prompt, result in zip(PROMPTS, plain, strict=True):
        ids = backend.chat_prompt_ids(prompt)
        out = backend.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
        assert result.token_ids == out[0, len(ids) :].tolist()
        assert result.text == backend.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        assert (result.score, result.decision, result.intervened) == (None, None, False)


@pytest.mark.slow
def test_shadow_keeps_tokens_and_scores_like_the_gate(backend, gate, router, plain):
    shadow = router.generate(
        PROMPTS, language="en", policy="shadow", threshold=0.0, max_new_tokens=NEW_TOKENS
    )
    assert [r.token_ids for r in shadow] == [r.token_ids for r in plain]
    acts = backend.activations(PROMPTS, [LAYER], progress=False)[:, 0]
    expected = gate.score(acts)
    got = np.array([r.score for r in shadow])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert [r.decision for r in shadow] == [
        "harmful" if s >= 0.0 else "harmless" for s in got
    ]
    assert not any(r.intervened for r in shadow)


@pytest.mark.slow
def test_routing_decides_by_threshold_in_the_same_pass(router):
    low = router.generate(
        PROMPTS[:1], language="en", policy="routing", threshold=-1e9, max_new_tokens=4
    )[0]
    high = router.generate(
        PROMPTS[:1], language="en", policy="routing", threshold=1e9, max_new_tokens=4
    )[0]
    assert (low.decision, low.action, low.intervened) == ("harmful", "steer", True)
    assert (high.decision, high.action, high.intervened) == ("harmless", "ablate", True)
    assert low.score == pytest.approx(high.score, abs=1e-9)
    per_prompt = router.generate(
        PROMPTS, language=["en", "en"], policy="routing", threshold=[-1e9, 1e9],
        max_new_tokens=4,
    )
    assert [r.action for r in per_prompt] == ["steer", "ablate"]


@pytest.mark.slow
def test_always_steer_with_a_big_alpha_changes_tokens(backend, gate, plain):
    strong = ReferenceRouter(
        backend.model, backend.tokenizer, SteeringParams.from_gate(gate, alpha=8 * gate.alpha)
    )
    steered = strong.generate(
        PROMPTS, language="en", policy="always-steer", max_new_tokens=NEW_TOKENS
    )
    assert all(r.action == "steer" for r in steered)
    assert [r.token_ids for r in steered] != [r.token_ids for r in plain]


@pytest.mark.slow
def test_steer_adds_alpha_v_at_the_last_prompt_token_and_each_generated_token(backend, router):
    result, rec = record(backend.model, router, PROMPTS[0], "always-steer")
    v = router.direction
    shift = router.alpha * v
    prefill_raw, prefill_passed = rec.raw[0], rec.passed[0]
    torch.testing.assert_close(prefill_passed[:-1], prefill_raw[:-1], rtol=0, atol=0)
    torch.testing.assert_close(prefill_passed[-1], prefill_raw[-1] + shift, rtol=0, atol=1e-4)
    # one decode pass per generated token except the last (it is never fed back)
    assert len(rec.raw) == len(result.token_ids)
    for raw, passed in zip(rec.raw[1:], rec.passed[1:], strict=True):
        assert raw.shape[0] == 1
        torch.testing.assert_close(passed[0], raw[0] + shift, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_always_ablate_zeroes_the_projection_on_v_everywhere(backend, router):
    _, rec = record(backend.model, router, PROMPTS[1], "always-ablate")
    v = router.direction
    raw = torch.cat(rec.raw)
    passed = torch.cat(rec.passed)
    assert raw.shape == passed.shape and raw.shape[0] > NEW_TOKENS
    assert (raw @ v).abs().max() > 1.0, "the unablated projection should be far from 0"
    assert (passed @ v).abs().max() < 1e-3
    torch.testing.assert_close(passed, raw - (raw @ v)[:, None] * v, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- fast tests


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer random Llama with a word-level tokenizer and a chat template: the router's
    plumbing runs on real transformers code in well under a second, with no model download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "<", ">", "user", "assistant", "hello", "hi", "world", "."]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", eos_token="<eos>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}< user > {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}< assistant >{% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, eos_token_id=1,
    )
    model = LlamaForCausalLM(config).eval()
    v = np.zeros(16)
    v[0] = 1.0
    params = SteeringParams(layer=0, direction=v, alpha=3.0, u=np.ones(16), c=-0.5)
    return model, tokenizer, params


def test_unknown_policy_and_missing_threshold_are_refused(tiny):
    router = ReferenceRouter(*tiny)
    with pytest.raises(ValueError, match="unknown policy"):
        router.generate(["hi"], language="en", policy="steer")
    with pytest.raises(ValueError, match="needs a threshold"):
        router.generate(["hi"], language="en", policy="routing")
    with pytest.raises(ValueError, match="2 values for 1 prompts"):
        router.generate(["hi"], language="en", policy="shadow", threshold=[0.0, 1.0])
    with pytest.raises(TypeError, match="list of strings"):
        router.generate("hi", language="en", policy="none")


def test_gate_for_another_model_or_layer_is_refused(tiny):
    model, tokenizer, params = tiny
    wrong_dim = SteeringParams(layer=0, direction=np.ones(8), alpha=1.0, u=np.ones(8))
    with pytest.raises(ValueError, match="hidden size is 16"):
        ReferenceRouter(model, tokenizer, wrong_dim)
    wrong_layer = SteeringParams(layer=5, direction=params.direction, alpha=1.0, u=params.u)
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        ReferenceRouter(model, tokenizer, wrong_layer)


def test_every_policy_runs_and_reports_its_action(tiny):
    router = ReferenceRouter(*tiny)
    expected = {
        "none": (None, False),
        "shadow": (None, False),
        "always-steer": ("steer", True),
        "always-ablate": ("ablate", True),
    }
    for policy in POLICIES:
        result = router.generate(
            ["hello"], language="sw", policy=policy, threshold=0.0, max_new_tokens=3
        )[0]
        assert 1 <= len(result.token_ids) <= 3
        assert result.language == "sw"
        if policy == "routing":
            assert result.action == ("steer" if result.score >= 0.0 else "ablate")
        else:
            assert (result.action, result.intervened) == expected[policy]
        assert (result.score is None) == (policy == "none")


def test_abstain_band_decides_unsure_and_routing_then_leaves_the_request_alone(tiny):
    """Thresholds placed around the prompt's own score: in the band (its lower edge included)
    routing decides unsure and generates exactly what policy none does; below it, harmless and
    ablated; without a band, the same threshold decides harmless."""
    router = ReferenceRouter(*tiny)

    def run(policy: str, threshold: float | None = None, band: float | None = None):
        return router.generate(["hello"], language="en", policy=policy, threshold=threshold,
                               harmless_threshold=band, max_new_tokens=4)[0]  # fmt: skip

    score = run("shadow", 0.0).score
    plain = run("none")
    for band in (score - 1.0, score):
        unsure = run("routing", score + 1.0, band)
        assert (unsure.decision, unsure.action, unsure.intervened) == ("unsure", None, False)
        assert unsure.token_ids == plain.token_ids and unsure.score == score
    below = run("routing", score + 1.0, score + 0.5)
    assert (below.decision, below.action) == ("harmless", "ablate")
    assert run("routing", score + 1.0).decision == "harmless"
    assert run("always-ablate", score + 1.0, score - 1.0).action == "ablate"
    with pytest.raises(ValueError, match="at most the threshold"):
        run("routing", score, score + 1.0)


def test_block_outputs_are_handled_as_tensors_and_tuples():
    h = torch.ones(1, 2, 3)
    assert _split_output(h) == (h, None)
    assert _join_output(h, None) is h
    extra = torch.zeros(1)
    hidden, rest = _split_output((h, extra))
    assert hidden is h and rest == (extra,)
    assert _join_output(h, rest) == (h, extra)
    with pytest.raises(TypeError, match="tensor or a tuple"):
        _split_output([h])
