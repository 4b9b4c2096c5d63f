"""Starting vLLM with the guard: environment, engine options, model checks, the self-check.

Runs in the process that creates the engine (API server, CLI, tests, benchmark). Shared by the
async ``GuardedEngine`` and the offline ``GuardedLLM`` so both refuse the same setups with the
same messages: before vLLM starts (unsupported architecture, compiled mode, Model Runner V2
forced on) and after (hook not installed on the decoder layer, hook never fired, no score).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.engine.types import GateParams, GuardParams, GuardrailStartupError, Verdict
from server.engine.worker_extension import WORKER_EXTENSION

if TYPE_CHECKING:
    from gate.estimator import HarmfulnessGate

logger = logging.getLogger(__name__)

SELF_CHECK_PROMPT = "What is the capital of France?"
SELF_CHECK_LANGUAGE = "en"
# KV cache of a CPU engine whose caller set no memory option. vLLM's default there reserves
# 92% of the machine's memory and refuses to start when any other process holds more than 8%
# of it (measured: `babelgate serve` failed with 15.8 of 17.3 GiB free).
CPU_KV_CACHE_BYTES = 4 << 30


def prepare_environment() -> None:
    """Select the V1 model runner (the one the hook's row map was verified on), refusing an
    environment that forces Model Runner V2. Must run before the engine processes start."""
    value = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if value is not None and value.strip().lower() not in ("0", "false"):
        raise GuardrailStartupError(
            f"VLLM_USE_V2_MODEL_RUNNER={value} forces Model Runner V2, which babelgate does not "
            "support: unset it or set VLLM_USE_V2_MODEL_RUNNER=0"
        )
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"


def guarded_engine_kwargs(user: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's engine options plus what the guard needs (eager mode, the worker extension),
    refusing options that contradict it."""
    kwargs = dict(user or {})
    if kwargs.get("enforce_eager") is False:
        raise GuardrailStartupError(
            "enforce_eager=False (compiled mode) is refused: a hook registered after start "
            "never fires in vLLM's compiled graphs. Leave enforce_eager unset or True"
        )
    kwargs["enforce_eager"] = True
    extension = kwargs.get("worker_extension_cls")
    if extension not in (None, WORKER_EXTENSION):
        raise GuardrailStartupError(
            f"worker_extension_cls={extension!r} would replace babelgate's worker extension "
            f"({WORKER_EXTENSION}): combine both in one class deriving from it"
        )
    kwargs["worker_extension_cls"] = WORKER_EXTENSION
    if kwargs.get("gpu_memory_utilization") is None and kwargs.get("kv_cache_memory_bytes") is None:
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            logger.info(
                "CPU engine: KV cache %d GiB (set --kv-cache-memory-bytes or "
                "--gpu-memory-utilization to change it)",
                CPU_KV_CACHE_BYTES >> 30,
            )
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    return kwargs


def check_model_config(config: dict[str, Any]) -> None:
    """Refuse unsupported architectures by name before spending a minute starting vLLM."""
    from server.engine.hooks import SUPPORTED_ARCHITECTURES

    archs = list(config.get("architectures") or [])
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise GuardrailStartupError(
            f"model architecture {archs or config.get('model_type')} is not supported by "
            f"babelgate (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )


def load_gate_params(
    gate: HarmfulnessGate | GateParams | str | Path, model_id: str, config: dict[str, Any]
) -> GateParams:
    """Hook parameters from a gate, its artifact directory (checked against the model), or
    ready-made ``GateParams``."""
    if isinstance(gate, GateParams):
        return gate
    from gate.artifact import model_info_from_config
    from gate.estimator import HarmfulnessGate

    if isinstance(gate, str | Path):
        expect = model_info_from_config(model_id, config)
        gate = HarmfulnessGate.load(gate, expect_model=expect)
    return GateParams.from_gate(gate)


def chat_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """One user turn in the model's chat template with the generation prompt: the same ids the
    transformers backend and reference use (``gate.hf.backend.TransformersBackend``)."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def self_check_guard() -> GuardParams:
    """A shadow request: scored and reported, output untouched."""
    return GuardParams(
        language=SELF_CHECK_LANGUAGE, policy="shadow", threshold=0.0, threshold_source="self-check"
    )


def verify_install(info: dict[str, Any], gate: GateParams) -> None:
    missing = [layer for layer in gate.read_layers if layer not in info.get("layers", [])]
    if missing:
        raise GuardrailStartupError(
            f"the hook is not installed on decoder layer(s) {missing} the gate reads (installed: "
            f"{info.get('layers')}): refusing to serve unguarded"
        )


def verify_self_check(
    verdict: Verdict | None, fires_before: int, fires_after: int, installed: bool
) -> None:
    """The self-check request must have fired the hook and come back with a finite score."""
    fix = (
        "refusing to serve unguarded; check that vLLM runs eagerly with the V1 model runner "
        "and that the model is a supported architecture"
    )
    if not installed:
        raise GuardrailStartupError(f"self-check: the babelgate hook is not installed: {fix}")
    if fires_after <= fires_before:
        raise GuardrailStartupError(
            f"self-check: the hook never fired during the self-check request: {fix}"
        )
    if verdict is None or verdict.score is None or not math.isfinite(verdict.score):
        raise GuardrailStartupError(
            f"self-check: the request came back without a gate score ({verdict}): {fix}"
        )
