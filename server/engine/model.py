"""What babelgate checks about the model and the runner before it wraps any layer.

Runs in the vLLM worker (``server.engine.worker``, at load) and, for the architecture names, in
the process that starts the engine (``server.engine.startup``, before vLLM starts). The guard is
verified on vLLM's V1 model runner (Model Runner V2 keeps per-request state elsewhere) without
pipeline parallelism, and on the Llama-, Qwen2- and Gemma2-style decoders named below. For all
three, vLLM's decoder layer returns ``(hidden, residual)`` whose sum is the residual stream at
the block output (Gemma2 applies ``post_feedforward_layernorm`` to ``hidden`` before returning,
so the sum is still Hugging Face's block output; checked in ``models/gemma2.py``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from babelgate.server.engine.step import RUNNER_ATTRIBUTES
from babelgate.server.engine.types import GuardrailStartupError

# Model class -> decoder layer class, for the architectures whose residual handling we verified.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "LlamaDecoderLayer",
    "Qwen2ForCausalLM": "Qwen2DecoderLayer",
    "Gemma2ForCausalLM": "Gemma2DecoderLayer",
}


def check_runner(runner: Any, vllm_config: Any) -> None:
    """Refuse runners and layouts the row map was not verified on."""
    # lazy: vllm is imported only where an engine runs (the API-only tests run without it)
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    cls = type(runner)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(runner, GPUModelRunner) or any(
        not hasattr(runner, a) for a in (*RUNNER_ATTRIBUTES, "_model_forward", "max_num_tokens")
    ):
        raise GuardrailStartupError(
            f"model runner {name} is not vLLM's V1 model runner: babelgate's guard reads the V1 "
            "runner's batch layout. Start vLLM with VLLM_USE_V2_MODEL_RUNNER=0 (babelgate sets "
            "it before any engine starts unless the environment overrides it)"
        )
    if vllm_config.parallel_config.pipeline_parallel_size != 1:
        raise GuardrailStartupError(
            "pipeline parallelism is not supported by babelgate: use tensor parallelism or one "
            "device (pipeline_parallel_size=1)"
        )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers, refusing architectures not verified by name."""
    arch = type(model).__name__
    expected_layer = SUPPORTED_ARCHITECTURES.get(arch)
    if expected_layer is None:
        raise GuardrailStartupError(
            f"architecture {arch} is not supported by babelgate (supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}): serve a Llama-, Qwen2- or Gemma2-style "
            "model, or add and test the architecture in server/engine/model.py"
        )
    stack = getattr(model, "model", None)
    layers = getattr(stack, "layers", None)
    if stack is None or layers is None:
        raise GuardrailStartupError(f"{arch} has no model.layers: vLLM changed its layout")
    found = {type(getattr(layer, "inner", layer)).__name__ for layer in layers}
    if found != {expected_layer}:
        raise GuardrailStartupError(
            f"{arch} decoder layers are {sorted(found)}, expected only {expected_layer}: this "
            "vLLM build lays the model out differently than babelgate was verified on"
        )
    return layers


def check_layer_indices(layers: nn.ModuleList, wanted: tuple[int, ...], what: str) -> None:
    """Refuse layer indices the model does not have (an artifact of another model)."""
    bad = [layer for layer in wanted if not 0 <= layer < len(layers)]
    if bad:
        raise GuardrailStartupError(
            f"{what} needs layer(s) {bad}, but the model has layers 0..{len(layers) - 1}: the "
            "gate artifact belongs to another model; recalibrate for this one"
        )
