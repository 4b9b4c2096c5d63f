"""Installing interventions on a vLLM model: checks, forward hooks, the per-step row map.

Runs in the vLLM worker. ``install`` refuses anything it has not been verified on: a runner that
is not the V1 model runner (Model Runner V2 keeps per-request state elsewhere), compiled mode
(a hook registered after start never fires there: VLLM_NOTES), pipeline parallelism, and
architectures other than the Llama-, Qwen2- and Gemma2-style decoders named below. For all
three, vLLM's decoder layer returns ``(hidden, residual)`` whose sum is the residual stream at
the block output (Gemma2 applies ``post_feedforward_layernorm`` to ``hidden`` before returning,
so the sum is still Hugging Face's block output; checked in ``models/gemma2.py``).

A pre-hook on the first hooked layer builds the step's row map once per forward; one forward
hook per needed layer calls the interventions. ``execute_model`` is wrapped only to learn the
scheduler's token count of the step, which tells real forwards from dummy/profiling runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from server.engine.interventions import Intervention
from server.engine.step import RUNNER_ATTRIBUTES, RowSpan, read_step
from server.engine.types import GuardrailStartupError

# Model class -> decoder layer class, for the architectures whose residual handling we verified.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "LlamaDecoderLayer",
    "Qwen2ForCausalLM": "Qwen2DecoderLayer",
    "Gemma2ForCausalLM": "Gemma2DecoderLayer",
}


def check_runner(runner: Any, vllm_config: Any) -> None:
    """Refuse runners and modes the row map and hooks were not verified on."""
    from vllm.config import CompilationMode
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    cls = type(runner)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(runner, GPUModelRunner) or any(
        not hasattr(runner, a) for a in RUNNER_ATTRIBUTES
    ):
        raise GuardrailStartupError(
            f"model runner {name} is not vLLM's V1 model runner: babelgate's per-request hook "
            "reads the V1 runner's batch layout. Start vLLM with VLLM_USE_V2_MODEL_RUNNER=0 "
            "(babelgate sets it before any engine starts unless the environment overrides it)"
        )
    if vllm_config.compilation_config.mode != CompilationMode.NONE:
        raise GuardrailStartupError(
            f"vLLM runs in compiled mode ({vllm_config.compilation_config.mode}): a hook "
            "registered after start never fires in compiled graphs. Start with "
            "enforce_eager=True"
        )
    if vllm_config.parallel_config.pipeline_parallel_size != 1:
        raise GuardrailStartupError(
            "pipeline parallelism is not supported by babelgate: use tensor parallelism or one "
            "device (pipeline_parallel_size=1)"
        )


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers, refusing architectures not verified by name."""
    arch = type(model).__name__
    expected_layer = SUPPORTED_ARCHITECTURES.get(arch)
    if expected_layer is None:
        raise GuardrailStartupError(
            f"architecture {arch} is not supported by babelgate (supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}): serve a Llama-, Qwen2- or Gemma2-style "
            "model, or add and test the architecture in server/engine/hooks.py"
        )
    stack = getattr(model, "model", None)
    layers = getattr(stack, "layers", None)
    if stack is None or layers is None:
        raise GuardrailStartupError(f"{arch} has no model.layers: vLLM changed its layout")
    found = {type(layer).__name__ for layer in layers}
    if found != {expected_layer}:
        raise GuardrailStartupError(
            f"{arch} decoder layers are {sorted(found)}, expected only {expected_layer}: this "
            "vLLM build lays the model out differently than babelgate was verified on"
        )
    return layers


def check_layers(
    model: torch.nn.Module, interventions: list[Intervention]
) -> dict[int, list[Intervention]]:
    """Layer -> interventions hooked there, refusing layers the model does not have."""
    layers = decoder_layers(model)
    wanted: dict[int, list[Intervention]] = {}
    for intervention in interventions:
        for layer in intervention.layers():
            if not 0 <= layer < len(layers):
                raise GuardrailStartupError(
                    f"{intervention.name} needs layer {layer}, but the model has layers "
                    f"0..{len(layers) - 1}: the gate artifact belongs to another model; "
                    "recalibrate for this one"
                )
            wanted.setdefault(layer, []).append(intervention)
    return wanted


class GuardHooks:
    """The hooks of a set of interventions on one model runner; ``remove`` takes them off."""

    def __init__(self, runner: Any, interventions: list[Intervention]) -> None:
        self.runner = runner
        self.interventions = interventions
        self.fires = 0
        self.seconds = 0.0  # wall time spent inside the hooks on real steps
        self.expected_rows: int | None = None
        self._step: list[RowSpan] | None = None
        self._seen: set[str] = set()
        self._handles: list[Any] = []
        self._original_execute: Callable[..., Any] | None = None
        layers = decoder_layers(runner.get_model())
        wanted = check_layers(runner.get_model(), interventions)
        self.layers = sorted(wanted)
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
        began = time.perf_counter()
        requests = self.runner.requests
        gone = {rid for rid in self._seen if rid not in requests}
        if gone:
            self._seen -= gone
            for intervention in self.interventions:
                intervention.on_requests_gone(gone)
        self._step = read_step(self.runner, self.expected_rows)
        if self._step:
            self._seen.update(span.req_id for span in self._step)
        self.seconds += time.perf_counter() - began

    def _make_hook(self, layer: int, users: list[Intervention]):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            step = self._step
            if not step:
                return
            began = time.perf_counter()
            self.fires += 1
            hidden, residual = output
            for intervention in users:
                intervention.on_layer(layer, hidden, residual, step)
            self.seconds += time.perf_counter() - began

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._original_execute is not None:
            self.runner.execute_model = self._original_execute
            self._original_execute = None
