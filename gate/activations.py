"""The activation-backend contract: residual-stream vectors at the post-instruction token.

Runs in any process. Both backends (``gate.hf.backend.TransformersBackend`` and
``server.engine.vllm_backend.VLLMBackend``) implement this protocol, so calibration and evaluation
never care which engine produced the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from babelgate.gate.artifact import ModelInfo


@runtime_checkable
class ActivationBackend(Protocol):
    """A model that can report its residual stream at the last prompt token.

    ``activations`` returns float32 ``(n_prompts, n_layers_selected, hidden_size)``: for each
    prompt (one user turn in the model's chat template, generation prompt added, no system
    prompt of ours) the output of decoder block ``L`` (Hugging Face ``hidden_states[L + 1]``) at
    the last prompt token, for every ``L`` in ``layers`` (all layers when None).
    """

    model_info: ModelInfo
    num_layers: int
    hidden_size: int

    def activations(
        self,
        prompts: Sequence[str],
        layers: Sequence[int] | None = None,
        *,
        batch_size: int = 16,
        progress: bool = True,
    ) -> np.ndarray: ...


def check_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Validate requested layer indices against the model depth; None means all layers."""
    if layers is None:
        return list(range(num_layers))
    chosen = [int(x) for x in layers]
    bad = [x for x in chosen if not 0 <= x < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: this model has layers 0..{num_layers - 1}")
    if not chosen:
        raise ValueError("no layers requested")
    return chosen


def check_finite(acts: np.ndarray, what: str = "activations") -> np.ndarray:
    """Refuse non-finite activations (a broken dtype or model), naming how many rows are bad."""
    if not np.isfinite(acts).all():
        rows = int((~np.isfinite(acts.reshape(acts.shape[0], -1))).any(axis=1).sum())
        raise ValueError(
            f"{rows} of {acts.shape[0]} prompts gave non-finite {what}: the model overflowed "
            "(try --dtype float32) or its weights are corrupt"
        )
    return acts
