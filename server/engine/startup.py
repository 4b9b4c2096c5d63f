"""Starting vLLM with the guard: environment, engine options, model checks, the self-check.

Runs in the process that creates the engine (API server, CLI, tests, benchmark). Everything
before vLLM starts is one call, ``prepare`` (used by the async ``GuardedEngine``, the offline
``GuardedLLM``, the ``VLLMBackend`` and the evaluation's engine), so all refuse the same setups
with the same messages: before vLLM starts (unsupported architecture, Model Runner V2 forced on, a
foreign worker class) and after (gate layers not in the engine's guard, no guarded step, no
score).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from babelgate.server.engine.guard_graph import GuardSpec
from babelgate.server.engine.model import SUPPORTED_ARCHITECTURES
from babelgate.server.engine.types import GateParams, GuardParams, GuardrailStartupError, Verdict
from babelgate.server.engine.worker import WORKER_CLASSES

if TYPE_CHECKING:
    from babelgate.gate.artifact import ModelInfo
    from babelgate.gate.estimator import HarmfulnessGate

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
    """Select the V1 model runner (the one the guard's row map was verified on), refusing an
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


def worker_class() -> str:
    """babelgate's worker for this platform (``server.engine.worker``)."""
    # lazy: vllm is imported only where an engine starts
    from vllm.platforms import current_platform

    return WORKER_CLASSES["cpu" if current_platform.is_cpu() else "gpu"]


def guarded_engine_kwargs(user: dict[str, Any] | None, spec: GuardSpec) -> dict[str, Any]:
    """The caller's engine options plus what the guard needs (babelgate's worker, the guard's
    shape in ``additional_config``, a KV-cache size on CPU), refusing options that contradict
    it. Compiled (vLLM's default) and eager (``enforce_eager=True``) both run the guard."""
    kwargs = dict(user or {})
    if kwargs.get("worker_cls") not in (None, "auto"):
        raise GuardrailStartupError(
            f"worker_cls={kwargs['worker_cls']!r} would replace babelgate's worker, which puts "
            "the guard into the model: pass extra worker methods as worker_extension_cls"
        )
    kwargs["worker_cls"] = worker_class()
    additional = dict(kwargs.get("additional_config") or {})
    if "babelgate" in additional:
        raise GuardrailStartupError(
            "additional_config['babelgate'] is babelgate's own: leave it to server.engine.startup"
        )
    kwargs["additional_config"] = {**additional, **spec.additional_config()}
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
    gate: GateParams | None  # what the guard evaluates (None: no gate given)
    estimator: HarmfulnessGate | None  # the fitted gate, when given one or its artifact
    engine_kwargs: dict[str, Any] | None  # vLLM options with the guard's (None: start=False)

    @property
    def model_info(self) -> ModelInfo:
        from babelgate.gate.artifact import model_info_from_config

        return model_info_from_config(self.model_id, self.config)


def prepare(
    model: str | Path | None,
    gate: HarmfulnessGate | GateParams | str | Path | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    *,
    start: bool = True,
    read_layers: tuple[int, ...] = (),
    capture_all_layers: bool = False,
) -> EnginePlan:
    """Everything before vLLM starts, refusing (``GuardrailStartupError``) what cannot be served
    guarded: the environment (``prepare_environment``), the model (``resolve_model``, its
    config, ``check_model_config``), the gate (a fitted ``HarmfulnessGate``, its artifact
    directory, checked against the model's config, or ready ``GateParams``) and the engine
    options (``guarded_engine_kwargs``). ``start=False``: the engine runs already (attaching to
    it), so only the model and the gate are checked.

    The engine's guard shape (``GuardSpec``, traced into the compiled model) reads the gate's
    layers plus ``read_layers`` (so gates reading any subset of them and deciding at the last
    can be loaded later) and, with ``capture_all_layers``, captures every layer's residual at
    the last prompt token (the activation backend).
    """
    from babelgate.gate.hf.model_source import load_model_config, resolve_model

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
            from babelgate.gate.artifact import model_info_from_config
            from babelgate.gate.estimator import HarmfulnessGate

            expect = model_info_from_config(model_id, config)
            estimator = HarmfulnessGate.load(gate, expect_model=expect)
        params = GateParams.from_gate(estimator)
    reads = tuple(sorted({*read_layers, *(params.read_layers if params else ())}))
    if params is not None and reads[-1] != params.layer:
        raise GuardrailStartupError(
            f"the gate decides at layer {params.layer} but the engine would also read layers "
            f"after it ({list(reads)}): the last layer read is the deciding one"
        )
    captures = tuple(range(int(config["num_hidden_layers"]))) if capture_all_layers else ()
    spec = GuardSpec(reads, captures)
    kwargs = guarded_engine_kwargs(engine_kwargs, spec) if start else None
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
            f"the guard is not in decoder layer(s) {missing} the gate reads (guarded layers: "
            f"{info.get('layers')}): refusing to serve unguarded"
        )


def verify_self_check(
    verdict: Verdict | None, fires_before: int, fires_after: int, installed: bool
) -> None:
    """The self-check request must have run as a guarded step and come back with a finite
    score (written by the guard inside the model's forward, compiled or eager)."""
    fix = (
        "refusing to serve unguarded; check that vLLM runs babelgate's worker with the V1 "
        "model runner and that the model is a supported architecture"
    )
    if not installed:
        raise GuardrailStartupError(f"self-check: no gate is loaded in the worker: {fix}")
    if fires_after <= fires_before:
        raise GuardrailStartupError(
            f"self-check: the self-check request never ran as a guarded step: {fix}"
        )
    if verdict is None or verdict.score is None or not math.isfinite(verdict.score):
        raise GuardrailStartupError(
            f"self-check: the request came back without a gate score ({verdict}): {fix}"
        )
