"""The guard's maths inside the model's forward: fixed-shape tensor operations on persistent
buffers, traced by torch.compile with the rest of the decoder (and run as-is in eager mode).

Runs in the vLLM worker, inside every forward pass. ``GuardedDecoderLayer`` wraps a decoder layer
the guard reads; it is put in place right after the weights load (``server.engine.worker``), so
vLLM's compilation traces it with the model and no graph exists without it. The per-request
state does not live in Python: like vLLM's LoRA punica wrapper, the runner side
(``server.engine.runtime``) fills per-token and per-slot buffers in place before each step, and
the graph only indexes them. A request owns a *slot*; slot 0 is the no-op slot of padding,
unguarded requests and dummy runs, whose action table row is all zeros, so its rows come out
bit-identical.

Per step, at each layer read by the gate (``read_layers``, ascending, the last one deciding):
- every row's partial gate logit ``stream @ u_j`` (float64) is written (first layer) or added
  (later layers) to a per-token buffer: a multi-layer gate sums its layers inside one forward;
- at the deciding layer, the rows that are their request's last prompt token compare
  ``partial + c`` with their slot's threshold and write the decision (1 harmful, 2 harmless)
  and score into their slot with one fixed-shape ``index_copy_``, only if the slot is still
  undecided (0): decisions freeze, preemption and parallel-sampling siblings never re-decide.
  Rows that write nothing are sent to slot 0, the sink;
- each row reads its slot's decision and its slot's action for it (``action[slot, decision]``:
  0 none, 1 steer, 2 ablate); steer adds ``alpha * v`` on rows at or after the last prompt
  token, ablate projects ``v`` out of the stream on every row; both are masks times vectors,
  with an exactly-zero change for other rows; the changed rows are counted per slot.
At each capture layer the stream of last-prompt-token rows is copied into its slot (the vLLM
activation backend). No data-dependent shape, no host synchronisation, nothing CPU-specific.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Decisions a slot holds, and actions of the per-slot table (``server.engine.runtime`` fills it).
UNDECIDED, HARMFUL, HARMLESS = 0, 1, 2
ACTION_CODES: dict[str, int] = {"none": 0, "steer": 1, "ablate": 2}
NO_OP_SLOT = 0


def graph_code_version() -> str:
    """Hash of this file: part of the compile-cache key of a guarded engine
    (``GuardSpec.additional_config``), so a graph traced from other guard code is never reused."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class GuardSpec:
    """The shape of the guard an engine is built with (fixed at start: it is traced into the
    compiled graph): the layers the gate reads (the last decides and intervenes) and the layers
    captured for the activation backend."""

    read_layers: tuple[int, ...] = ()
    capture_layers: tuple[int, ...] = ()

    @property
    def decision_layer(self) -> int | None:
        return self.read_layers[-1] if self.read_layers else None

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.read_layers) | set(self.capture_layers)))

    def to_dict(self) -> dict[str, Any]:
        return {"read_layers": list(self.read_layers), "capture_layers": list(self.capture_layers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardSpec:
        return cls(
            tuple(int(x) for x in data.get("read_layers", ())),
            tuple(sorted({int(x) for x in data.get("capture_layers", ())})),
        )

    def additional_config(self) -> dict[str, Any]:
        """vLLM ``additional_config`` entry: carries the spec to the worker and, being part of
        ``VllmConfig.compute_hash``, keys the compile cache on the guard's shape and code."""
        return {"babelgate": {**self.to_dict(), "graph": graph_code_version()}}


class GuardBuffers(nn.Module):
    """The persistent device buffers the graph reads and writes (allocated once, filled in
    place: their addresses never change, as CUDA graphs require)."""

    def __init__(
        self,
        spec: GuardSpec,
        hidden_size: int,
        max_tokens: int,
        num_slots: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        d, t, s = hidden_size, max_tokens, num_slots

        def buf(name: str, *shape: int, kind: torch.dtype, fill: float = 0) -> None:
            self.register_buffer(
                name, torch.full(shape, fill, dtype=kind, device=device), persistent=False
            )

        # Per token, filled by the runner before each step (slot 0 outside real steps).
        buf("slot", t, kind=torch.int64)
        buf("last", t, kind=torch.bool)  # the row is its request's last prompt token
        buf("after", t, kind=torch.bool)  # its position is at or after the last prompt token
        buf("partial", t, kind=torch.float64)  # gate logit summed over the layers read so far
        # Per slot: set by the runner when a slot is assigned, decided by the graph.
        buf("threshold", s, kind=torch.float64)
        buf("action", s * 3, kind=torch.int64)  # [slot, decision] -> action code, flattened
        buf("decision", s, kind=torch.int64)
        buf("score", s, kind=torch.float64, fill=float("nan"))
        buf("positions", s, kind=torch.int64)
        # The gate (values loaded by ``babelgate_install``; the shape is the spec's).
        buf("u", max(len(spec.read_layers), 1), d, kind=torch.float64)
        buf("c", 1, kind=torch.float64)
        buf("v", d, kind=torch.float32)
        buf("steer_delta", d, kind=dtype)
        buf("captures", max(len(spec.capture_layers), 1), s, d, kind=torch.float32)


def _gate_partial(
    b: GuardBuffers, j: int, first: bool, hidden: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """Partial gate logits of every row after read layer ``j`` (written to ``b.partial``)."""
    t = hidden.shape[0]
    part = (hidden.double() + residual.double()) @ b.u[j]
    if first:
        b.partial[:t].copy_(part)
    else:
        b.partial[:t].add_(part)
    return b.partial[:t]


def _decide(b: GuardBuffers, partial: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Freeze the decision and score of slots whose last prompt token is in this step; each
    row's decision (after this step's writes)."""
    t = slot.shape[0]
    score = partial + b.c
    current = b.decision[slot]
    write = b.last[:t] & (current == UNDECIDED)
    target = torch.where(write, slot, torch.zeros_like(slot))  # the others write to the sink
    decided = torch.where(score >= b.threshold[slot], HARMFUL, HARMLESS)
    b.decision.index_copy_(0, target, torch.where(write, decided, current))
    b.score.index_copy_(0, target, torch.where(write, score, b.score[slot]))
    return b.decision[slot]


def _intervene(
    b: GuardBuffers,
    hidden: torch.Tensor,
    stream: torch.Tensor,
    slot: torch.Tensor,
    decision: torch.Tensor,
) -> torch.Tensor:
    """Steer or ablate each row as its slot's action table says; count the rows changed."""
    t = slot.shape[0]
    action = b.action[slot * 3 + decision]
    steer = (action == ACTION_CODES["steer"]) & b.after[:t]
    ablate = action == ACTION_CODES["ablate"]
    b.positions.index_add_(0, slot, (steer | ablate).to(torch.int64))
    proj = stream @ b.v
    removed = (ablate.to(torch.float32) * proj)[:, None] * b.v[None, :]
    added = steer.to(hidden.dtype)[:, None] * b.steer_delta[None, :]
    return hidden + added - removed.to(hidden.dtype)


class GuardedDecoderLayer(nn.Module):
    """A decoder layer followed by the guard's maths for that layer (see module docstring).

    Holds the original layer as ``inner`` (its weights are already loaded) and the engine's
    shared ``GuardBuffers``; the layer's role (read index, deciding, capture index) is fixed
    Python state, so each wrapped layer traces to its own fixed sequence of tensor ops.
    """

    def __init__(self, inner: nn.Module, layer: int, spec: GuardSpec, buffers: GuardBuffers):
        super().__init__()
        self.inner = inner
        self.guard = buffers
        self.layer = layer
        self.read_index = spec.read_layers.index(layer) if layer in spec.read_layers else None
        self.decides = layer == spec.decision_layer
        self.capture_index = (
            spec.capture_layers.index(layer) if layer in spec.capture_layers else None
        )

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.inner(*args, **kwargs)
        b = self.guard
        slot = b.slot[: hidden.shape[0]]
        if self.capture_index is not None:
            target = torch.where(b.last[: hidden.shape[0]], slot, torch.zeros_like(slot))
            b.captures[self.capture_index].index_copy_(0, target, hidden.float() + residual.float())
        if self.read_index is None:
            return hidden, residual
        partial = _gate_partial(b, self.read_index, self.read_index == 0, hidden, residual)
        if not self.decides:
            return hidden, residual
        decision = _decide(b, partial, slot)
        stream = hidden.float() + residual.float()
        return _intervene(b, hidden, stream, slot, decision), residual
