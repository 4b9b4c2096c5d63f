"""Starting vLLM with the guard: environment, engine options, model checks, the self-check.

Runs in the process that creates the engine (API server, CLI, tests, benchmark). Everything
before vLLM starts is one call, ``prepare`` (used by the async ``GuardedEngine``, the offline
``GuardedLLM``, the ``VLLMBackend`` and the evaluation's engine), so all refuse the same setups
with the same messages: before vLLM starts (unsupported architecture, compiled mode, Model Runner
V2 forced on) and after (hook not installed on the decoder layer, hook never fired, no score).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.engine.types import GateParams, GuardParams, GuardrailStartupError, Verdict
from server.engine.worker_extension import WORKER_EXTENSION, BabelgateWorkerExtension

if TYPE_CHECKING:
    from gate.artifact import ModelInfo
    from gate.estimator import HarmfulnessGate

logger = logging.getLogger(__name__)

SELF_CHECK_PROMPT = "What is the capital of France?"
SELF_CHECK_LANGUAGE = "en"
# KV cache of a CPU engine whose caller set no memory option. vLLM's default there reserves
# 92% of the machine's memory and refuses to start when any other process holds more than 8%
# of it (measured: `babelgate serve` failed with 15.8 of 17.3 GiB free).
CPU_KV_CACHE_BYTES = 4 << 30


def bind_cpu_threads() -> None:
    """On CPU, let vLLM's worker compute on every core this process may use.

    vLLM's "auto" binding reserves one core per worker for its scheduler: on a 2-core machine the
    model then runs on one core. Measured here (Qwen2.5-Coder-0.5B, 256 prefills): 103.6 s with
    the default binding, 59.9 s bound to both cores. An operator's own
    ``VLLM_CPU_OMP_THREADS_BIND`` / ``VLLM_CPU_NUM_OF_RESERVED_CPU`` are left alone. Benchmarks
    start their plain-vLLM baselines after this too, so both sides get the same cores.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or "VLLM_CPU_NUM_OF_RESERVED_CPU" in os.environ:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    cores = sorted(os.sched_getaffinity(0))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    logger.info("CPU engine: OpenMP threads bound to cores %s (VLLM_CPU_OMP_THREADS_BIND)", cores)


def prepare_environment() -> None:
    """Select the V1 model runner (the one the hook's row map was verified on), refusing an
    environment that forces Model Runner V2, and bind the CPU threads (``bind_cpu_threads``).
    Must run before the engine processes start."""
    bind_cpu_threads()
    value = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if value is not None and value.strip().lower() not in ("0", "false"):
        raise GuardrailStartupError(
            f"VLLM_USE_V2_MODEL_RUNNER={value} forces Model Runner V2, which babelgate does not "
            "support: unset it or set VLLM_USE_V2_MODEL_RUNNER=0"
        )
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"


def _check_worker_extension(qualname: Any) -> str:
    """The ``worker_extension_cls`` to start with: babelgate's, or a class deriving from it (by
    import path, as vLLM takes it)."""
    if qualname in (None, WORKER_EXTENSION):
        return WORKER_EXTENSION
    why = ""
    if isinstance(qualname, str):
        module, _, name = qualname.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as err:
            why = f" (cannot import it: {err})"
        else:
            if isinstance(cls, type) and issubclass(cls, BabelgateWorkerExtension):
                return qualname
    raise GuardrailStartupError(
        f"worker_extension_cls={qualname!r} would replace babelgate's worker extension "
        f"({WORKER_EXTENSION}){why}: combine both in one class deriving from it"
    )


def guarded_engine_kwargs(user: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's engine options plus what the guard needs (eager mode, the worker extension
    or a subclass of it, a KV-cache size on CPU), refusing options that contradict it."""
    kwargs = dict(user or {})
    if kwargs.get("enforce_eager") is False:
        raise GuardrailStartupError(
            "enforce_eager=False (compiled mode) is refused: a hook registered after start "
            "never fires in vLLM's compiled graphs. Leave enforce_eager unset or True"
        )
    kwargs["enforce_eager"] = True
    kwargs["worker_extension_cls"] = _check_worker_extension(kwargs.get("worker_extension_cls"))
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


@dataclass(frozen=True)
class EnginePlan:
    """What ``prepare`` settled before vLLM starts: the model, the gate, the engine options."""

    model_id: str  # the id artifacts record (hub id, embedded model id, or absolute folder)
    load_path: str  # what vLLM opens
    config: dict[str, Any]  # the model's config.json
    gate: GateParams | None  # what the hook evaluates (None: no gate given)
    estimator: HarmfulnessGate | None  # the fitted gate, when given one or its artifact
    engine_kwargs: dict[str, Any] | None  # vLLM options with the guard's (None: start=False)

    @property
    def model_info(self) -> ModelInfo:
        from gate.artifact import model_info_from_config

        return model_info_from_config(self.model_id, self.config)


def prepare(
    model: str | Path | None,
    gate: HarmfulnessGate | GateParams | str | Path | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    *,
    start: bool = True,
) -> EnginePlan:
    """Everything before vLLM starts, refusing (``GuardrailStartupError``) what cannot be served
    guarded: the environment (``prepare_environment``), the model (``resolve_model``, its
    config, ``check_model_config``), the gate (a fitted ``HarmfulnessGate``, its artifact
    directory, checked against the model's config, or ready ``GateParams``) and the engine
    options (``guarded_engine_kwargs``). ``start=False``: the engine runs already (attaching to
    it), so only the model and the gate are checked.
    """
    from gate.hf.model_source import load_model_config, resolve_model

    if start:
        prepare_environment()
    model_id, load_path = resolve_model(model)
    config = load_model_config(load_path)
    check_model_config(config)
    estimator = params = None
    if isinstance(gate, GateParams):
        params = gate
    elif gate is not None:
        estimator = gate
        if isinstance(gate, str | Path):
            from gate.artifact import model_info_from_config
            from gate.estimator import HarmfulnessGate

            expect = model_info_from_config(model_id, config)
            estimator = HarmfulnessGate.load(gate, expect_model=expect)
        params = GateParams.from_gate(estimator)
    kwargs = guarded_engine_kwargs(engine_kwargs) if start else None
    return EnginePlan(model_id, load_path, config, params, estimator, kwargs)


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
