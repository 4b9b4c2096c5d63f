"""The babelgate methods mixed into vLLM's worker (``worker_extension_cls``).

Runs in the vLLM worker process; the engine side calls these through ``collective_rpc``
(one call per worker; tensor-parallel ranks compute identical decisions, the caller reads rank
0's answer). Method names carry a ``babelgate_`` prefix so they cannot clash with the worker's.
"""

from __future__ import annotations

from typing import Any

from server.engine.hooks import GuardHooks, check_layers, check_runner
from server.engine.interventions import Intervention, ResidualCapture, RoutingIntervention
from server.engine.types import GateParams, GuardrailStartupError

WORKER_EXTENSION = "server.engine.worker_extension.BabelgateWorkerExtension"


class BabelgateWorkerExtension:
    """Installs, removes and reports on the guard's hooks inside this worker."""

    _babelgate_hooks: GuardHooks | None = None
    _babelgate_routing: RoutingIntervention | None = None
    _babelgate_capture: ResidualCapture | None = None

    def babelgate_install(
        self, gate: dict[str, Any] | None = None, capture_layers: list[int] | None = None
    ) -> dict[str, Any]:
        """Install (or replace) the routing gate and/or the residual capture; describe the hooks.

        A part not given is kept as installed. Everything is validated before the old hooks
        come off, so a refused install leaves the previous guard in place. Raises
        ``GuardrailStartupError`` (sent back to the caller) for unsupported setups.
        """
        runner = self.model_runner  # type: ignore[attr-defined]
        check_runner(runner, self.vllm_config)  # type: ignore[attr-defined]
        model = runner.get_model()
        param = next(model.parameters())
        routing, capture = self._babelgate_routing, self._babelgate_capture
        if gate is not None:
            params = GateParams.from_wire(gate)
            hidden = int(model.config.hidden_size)
            if params.hidden_size != hidden:
                raise GuardrailStartupError(
                    f"gate direction has size {params.hidden_size} but the model's hidden size "
                    f"is {hidden}: the artifact belongs to another model"
                )
            routing = RoutingIntervention(params, param.device, param.dtype)
        if capture_layers:
            capture = ResidualCapture(capture_layers)
        interventions: list[Intervention] = [i for i in (routing, capture) if i is not None]
        if not interventions:
            raise ValueError("nothing to install: pass a gate and/or capture layers")
        check_layers(model, interventions)
        self.babelgate_uninstall()
        hooks = GuardHooks(runner, interventions)
        self._babelgate_hooks = hooks
        self._babelgate_routing = routing
        self._babelgate_capture = capture
        runner_cls = type(runner)
        return {
            "runner": f"{runner_cls.__module__}.{runner_cls.__qualname__}",
            "model": type(model).__name__,
            "layers": hooks.layers,
            "dtype": str(param.dtype),
            "device": str(param.device),
        }

    def babelgate_uninstall(self) -> None:
        if self._babelgate_hooks is not None:
            self._babelgate_hooks.remove()
        self._babelgate_hooks = None
        self._babelgate_routing = None
        self._babelgate_capture = None

    def babelgate_status(self) -> dict[str, Any]:
        """Whether hooks are installed, how often they fired on real steps, and what they hold."""
        hooks, routing = self._babelgate_hooks, self._babelgate_routing
        return {
            "installed": hooks is not None,
            "layers": hooks.layers if hooks else [],
            "fires": hooks.fires if hooks else 0,
            "hook_seconds": hooks.seconds if hooks else 0.0,
            "decisions": routing.decisions if routing else 0,
            "active": len(routing.active) if routing else 0,
            "finished_unfetched": len(routing.finished) if routing else 0,
        }

    def babelgate_verdicts(
        self, ids: list[str], release: list[str] | None = None
    ) -> dict[str, Any]:
        """Verdict dicts by babelgate id (only ids the worker has seen); ``release``: ids to
        forget after this read."""
        if self._babelgate_routing is None:
            raise GuardrailStartupError("no gate installed in this worker: call babelgate_install")
        return self._babelgate_routing.verdicts(ids, release or [])

    def babelgate_pop_captures(self, ids: list[str]) -> dict[str, bytes]:
        """Captured residuals by capture id (float32 bytes, (n_layers, d)), removed on return."""
        if self._babelgate_capture is None:
            raise GuardrailStartupError("no capture installed in this worker")
        return self._babelgate_capture.pop(ids)
