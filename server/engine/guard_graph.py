"""The guard's maths inside the model's forward: fixed-shape tensor operations on persistent
buffers, traced by torch.compile with the rest of the decoder (and run as-is in eager mode).

Runs in the vLLM worker, inside every forward pass (and in ``bench/gpu_guard_check.py``, which
loads this file alone: it imports only torch). ``GuardedDecoderLayer`` wraps a decoder layer the
guard reads; it is put in place right after the weights load (``server.engine.worker``), so
vLLM's compilation traces it with the model and no graph exists without it. The per-request
state does not live in Python: like vLLM's LoRA punica wrapper, the runner side
(``server.engine.runtime``) fills per-token and per-slot buffers in place before each step
(``GuardBuffers.load_step``), and the graph only indexes them. A request owns a *slot*; slot 0 is
the no-op slot of padding, unguarded requests and dummy runs, whose action table row is all
zeros, so its rows come out bit-identical.

Per step, at each layer read by the gate (``read_layers``, ascending, the last one deciding):
- the stream (``hidden + residual``) of each slot's last prompt token in this step is gathered
  with a fixed-shape index, one entry per slot (``last_row``, as vLLM's ``logits_indices``
  gathers the rows that sample); slots without one gather row 0 and are masked off
  (``has_last``). Their partial gate logit ``stream @ u_j`` is computed in float32 and written
  (first layer) or added (later layers) per slot: a multi-layer gate sums its layers inside one
  forward, and no other row is touched;
- at the deciding layer, each slot with a last prompt token here and no decision yet takes
  ``score = partial + c`` and compares it in float64 with its thresholds: HARMFUL at or above
  ``threshold``, HARMLESS below ``harmless_below``, UNSURE between (the abstain band, empty when
  both are equal; a NaN score is HARMLESS, as without a band). The decision and score are
  written elementwise per slot (``torch.where``): decisions freeze, preemption never re-decides,
  and no index is written twice (parallel-sampling siblings share a slot; the runner gathers one
  row per slot);
- each row reads its slot's decision and its slot's action for it (``action[slot, decision]``:
  0 none, 1 steer, 2 ablate); steer adds ``alpha * v`` on rows at or after the last prompt
  token, ablate projects ``v`` out of the stream on every row; both are masks times vectors,
  with an exactly-zero change for other rows; the changed rows are counted per slot.
At each capture layer the gathered streams are kept per slot (the vLLM activation backend).
No data-dependent shape, no host synchronisation, nothing CPU-specific.

Precision: the dot products run in float32 (float64 runs at 1/64 of the rate on many GPUs).
float64 is kept for the per-slot score, ``c`` and the thresholds (a few hundred values a step):
a float32 threshold rounds, and ``tests/test_guard_graph.py`` shows a score just under a
threshold decided harmful when the comparison is made in float32.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Decisions a slot holds, and actions of the per-slot table (``server.engine.runtime`` fills it).
UNDECIDED, HARMFUL, HARMLESS, UNSURE = 0, 1, 2, 3
DECISION_NAMES: dict[int, str] = {HARMFUL: "harmful", HARMLESS: "harmless", UNSURE: "unsure"}
NUM_DECISIONS = 4  # columns of the action table: undecided, harmful, harmless, unsure
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


def upload(dst: torch.Tensor, values: torch.Tensor) -> None:
    """Copy host values into the start of a device buffer without waiting for the device.

    On CUDA the values go through pinned memory from torch's caching host allocator, which
    keeps the block until the copy has run, so the caller may reuse its array at once (a
    pageable source may make the driver wait for the stream)."""
    if dst.device.type == "cuda":
        values = values.pin_memory()
    dst[: values.shape[0]].copy_(values, non_blocking=True)


class GuardBuffers(nn.Module):
    """The persistent device buffers the graph reads and writes (allocated once, filled in
    place: their addresses never change, as CUDA graphs require), and the three writes the host
    makes to them (``load_tables``, ``load_step``, ``clear_step``)."""

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
        buf("after", t, kind=torch.bool)  # its position is at or after the last prompt token
        # Per slot, filled before each step (row 0 and False outside real steps): the row of the
        # slot's last prompt token in this step, whether it has one.
        buf("last_row", s, kind=torch.int64)
        buf("has_last", s, kind=torch.bool)
        buf("partial", s, kind=torch.float32)  # gate logit summed over the layers read so far
        # Per slot: set by the runner when a slot is assigned, decided by the graph.
        buf("threshold", s, kind=torch.float64)
        buf("harmless_below", s, kind=torch.float64)
        buf("action", s * NUM_DECISIONS, kind=torch.int64)  # [slot, decision] -> action code
        buf("decision", s, kind=torch.int64)
        buf("score", s, kind=torch.float64, fill=float("nan"))
        buf("positions", s, kind=torch.int64)
        # The gate (values loaded by ``babelgate_install``; the shape is the spec's).
        buf("u", max(len(spec.read_layers), 1), d, kind=torch.float32)
        buf("c", 1, kind=torch.float64)
        buf("v", d, kind=torch.float32)
        buf("steer_delta", d, kind=dtype)
        buf("captures", max(len(spec.capture_layers), 1), s, d, kind=torch.float32)

    def load_tables(
        self,
        threshold: torch.Tensor,
        harmless_below: torch.Tensor,
        action: torch.Tensor,
        fresh: list[int],
    ) -> None:
        """Per-slot tables, whole (host tensors), and a clean start for the ``fresh`` slots
        (just assigned): undecided, no score, nothing counted."""
        upload(self.threshold, threshold)
        upload(self.harmless_below, harmless_below)
        upload(self.action, action)
        if fresh:
            idx = torch.tensor(fresh, dtype=torch.int64).to(self.decision.device)
            self.decision.index_fill_(0, idx, UNDECIDED)
            self.score.index_fill_(0, idx, float("nan"))
            self.positions.index_fill_(0, idx, 0)

    def load_step(
        self,
        slot: torch.Tensor,
        after: torch.Tensor,
        last_row: torch.Tensor,
        has_last: torch.Tensor,
    ) -> None:
        """The step's per-token slots and at-or-after masks (its rows only) and per-slot
        last-prompt rows (every slot), from host tensors."""
        upload(self.slot, slot)
        upload(self.after, after)
        upload(self.last_row, last_row)
        upload(self.has_last, has_last)

    def clear_step(self, rows: int) -> None:
        """Back to the no-op state after a step: dummy runs, padding and CUDA-graph capture
        read slot 0 and gather row 0 for nobody."""
        self.slot[:rows].zero_()
        self.last_row.zero_()
        self.has_last.zero_()


def _gathered_stream(b: GuardBuffers, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The float32 stream at each slot's last prompt token in this step ``(num_slots, d)``."""
    return hidden[b.last_row].float() + residual[b.last_row].float()


def _gate_partial(b: GuardBuffers, j: int, first: bool, rows: torch.Tensor) -> None:
    """Partial gate logits per slot after read layer ``j`` (written to ``b.partial``)."""
    part = rows @ b.u[j]
    if first:
        b.partial.copy_(part)
    else:
        b.partial.add_(part)


def _decide(b: GuardBuffers) -> torch.Tensor:
    """Freeze the decision and score of slots whose last prompt token is in this step; every
    slot's decision (after this step's writes)."""
    score = b.partial.double() + b.c
    unsure_or_harmless = torch.where(score >= b.harmless_below, UNSURE, HARMLESS)
    decided = torch.where(score >= b.threshold, HARMFUL, unsure_or_harmless)
    write = b.has_last & (b.decision == UNDECIDED)
    b.score.copy_(torch.where(write, score, b.score))
    b.decision.copy_(torch.where(write, decided, b.decision))
    return b.decision


def _intervene(
    b: GuardBuffers,
    hidden: torch.Tensor,
    stream: torch.Tensor,
    slot: torch.Tensor,
    decision: torch.Tensor,
) -> torch.Tensor:
    """Steer or ablate each row as its slot's action table says; count the rows changed."""
    t = slot.shape[0]
    action = b.action[slot * NUM_DECISIONS + decision]
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
        rows = _gathered_stream(b, hidden, residual)
        if self.capture_index is not None:
            kept = b.captures[self.capture_index]
            kept.copy_(torch.where(b.has_last[:, None], rows, kept))
        if self.read_index is None:
            return hidden, residual
        _gate_partial(b, self.read_index, self.read_index == 0, rows)
        if not self.decides:
            return hidden, residual
        slot = b.slot[: hidden.shape[0]]
        decision = _decide(b)[slot]
        stream = hidden.float() + residual.float()
        return _intervene(b, hidden, stream, slot, decision), residual
