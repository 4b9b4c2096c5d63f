"""Fast checks of the vLLM integration's pure parts: guard parameters, cache salts, refusals
before vLLM starts, engine options (worker, guard spec, compile-cache key), the row map
arithmetic and the architecture check on real modules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from babelgate.evaluation.baselines.hooks import RowSpan
from babelgate.server.engine.guard_graph import DECISION_NAMES, GuardSpec
from babelgate.server.engine.model import decoder_layers
from babelgate.server.engine.startup import (
    check_model_config,
    guarded_engine_kwargs,
    prepare_environment,
)
from babelgate.server.engine.types import (
    DECISIONS,
    INTERVENING_POLICIES,
    POLICIES,
    GateParams,
    GuardParams,
    GuardrailStartupError,
    Verdict,
    policy_intervention,
)

SPEC = GuardSpec((3,))


def unit(d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


def test_gate_params_round_trip_exactly_through_the_wire_format():
    gp = GateParams(3, unit(8, 0) * 2.5, -0.25, unit(8, 1), 4.0, "fp")
    back = GateParams.from_wire(gp.to_wire())
    assert np.array_equal(back.u, gp.u) and np.array_equal(back.v, gp.v)
    assert (back.layer, back.c, back.alpha, back.fingerprint) == (3, -0.25, 4.0, "fp")


def test_gate_params_refuse_a_direction_that_is_not_unit_norm():
    with pytest.raises(ValueError, match="unit-norm"):
        GateParams(0, unit(8, 0), 0.0, unit(8, 1) * 2, 1.0, "fp")


def test_cache_salt_shares_plain_kv_and_isolates_interventions():
    none = GuardParams("en", "none")
    shadow = GuardParams("en", "shadow")
    routing_a, routing_b = GuardParams("en", "routing"), GuardParams("en", "routing")
    ablate_a, ablate_b = GuardParams("en", "always-ablate"), GuardParams("de", "always-ablate")
    assert none.cache_salt("g") is None and shadow.cache_salt("g") is None
    assert routing_a.cache_salt("g") != routing_b.cache_salt("g")  # decision unknown at lookup
    assert ablate_a.cache_salt("g") == ablate_b.cache_salt("g") != ablate_a.cache_salt("h")
    steer = GuardParams("en", "always-steer")
    assert steer.cache_salt("g") not in (None, routing_a.cache_salt("g"))


def test_guard_params_refuse_unknown_policy_and_bad_threshold():
    with pytest.raises(ValueError, match="policy"):
        GuardParams("en", "block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        GuardParams("en", "routing", float("nan"))


def test_one_policy_vocabulary_and_what_each_policy_does():
    from babelgate.gate.hf import (
        reference,  # the gate library cannot import the server: kept equal here
    )
    from babelgate.server import settings

    assert POLICIES == ("routing", "none", "shadow", "always-steer", "always-ablate")
    assert reference.POLICIES == settings.POLICIES == POLICIES
    assert sorted(INTERVENING_POLICIES) == ["always-ablate", "always-steer", "routing"]
    assert tuple(DECISION_NAMES[code] for code in sorted(DECISION_NAMES)) == DECISIONS
    routed = [reference.ROUTING_ACTIONS[d] or "none" for d in DECISIONS]
    assert routed == [policy_intervention("routing", d) for d in DECISIONS]
    table = {p: [policy_intervention(p, d) for d in (None, *DECISIONS)] for p in POLICIES}
    assert table == {
        "routing": [None, "steer", "ablate", "none"],  # unsure: the band changes nothing
        "none": ["none"] * 4,
        "shadow": ["none"] * 4,
        "always-steer": ["steer"] * 4,
        "always-ablate": ["ablate"] * 4,
    }


def test_verdict_round_trips_and_names_its_decision():
    v = Verdict("x", "sw", "routing", 0.5, "recalibrated", 1.25, True, "steer", 9)
    assert Verdict.from_dict(v.to_dict()) == v
    assert v.decision == "harmful" and v.intervened and v.harmless_threshold is None
    unsure = Verdict("y", "sw", "routing", 0.5, "r", 0.25, False, "none", 0, "unsure", 0.0)
    assert Verdict.from_dict(unsure.to_dict()) == unsure and unsure.to_dict()["harmful"] is False
    with pytest.raises(ValueError, match="contradicts"):
        Verdict("z", "sw", "routing", 0.5, "r", 0.25, True, "none", 0, "unsure", 0.0)


def test_guard_params_carry_the_abstain_band_and_refuse_one_above_the_threshold():
    assert GuardParams("en", threshold=0.5).to_extra_args()["harmless_threshold"] is None
    banded = GuardParams("en", threshold=0.5, harmless_threshold=-0.25)
    assert banded.to_extra_args()["harmless_threshold"] == -0.25
    assert GuardParams("en", threshold=0.5, harmless_threshold=0.5).harmless_threshold == 0.5
    with pytest.raises(ValueError, match="above threshold"):
        GuardParams("en", threshold=0.5, harmless_threshold=0.75)
    never = GuardParams("en", threshold=0.5, harmless_threshold=float("-inf"))  # never ablate
    assert never.to_extra_args()["harmless_threshold"] == float("-inf")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="harmless_threshold must be a number or -inf"):
            GuardParams("en", threshold=0.5, harmless_threshold=bad)


def test_engine_options_carry_the_worker_and_the_guard_spec_in_both_modes():
    from babelgate.server.engine.guard_graph import graph_code_version
    from babelgate.server.engine.worker import WORKER_CLASSES

    for eager in (None, True, False):  # compiled (vLLM's default) and eager alike
        kwargs = guarded_engine_kwargs({"enforce_eager": eager, "max_model_len": 512}, SPEC)
        assert kwargs["worker_cls"] == WORKER_CLASSES["cpu"]  # no GPU here
        assert kwargs["enforce_eager"] is eager and kwargs["max_model_len"] == 512
        assert kwargs["additional_config"] == {
            "babelgate": {"read_layers": [3], "capture_layers": [], "graph": graph_code_version()}
        }
    mine = guarded_engine_kwargs({"additional_config": {"mine": 1}}, SPEC)["additional_config"]
    assert mine["mine"] == 1 and "babelgate" in mine
    kept = guarded_engine_kwargs({"worker_extension_cls": "pkg.Extra"}, SPEC)
    assert kept["worker_extension_cls"] == "pkg.Extra"  # extensions add methods, nothing else


def test_a_foreign_worker_or_guard_spec_is_refused():
    with pytest.raises(GuardrailStartupError, match="worker_extension_cls"):
        guarded_engine_kwargs({"worker_cls": "pkg.Worker"}, SPEC)
    with pytest.raises(GuardrailStartupError, match="babelgate's own"):
        guarded_engine_kwargs({"additional_config": {"babelgate": {}}}, SPEC)


def test_the_compile_cache_key_changes_with_the_guard_spec():
    """vLLM keys its compile cache on ``VllmConfig.compute_hash``, which hashes
    ``additional_config``: engines with different guards (or none) never share a graph."""
    from vllm.config import VllmConfig

    def key(spec: GuardSpec | None) -> str:
        extra = {} if spec is None else spec.additional_config()
        return VllmConfig(additional_config=extra).compute_hash()

    keys = {key(None), key(SPEC), key(GuardSpec((2, 3))), key(GuardSpec((3,), (0, 1)))}
    assert len(keys) == 4


def test_cpu_engine_gets_a_fixed_kv_cache_unless_memory_is_configured():
    from babelgate.server.engine.startup import CPU_KV_CACHE_BYTES

    assert guarded_engine_kwargs({}, SPEC)["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES
    one_gib = {"kv_cache_memory_bytes": 1 << 30}
    assert guarded_engine_kwargs(one_gib, SPEC)["kv_cache_memory_bytes"] == 1 << 30
    kwargs = guarded_engine_kwargs({"gpu_memory_utilization": 0.5}, SPEC)
    assert "kv_cache_memory_bytes" not in kwargs and kwargs["gpu_memory_utilization"] == 0.5


def test_model_runner_v2_forced_by_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(GuardrailStartupError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        prepare_environment()
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    prepare_environment()
    import os

    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"


def test_unsupported_architecture_is_refused_by_name_before_start():
    check_model_config({"architectures": ["Qwen2ForCausalLM"]})
    with pytest.raises(GuardrailStartupError, match="MixtralForCausalLM"):
        check_model_config({"architectures": ["MixtralForCausalLM"]})


class MixtralForCausalLM(torch.nn.Module):
    """A real module named like an architecture babelgate has not verified."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])


class LlamaForCausalLM(MixtralForCausalLM):
    """Supported name, but its layers are not vLLM's LlamaDecoderLayer."""


def test_worker_refuses_unverified_model_and_layer_classes():
    with pytest.raises(GuardrailStartupError, match="not supported"):
        decoder_layers(MixtralForCausalLM())
    with pytest.raises(GuardrailStartupError, match="LlamaDecoderLayer"):
        decoder_layers(LlamaForCausalLM())


def test_row_span_finds_the_last_prompt_token_only_in_its_chunk():
    # A 10-token prompt prefilled in chunks of 6 and 4 rows, then one decode row.
    first = RowSpan("r", start=3, stop=9, first_pos=0, num_prompt=10, extra={})
    last = RowSpan("r", start=0, stop=4, first_pos=6, num_prompt=10, extra={})
    decode = RowSpan("r", start=5, stop=6, first_pos=10, num_prompt=10, extra={})
    assert first.last_prompt_row is None
    assert last.last_prompt_row == 3
    assert decode.last_prompt_row is None
    assert list(last.rows_from_position(9)) == [3]
    assert list(decode.rows_from_position(9)) == [5]
    assert list(first.rows_from_position(9)) == []


class FakeLLM:
    """``collective_rpc`` of a two-worker engine: each worker answers with its rank."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def collective_rpc(self, method: str, args: tuple = ()) -> list:
        self.calls.append((method, args))
        if method == "babelgate_verdicts":
            v = Verdict("a", "en", "shadow", 0.0, "t", 1.0, True, "none", 0)
            return [{"a": v.to_dict()}, {}]
        return [{"rank": 0}, {"rank": 1}]


class FakeAsyncLLM(FakeLLM):
    async def collective_rpc(self, method: str, args: tuple = ()) -> list:  # type: ignore[override]
        return FakeLLM.collective_rpc(self, method, args)


def test_worker_clients_send_the_extension_methods_and_read_rank_0():
    import asyncio

    from babelgate.server.engine.rpc import AsyncWorkerClient, WorkerClient

    gate = GateParams(3, unit(8, 0), 0.0, unit(8, 1), 1.0, "fp")
    llm = FakeLLM()
    client = WorkerClient(llm)
    assert client.install(gate) == {"rank": 0}
    client.describe()
    client.status()
    client.uninstall()
    client.pop_captures(["c"])
    verdicts = client.verdicts(["a", "b"], ["a"])
    assert verdicts["a"].score == 1.0 and "b" not in verdicts
    assert [(m, a) for m, a in llm.calls if m != "babelgate_install"] == [
        ("babelgate_describe", ()),
        ("babelgate_status", ()),
        ("babelgate_uninstall", ()),
        ("babelgate_pop_captures", (["c"],)),
        ("babelgate_verdicts", (["a", "b"], ["a"])),
    ]
    assert llm.calls[0][1][0]["fingerprint"] == "fp" and len(llm.calls[0][1]) == 1

    aengine = FakeAsyncLLM()
    aclient = AsyncWorkerClient(aengine)

    async def run():
        return await aclient.status(), await aclient.verdicts(["a"])

    status, averdicts = asyncio.run(run())
    assert status == {"rank": 0} and averdicts == verdicts
    assert aengine.calls[-1] == ("babelgate_verdicts", (["a"], []))


def toy_model(folder, hidden: int = 8) -> str:
    """A model folder with only a config.json (enough for everything before vLLM starts)."""
    import json

    folder.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": hidden, "num_hidden_layers": 4, "num_attention_heads": 2}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_prepare_settles_model_gate_and_engine_options_before_vllm_starts(tmp_path, monkeypatch):
    from babelgate.gate.artifact import ArtifactError
    from babelgate.gate.estimator import GateConfig, HarmfulnessGate
    from babelgate.server.engine.startup import CPU_KV_CACHE_BYTES, prepare
    from babelgate.server.engine.worker import WORKER_CLASSES

    model = toy_model(tmp_path / "toy")
    params = GateParams(3, unit(8, 0), 0.0, unit(8, 1), 1.0, "fp")
    plan = prepare(model, params, {"max_model_len": 64})
    assert (plan.model_id, plan.load_path) == (model, model) and plan.gate is params
    assert plan.estimator is None and plan.model_info.hidden_size == 8
    assert plan.engine_kwargs == {
        "max_model_len": 64, "worker_cls": WORKER_CLASSES["cpu"],
        "additional_config": GuardSpec((3,)).additional_config(),
        "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
    }  # fmt: skip
    backend = prepare(model, None, {}, read_layers=(1, 3), capture_all_layers=True)
    assert backend.engine_kwargs["additional_config"] == GuardSpec(
        (1, 3), (0, 1, 2, 3)
    ).additional_config()
    early = GateParams(1, unit(8, 0), 0.0, unit(8, 1), 1.0, "fp")
    with pytest.raises(GuardrailStartupError, match="last layer read is the deciding one"):
        prepare(model, early, {}, read_layers=(3,))

    rng = np.random.default_rng(0)
    acts = rng.standard_normal((16, 8)) + np.r_[np.full((8, 1), 2.0), np.zeros((8, 1))]
    train = {"en": (acts.astype(np.float32), np.r_[np.ones(8), np.zeros(8)])}
    fitted = HarmfulnessGate(GateConfig(layer=2, rank=1), plan.model_info).fit(train)
    saved = fitted.save(tmp_path / "gate")
    from_dir = prepare(model, saved, start=False)
    assert from_dir.engine_kwargs is None and from_dir.estimator is not None
    assert from_dir.gate.fingerprint == GateParams.from_gate(fitted).fingerprint
    assert from_dir.estimator.zero_shot_threshold == fitted.zero_shot_threshold
    with pytest.raises(ArtifactError, match="was calibrated for"):
        prepare(toy_model(tmp_path / "other", hidden=16), saved, start=False)

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")  # attaching leaves the environment alone
    assert prepare(model, params, start=False).gate is params
    with pytest.raises(GuardrailStartupError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        prepare(model, params)
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")


def test_every_client_call_names_a_method_of_its_worker():
    from babelgate.evaluation.baselines.interventions import BaselineWorkerExtension
    from babelgate.evaluation.engine import BaselineWorkerClient
    from babelgate.server.engine.rpc import RPC_PREFIX, WorkerClient
    from babelgate.server.engine.worker import GuardWorkerMixin

    def calls(client: type) -> set[str]:
        return {n for n in dir(client) if not n.startswith("_") and callable(getattr(client, n))}

    def methods(extension: type) -> set[str]:
        return {n.removeprefix(RPC_PREFIX) for n in dir(extension) if n.startswith(RPC_PREFIX)}

    assert calls(WorkerClient) == methods(GuardWorkerMixin)
    baseline = methods(BaselineWorkerExtension) | methods(GuardWorkerMixin)
    assert calls(BaselineWorkerClient) == baseline


# The vLLM releases whose source the hook point was read against (docs/ARCHITECTURE.md).
VERIFIED_VLLM = ("0.32.0",)


def test_the_hook_point_is_where_this_vllm_calls_the_model():
    """A vLLM upgrade fails here, before an engine could run without the guard: the version is
    one the hook point was checked against; the V1 runner's ``execute_model`` still calls
    ``_model_forward`` (which ``worker.install_guard`` wraps) and its ``_dummy_run`` does not
    (dummy runs must see the no-op buffers, not a filled step); the runner and input-batch
    fields ``step.batch_layout`` reads are still set. (At start, ``verify_self_check`` refuses
    an engine whose self-check request was not scored inside the forward.)"""
    import inspect
    import re

    import vllm
    from vllm import SamplingParams
    from vllm.v1.worker.gpu_input_batch import InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from babelgate.server.engine.step import RUNNER_ATTRIBUTES

    assert vllm.__version__ in VERIFIED_VLLM, (
        f"vLLM {vllm.__version__}: re-read server/engine/step.py's facts and worker.py's hook "
        "against this release, run the engine tests, then add it to VERIFIED_VLLM"
    )
    assert "self._model_forward(" in inspect.getsource(GPUModelRunner.execute_model)
    assert "self._model_forward(" not in inspect.getsource(GPUModelRunner._dummy_run)

    def assigned(source_of: Any, name: str) -> bool:
        source = inspect.getsource(source_of)
        return bool(re.search(rf"self\.{name}\b[^=\n]*=|def {name}\b", source))

    for name in (*RUNNER_ATTRIBUTES, "max_num_tokens"):
        assert assigned(GPUModelRunner.__init__, name), name
    for name in ("num_reqs", "req_ids", "num_computed_tokens_cpu", "num_prompt_tokens"):
        assert assigned(InputBatch, name), name
    assert "extra_args" in SamplingParams.__struct_fields__
