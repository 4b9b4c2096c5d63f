"""Guarded generation inside a real vLLM engine on the embedded model.

One engine per mode (compiled, eager) for the whole module: it first serves as the vLLM
activation backend (the test gate is fitted on its residuals, and those are compared with
transformers), then the gate is loaded and the guard is exercised: mixed batches, real
interventions, chunked prefill, prefix-cache isolation, refusals, and parity with the
transformers reference routing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from babelgate.gate.data import load_polyrefuse
from babelgate.gate.estimator import GateConfig, HarmfulnessGate
from babelgate.server.engine.types import (
    EXTRA_ARGS_KEY,
    GateParams,
    GuardParams,
    GuardrailStartupError,
)

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

LAYER = 15
TRAIN_LANGS = ("en", "de", "fr", "es")
TEST_LANGS = ("en", "de", "ja", "ar")
MAX_TOKENS = 24


def pick(rows, lang: str, label: int, k: int) -> list[str]:
    return [r.text for r in rows if r.language == lang and r.label == label][:k]


@pytest.fixture(scope="module", params=["compiled", "eager"])
def backend(request, embedded_model_dir: Path):
    """One engine per mode: vLLM's compiled graph (its default) and eager. It reads the two
    layers the module's gates use (the multi-layer test's gate reads both)."""
    from babelgate.server.engine.vllm_backend import VLLMBackend

    be = VLLMBackend(
        embedded_model_dir, dtype="float32", seed=0, read_layers=(LAYER - 4, LAYER),
        enforce_eager=request.param == "eager",
    )  # fmt: skip
    yield be
    be.shutdown()


@pytest.fixture(scope="module")
def gate(backend, polyrefuse_dir: Path) -> HarmfulnessGate:
    rows = load_polyrefuse(polyrefuse_dir, languages=TRAIN_LANGS, splits=["train"])
    train = {}
    for lang in TRAIN_LANGS:
        texts = pick(rows, lang, 1, 24) + pick(rows, lang, 0, 24)
        acts = backend.activations(texts, [LAYER], progress=False)[:, 0]
        train[lang] = (acts, np.array([1] * 24 + [0] * 24))
    return HarmfulnessGate(GateConfig(layer=LAYER, rank=4), backend.model_info).fit(train)


@pytest.fixture(scope="module")
def guarded(backend, gate, embedded_model_dir: Path):
    from babelgate.server.engine.offline import GuardedLLM

    return GuardedLLM(embedded_model_dir, gate, llm=backend.llm)


@pytest.fixture(scope="module")
def test_prompts(polyrefuse_dir: Path) -> list[tuple[str, str, int]]:
    """(text, language, label): 4 harmful + 4 harmless test prompts in each of 4 languages."""
    rows = load_polyrefuse(polyrefuse_dir, languages=TEST_LANGS, splits=["test"])
    out = []
    for lang in TEST_LANGS:
        for label in (1, 0):
            out += [(t, lang, label) for t in pick(rows, lang, label, 4)]
    return out


@pytest.fixture(scope="module")
def hf_model(embedded_model_dir: Path):
    from babelgate.gate.hf.backend import TransformersBackend

    return TransformersBackend(embedded_model_dir)


def greedy(max_tokens: int = MAX_TOKENS):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def routing(gate: HarmfulnessGate, lang: str, policy: str = "routing") -> GuardParams:
    rec = gate.threshold(lang)
    return GuardParams(lang, policy, rec.value, rec.source)  # type: ignore[arg-type]


def test_vllm_activations_match_transformers(backend, hf_model, test_prompts):
    texts = [t for t, _, _ in test_prompts[::4]]
    layers = [0, LAYER, 29]
    ours = backend.activations(texts, layers, progress=False)
    ref = hf_model.activations(texts, layers, progress=False)
    assert ours.shape == ref.shape == (len(texts), 3, 576)
    rel = np.abs(ours - ref).max(axis=-1) / np.abs(ref).max(axis=-1)
    assert rel.max() < 1e-3, f"max relative deviation {rel.max():.2e}"
    assert not np.allclose(ours[:, 1], ours[:, 2])  # the layers are really different ones


def test_mixed_batch_matches_each_request_alone(guarded, gate, test_prompts):
    chosen = test_prompts[::2]  # harmful and harmless in all four languages
    texts = [t for t, _, _ in chosen]
    guards = [routing(gate, lang) for _, lang, _ in chosen]
    plain_guards = [routing(gate, lang, "none") for _, lang, _ in chosen]
    together = guarded.generate(texts + texts, greedy(), guards + plain_guards)
    alone = [guarded.generate([t], greedy(), [routing(gate, lang)])[0] for t, lang, _ in chosen]
    decisions = {o.verdict.harmful for o in together[: len(texts)]}
    assert decisions == {True, False}, "the mix must contain both decisions to mean anything"
    for joint, single in zip(together[: len(texts)], alone, strict=True):
        assert joint.verdict.harmful == single.verdict.harmful
        assert joint.verdict.score == pytest.approx(single.verdict.score, abs=1e-4)
        assert joint.token_ids == single.token_ids
    for joint in together[len(texts) :]:
        assert joint.verdict.intervention == "none" and joint.verdict.score is None


def test_interventions_are_real_and_none_shadow_equal_plain_vllm(guarded, gate, test_prompts):
    texts = [t for t, _, _ in test_prompts]
    langs = [lang for _, lang, _ in test_prompts]
    guarded.uninstall()
    try:
        plain = guarded.generate(texts, greedy(), None)
    finally:
        guarded.install()
    none = guarded.generate(texts, greedy(), [routing(gate, lg, "none") for lg in langs])
    shadow = guarded.generate(texts, greedy(), [routing(gate, lg, "shadow") for lg in langs])
    steer = guarded.generate(texts, greedy(), [routing(gate, lg, "always-steer") for lg in langs])
    assert [o.token_ids for o in none] == [o.token_ids for o in plain]
    assert [o.token_ids for o in shadow] == [o.token_ids for o in plain]
    assert all(o.verdict.score is not None and not o.verdict.intervened for o in shadow)
    changed = sum(s.token_ids != p.token_ids for s, p in zip(steer, plain, strict=True))
    # alpha is the data's own scale: a few greedy continuations can survive one-layer steering
    # for 24 tokens; a hook that does not intervene changes none.
    assert changed >= 0.75 * len(texts), f"steering changed only {changed}/{len(texts)}"
    assert all(o.verdict.intervened_positions >= 1 for o in steer)


def test_requests_without_a_guard_match_plain_vllm_in_the_same_mode(
    backend, guarded, gate, test_prompts
):
    """The guard's ops are in every forward (compiled: in the graph), but a request on the no-op
    slot comes out exactly as from plain vLLM started with the same options, as do ``none`` and
    ``shadow`` requests; a steered one does not."""
    from vllm import LLM

    texts = [t for t, _, _ in test_prompts[::2]]
    langs = [lang for _, lang, _ in test_prompts[::2]]
    config = backend.llm.llm_engine.vllm_config
    plain = LLM(
        model=config.model_config.model, dtype="float32", seed=0, kv_cache_memory_bytes=1 << 30,
        enforce_eager=config.model_config.enforce_eager,
    )  # fmt: skip
    try:
        assert "babelgate" not in (plain.llm_engine.vllm_config.additional_config or {})
        ids = [{"prompt_token_ids": guarded.prompt_ids(t)} for t in texts]
        expected = [o.outputs[0].token_ids for o in plain.generate(ids, greedy(), use_tqdm=False)]
    finally:
        plain.llm_engine.engine_core.shutdown()
    unguarded = guarded.generate(texts, greedy(), None)
    none = guarded.generate(texts, greedy(), [routing(gate, lg, "none") for lg in langs])
    shadow = guarded.generate(texts, greedy(), [routing(gate, lg, "shadow") for lg in langs])
    steer = guarded.generate(texts, greedy(), [routing(gate, lg, "always-steer") for lg in langs])
    for outs in (unguarded, none, shadow):
        assert [list(o.token_ids) for o in outs] == [list(t) for t in expected]
    assert sum(list(o.token_ids) != list(t) for o, t in zip(steer, expected, strict=True)) >= 2


def test_chunked_prefill_decides_once_with_the_unchunked_score(guarded, gate, hf_model):
    budget = guarded.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    filler = "The history of bread spans thousands of years across many cultures. "
    text = filler * (budget // 12) + "Now explain how to pick a lock."
    ids = guarded.prompt_ids(text)
    assert len(ids) > budget, "the prompt must be longer than one prefill chunk"
    before = guarded.status()["decisions"]
    out = guarded.generate([text], greedy(4), [routing(gate, "en", "shadow")])[0]
    assert guarded.status()["decisions"] == before + 1
    unchunked = float(gate.score(hf_model.activations([text], [LAYER], progress=False)[0, 0]))
    assert out.verdict.score == pytest.approx(unchunked, abs=2e-3 * max(1.0, abs(unchunked)))

    # The documented deviation: a harmless decision cannot ablate the chunks that ran before
    # it. Measured against the reference (which ablates every prompt position).
    from babelgate.gate.hf.reference import ReferenceRouter

    for policy in ("always-ablate", "routing"):
        guard = routing(gate, "en", policy)
        ours = guarded.generate([text], greedy(8), [guard])[0]
        ref = ReferenceRouter(hf_model.model, hf_model.tokenizer, gate).generate(
            [text], language="en", policy=policy, threshold=guard.threshold, max_new_tokens=8
        )[0]
        assert ref.decision == ours.verdict.decision
        same = sum(a == b for a, b in zip(ref.token_ids, ours.token_ids, strict=False))
        print(f"chunked prefill, {policy} ({ours.verdict.intervention}): {same}/8 greedy tokens "
              "equal to the reference")
        if policy == "always-ablate":  # needs no decision: every chunk is ablated
            assert ours.token_ids == ref.token_ids


def test_prefix_cache_never_hands_intervened_kv_to_a_plain_request(guarded, gate):
    from vllm import SamplingParams

    text = "Write a short story about a lighthouse keeper and a storm. " * 24
    ids = guarded.prompt_ids(text)
    assert len(ids) > 2 * 128, "needs full KV blocks to share"
    guard = routing(gate, "en", "always-ablate")
    guarded.llm.reset_prefix_cache()
    base = guarded.generate([text], greedy(), None)[0]
    guarded.llm.reset_prefix_cache()
    ablated = guarded.generate([text], greedy(), [guard])[0]
    assert ablated.token_ids != base.token_ids
    after = guarded.generate([text], greedy(), None)[0]
    assert after.token_ids == base.token_ids

    # Without the salt the same sequence contaminates the plain request: the salt is what works.
    guarded.llm.reset_prefix_cache()
    unsalted = SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.0,
        extra_args={EXTRA_ARGS_KEY: routing(gate, "en", "always-ablate").to_extra_args()},
    )
    guarded.llm.generate([{"prompt_token_ids": ids}], [unsalted], use_tqdm=False)
    contaminated = guarded.generate([text], greedy(), None)[0]
    guarded.llm.reset_prefix_cache()
    assert contaminated.token_ids != base.token_ids


def test_refuses_a_layer_the_model_lacks_and_keeps_the_guard(guarded, gate):
    bad = GateParams(30, gate.direction, 0.0, gate.direction, 1.0, "bad")
    with pytest.raises(Exception, match="decides at 30"):
        guarded.worker.install(bad)
    assert guarded.status()["layers"] == [LAYER - 4, LAYER]


def test_self_check_refuses_when_no_gate_is_loaded(guarded):
    guarded.uninstall()
    try:
        with pytest.raises(GuardrailStartupError, match="no gate is loaded"):
            guarded.self_check()
    finally:
        guarded.install()
    guarded.self_check()


def test_parity_with_the_transformers_reference(guarded, gate, hf_model, test_prompts):
    from babelgate.gate.hf.reference import ReferenceRouter

    texts = [t for t, _, _ in test_prompts]
    langs = [lang for _, lang, _ in test_prompts]
    thresholds = [gate.threshold(lg).value for lg in langs]
    router = ReferenceRouter(hf_model.model, hf_model.tokenizer, gate)
    ref = router.generate(
        texts, language=langs, policy="routing", threshold=thresholds, max_new_tokens=MAX_TOKENS
    )
    ours = guarded.generate(texts, greedy(), [routing(gate, lg) for lg in langs])
    decisions_equal = [r.decision == o.verdict.decision for r, o in zip(ref, ours, strict=True)]
    tokens_equal = [r.token_ids == o.token_ids for r, o in zip(ref, ours, strict=True)]
    score_gap = max(abs(r.score - o.verdict.score) for r, o in zip(ref, ours, strict=True))
    print(
        f"parity: decisions {sum(decisions_equal)}/{len(texts)}, greedy tokens "
        f"{sum(tokens_equal)}/{len(texts)}, max score gap {score_gap:.2e}"
    )
    assert all(decisions_equal)
    assert score_gap < 1e-2
    assert {r.decision for r in ref} == {"harmful", "harmless"}
    assert sum(tokens_equal) >= 0.9 * len(texts)


def test_multi_layer_gate_parity_with_the_reference(
    backend, guarded, gate, hf_model, polyrefuse_dir, embedded_model_dir, test_prompts
):
    """A gate reading two layers: the hook sums both layers' dot products in the request's
    prefill and decides at the last; same scores and decisions as the transformers reference."""
    from babelgate.gate.hf.reference import ReferenceRouter
    from babelgate.server.engine.offline import GuardedLLM

    layers = [LAYER - 4, LAYER]
    rows = load_polyrefuse(polyrefuse_dir, languages=TRAIN_LANGS, splits=["train"])
    train = {}
    for lang in TRAIN_LANGS:
        texts = pick(rows, lang, 1, 24) + pick(rows, lang, 0, 24)
        train[lang] = (backend.activations(texts, layers, progress=False),
                       np.array([1] * 24 + [0] * 24))  # fmt: skip
    two = HarmfulnessGate(
        GateConfig(layer=LAYER, rank=4, feature_layers=tuple(layers)), backend.model_info
    ).fit(train)
    texts = [t for t, _, _ in test_prompts]
    langs = [lang for _, lang, _ in test_prompts]
    try:
        multi = GuardedLLM(embedded_model_dir, two, llm=backend.llm)
        assert set(layers) <= set(multi.status()["layers"])
        ours = multi.generate(texts, greedy(8), [routing(two, lg) for lg in langs])
        ref = ReferenceRouter(hf_model.model, hf_model.tokenizer, two).generate(
            texts, language=langs, policy="routing",
            threshold=[two.threshold(lg).value for lg in langs], max_new_tokens=8,
        )  # fmt: skip
        expected = two.score(hf_model.activations(texts, layers, progress=False))
    finally:
        guarded.install()  # the module's single-layer gate back for any later test
    got = np.array([o.verdict.score for o in ours])
    np.testing.assert_allclose(got, expected, atol=1e-2)
    np.testing.assert_allclose([r.score for r in ref], expected, atol=1e-2)
    assert [o.verdict.decision for o in ours] == [r.decision for r in ref]
