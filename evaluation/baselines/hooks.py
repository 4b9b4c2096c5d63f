"""Eager forward hooks for the baselines (AdaSteer, CAST, the fitting capture): the row map of
a step and the hook installation.

Runs in the vLLM worker of the evaluation's engine. The baselines keep per-request Python state
(running sums over chunked prefills, coefficients per request) and index rows with
data-dependent shapes, so they run as Python forward hooks and need ``enforce_eager=True``
(``evaluation.engine`` starts its engine so; a hook registered after start never fires in a
compiled graph). babelgate's own routing does not use this: it is traced into the model
(``server.engine.guard_graph``). A pre-hook on the first hooked layer builds the step's row
map once per forward; one forward hook per needed layer calls the interventions.
``execute_model`` is wrapped only to learn the scheduler's token count of the step, which tells
real forwards from dummy/profiling runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from babelgate.server.engine.model import check_layer_indices, check_runner, decoder_layers
from babelgate.server.engine.step import batch_layout, extra_args
from babelgate.server.engine.types import GuardrailStartupError


@dataclass(frozen=True)
class RowSpan:
    """One request's rows in the current forward: rows ``start:stop`` hold positions
    ``first_pos:first_pos + (stop - start)``; its prompt has ``num_prompt`` tokens."""

    req_id: str
    start: int
    stop: int
    first_pos: int
    num_prompt: int
    extra: dict[str, Any]

    @property
    def last_prompt_row(self) -> int | None:
        """Row of the last prompt token if this step processes it, else None."""
        offset = self.num_prompt - 1 - self.first_pos
        return self.start + offset if 0 <= offset < self.stop - self.start else None

    def rows_from_position(self, position: int) -> range:
        """Rows of this span whose absolute position is >= ``position``."""
        return range(max(self.start, self.start + position - self.first_pos), self.stop)


def read_step(runner: Any, expected_rows: int | None) -> list[RowSpan] | None:
    """Row spans of the requests that carry ``extra_args`` in the forward about to run; None
    outside a real scheduled step (``expected_rows`` None or not the runner's row count)."""
    if expected_rows is None:
        return None
    layout = batch_layout(runner, expected_rows)
    if layout is None:
        return None
    spans = []
    for i, req_id in enumerate(layout.req_ids):
        extra = extra_args(runner, req_id)
        if extra:
            spans.append(
                RowSpan(
                    req_id,
                    int(layout.starts[i]),
                    int(layout.stops[i]),
                    int(layout.first_pos[i]),
                    int(layout.num_prompt[i]),
                    extra,
                )
            )
    return spans


class Intervention(Protocol):
    """A per-request strategy hooked at the output of some decoder layers: called with the
    layer's ``(hidden, residual)`` (their sum is the residual stream) and the step's spans;
    writing ``hidden`` in place shifts the stream."""

    name: str

    def layers(self) -> tuple[int, ...]: ...

    def on_layer(
        self, layer: int, hidden: torch.Tensor, residual: torch.Tensor, step: list[RowSpan]
    ) -> None: ...

    def on_requests_gone(self, req_ids: set[str]) -> None: ...


def check_eager(vllm_config: Any) -> None:
    """Python hooks fire on every step only in eager mode."""
    # lazy: vllm is imported only in the worker
    from vllm.config import CompilationMode

    if vllm_config.compilation_config.mode != CompilationMode.NONE:
        raise GuardrailStartupError(
            "the baselines run as Python forward hooks, which never fire in vLLM's compiled "
            "graphs: start the evaluation engine with enforce_eager=True"
        )


class BaselineHooks:
    """The hooks of a set of interventions on one model runner; ``remove`` takes them off."""

    def __init__(self, runner: Any, vllm_config: Any, interventions: list[Intervention]) -> None:
        check_runner(runner, vllm_config)
        check_eager(vllm_config)
        self.runner = runner
        self.interventions = interventions
        self.fires = 0
        self.expected_rows: int | None = None
        self._step: list[RowSpan] | None = None
        self._seen: set[str] = set()
        self._handles: list[Any] = []
        self._original_execute: Callable[..., Any] | None = None
        layers = decoder_layers(runner.get_model())
        wanted: dict[int, list[Intervention]] = {}
        for intervention in interventions:
            check_layer_indices(layers, intervention.layers(), intervention.name)
            for layer in intervention.layers():
                wanted.setdefault(layer, []).append(intervention)
        self.layers = sorted(wanted)
        if not self.layers:
            return
        # The decoder stack's own hooks never fire (vLLM's compile decorator calls its
        # ``forward`` directly), so the row map is built before the first hooked layer runs.
        first = layers[self.layers[0]]
        self._handles.append(first.register_forward_pre_hook(self._pre_forward))
        for layer, users in wanted.items():
            self._handles.append(layers[layer].register_forward_hook(self._make_hook(layer, users)))
        self._wrap_execute_model()

    def _wrap_execute_model(self) -> None:
        original = self.runner.execute_model

        def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            self.expected_rows = int(scheduler_output.total_num_scheduled_tokens)
            try:
                return original(scheduler_output, *args, **kwargs)
            finally:
                self.expected_rows = None

        self._original_execute = original
        self.runner.execute_model = execute_model

    def _pre_forward(self, _module: torch.nn.Module, _args: Any) -> None:
        requests = self.runner.requests
        gone = {rid for rid in self._seen if rid not in requests}
        if gone:
            self._seen -= gone
            for intervention in self.interventions:
                intervention.on_requests_gone(gone)
        self._step = read_step(self.runner, self.expected_rows)
        if self._step:
            self._seen.update(span.req_id for span in self._step)

    def _make_hook(self, layer: int, users: list[Intervention]):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            step = self._step
            if not step:
                return
            self.fires += 1
            hidden, residual = output
            for intervention in users:
                intervention.on_layer(layer, hidden, residual, step)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._original_execute is not None:
            self.runner.execute_model = self._original_execute
            self._original_execute = None
