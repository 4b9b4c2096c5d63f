"""babelgate's vLLM worker: the guard put into the model at load, and the ``collective_rpc`` calls.

Runs in the vLLM worker process. ``server.engine.startup`` starts every guarded engine with
``worker_cls`` set to one of the classes below (``GuardedCPUWorker`` on CPU, ``GuardedGPUWorker``
otherwise; built on first access, so a process imports only its platform's worker) and the
guard's shape (``GuardSpec``) in ``additional_config``. Right after the weights load, and so
before vLLM profiles, compiles or captures anything, ``load_model`` wraps the decoder layers the
guard reads (``guard_graph.GuardedDecoderLayer``) and the runner's ``_model_forward`` (the
buffers are filled before and reset after each real step, ``runtime.GuardRuntime``; results are
read back lazily, never waited for in the step loop). The same maths therefore runs in eager
mode and inside the compiled graph; there is no hook to miss. ``_model_forward`` is where vLLM's
V1 runner calls the model in ``execute_model`` (and not in its dummy runs):
``tests/test_vllm_units.py`` fails on a vLLM release that changes this.

The RPC methods carry a ``babelgate_`` prefix so they cannot clash with the worker's own; every
tensor-parallel rank computes the same decisions and the caller reads rank 0's answer.
"""

from __future__ import annotations

from typing import Any

from babelgate.server.engine.guard_graph import (
    GuardBuffers,
    GuardedDecoderLayer,
    GuardSpec,
    graph_code_version,
)
from babelgate.server.engine.model import check_layer_indices, check_runner, decoder_layers
from babelgate.server.engine.runtime import GuardRuntime
from babelgate.server.engine.types import GateParams, GuardrailStartupError

WORKER_CLASSES = {
    "cpu": "babelgate.server.engine.worker.GuardedCPUWorker",
    "gpu": "babelgate.server.engine.worker.GuardedGPUWorker",
}


def install_guard(runner: Any, vllm_config: Any) -> GuardRuntime:
    """Wrap the layers the engine's ``GuardSpec`` names and the runner's forward; refuses
    (``GuardrailStartupError``, which stops the engine) anything it was not verified on."""
    data = (vllm_config.additional_config or {}).get("babelgate")
    if data is None:
        raise GuardrailStartupError(
            "babelgate's worker started without a guard spec in additional_config: start "
            "guarded engines through server.engine.startup.prepare"
        )
    if data.get("graph") != graph_code_version():
        raise GuardrailStartupError(
            "the engine's guard spec was written by other babelgate code than this worker runs "
            "(graph version differs): reinstall babelgate in one environment"
        )
    check_runner(runner, vllm_config)
    spec = GuardSpec.from_dict(data)
    model = runner.get_model()
    layers = decoder_layers(model)
    check_layer_indices(layers, spec.layers, "the guard")
    param = next(model.parameters())
    buffers = GuardBuffers(
        spec,
        hidden_size=int(model.config.hidden_size),
        max_tokens=int(runner.max_num_tokens),
        num_slots=int(vllm_config.scheduler_config.max_num_seqs) + 1,
        device=param.device,
        dtype=param.dtype,
    )
    for layer in spec.layers:
        layers[layer] = GuardedDecoderLayer(layers[layer], layer, spec, buffers)
    runtime = GuardRuntime(runner, spec, buffers)
    original = runner._model_forward

    def _model_forward(*args: Any, **kwargs: Any) -> Any:
        runtime.before_forward()
        try:
            return original(*args, **kwargs)
        finally:
            runtime.after_forward()

    runner._model_forward = _model_forward
    return runtime


class GuardWorkerMixin:
    """Puts the guard in at load time; the RPC surface (``server.engine.rpc`` calls it)."""

    _babelgate: GuardRuntime | None = None

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)  # type: ignore[misc]
        self._babelgate = install_guard(self.model_runner, self.vllm_config)  # type: ignore[attr-defined]

    def _babelgate_runtime(self) -> GuardRuntime:
        if self._babelgate is None:
            raise GuardrailStartupError("the guard was not put into this worker's model")
        return self._babelgate

    def babelgate_install(self, gate: dict[str, Any]) -> dict[str, Any]:
        """Load (or replace) the routing gate's values; describe where the guard sits.
        Raises ``GuardrailStartupError`` (sent back to the caller) when the gate does not fit
        the engine's traced shape or the model."""
        runtime = self._babelgate_runtime()
        runtime.install(GateParams.from_wire(gate))
        return self.babelgate_describe()

    def babelgate_describe(self) -> dict[str, Any]:
        runtime = self._babelgate_runtime()
        runner = self.model_runner  # type: ignore[attr-defined]
        runner_cls = type(runner)
        config = self.vllm_config.compilation_config  # type: ignore[attr-defined]
        return {
            "runner": f"{runner_cls.__module__}.{runner_cls.__qualname__}",
            "model": type(runner.get_model()).__name__,
            "layers": list(runtime.spec.read_layers),
            "capture_layers": list(runtime.spec.capture_layers),
            "compilation_mode": str(config.mode),
            "dtype": str(runtime.b.steer_delta.dtype),
            "device": str(runtime.b.steer_delta.device),
        }

    def babelgate_uninstall(self) -> None:
        self._babelgate_runtime().uninstall()

    def babelgate_status(self) -> dict[str, Any]:
        """Whether a gate is loaded, how many real steps carried guarded rows, what is held."""
        runtime = self._babelgate_runtime()
        runtime.refresh()
        return {
            "installed": runtime.gate is not None,
            "layers": list(runtime.spec.read_layers),
            "fires": runtime.fires,
            "host_seconds": runtime.seconds,
            "decisions": runtime.decisions,
            "active": len(runtime.active),
            "finished_unfetched": len(runtime.finished),
            "slots_in_use": len(runtime.slot_of),
        }

    def babelgate_inject_gate_failure(self, on: bool) -> None:
        """Test-only: every guarded request's score is NaN while ``on`` (see
        ``GuardRuntime.inject_gate_failure``)."""
        self._babelgate_runtime().inject_gate_failure(on)

    def babelgate_verdicts(
        self, ids: list[str], release: list[str] | None = None
    ) -> dict[str, Any]:
        """Verdict dicts by babelgate id (only ids the worker has seen); ``release``: ids to
        forget after this read."""
        return self._babelgate_runtime().verdicts(ids, release or [])

    def babelgate_pop_captures(self, ids: list[str]) -> dict[str, bytes]:
        """Captured residuals by capture id (float32 bytes, (n_capture_layers, d)), removed on
        return."""
        return self._babelgate_runtime().pop_captures(ids)


def __getattr__(name: str) -> type:
    """``GuardedCPUWorker`` / ``GuardedGPUWorker``, built when vLLM resolves ``worker_cls``
    (lazy: each platform's worker module imports only on that platform)."""
    if name == "GuardedCPUWorker":
        from vllm.v1.worker.cpu_worker import CPUWorker as base
    elif name == "GuardedGPUWorker":
        from vllm.v1.worker.gpu_worker import Worker as base
    else:
        raise AttributeError(name)
    cls = type(name, (GuardWorkerMixin, base), {"__module__": __name__})
    globals()[name] = cls
    return cls
