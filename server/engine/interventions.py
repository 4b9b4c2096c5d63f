"""Per-request interventions on the residual stream: the strategy interface and its users.

Runs in the vLLM worker. An ``Intervention`` names the decoder layers it needs and is called at
the output of each of them with the layer's ``(hidden, residual)`` (their sum is the residual
stream, Hugging Face ``hidden_states[L + 1]``) and the step's ``RowSpan`` list. It reads and
writes only the rows of the requests it owns and keeps its per-request state itself, keyed by
an id carried in the request's ``extra_args``, so every request in a mixed batch gets its own
decision. Writing ``hidden`` in place shifts the stream by the same amount; the next layer's
fused add-norm consumes both.

Implemented here:
- ``RoutingIntervention`` (METHOD §5): at layer L, at the last prompt token, score the gate with
  the request's own threshold (a multi-layer gate adds the dot products of its earlier layers,
  taken in the same forward step, to layer L's) and freeze the decision (keyed by the babelgate
  id: preemption, recomputation and parallel-sampling siblings reuse it, never re-decide).
  Harmful: add ``alpha * v`` at the last prompt token and every generated token. Harmless:
  project ``v`` out at every row the request has in this and later steps.
- ``ResidualCapture``: copies the stream at the last prompt token at several layers (the vLLM
  activation backend).
AdaSteer and CAST fit the same interface: all-layer hooks, coefficients or condition scores
computed from the last-prompt-token rows and stored per request, additions on later rows.

Deviation from the reference (which ablates every prompt position in a separate pass): under
``routing``, prompt rows processed *before* the decision are unreachable — earlier chunks of a
chunked prefill (prompts longer than ``max_num_batched_tokens``) have already run un-ablated
when the last chunk decides. Prefix-cache reuse does not add to this: routing requests get a
cache salt unique to the request (see ``GuardParams.cache_salt``), so they never read KV
computed by another request. ``always-ablate`` needs no decision and ablates every row.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from server.engine.step import RowSpan
from server.engine.types import EXTRA_ARGS_KEY, GateParams, Verdict, policy_intervention

CAPTURE_KEY = "babelgate_capture"
# Finished verdicts nobody fetched are dropped oldest-first beyond this many.
MAX_FINISHED_VERDICTS = 65536


class Intervention(Protocol):
    """A per-request strategy hooked at the output of some decoder layers."""

    name: str

    def layers(self) -> tuple[int, ...]: ...

    def on_layer(
        self, layer: int, hidden: torch.Tensor, residual: torch.Tensor, step: list[RowSpan]
    ) -> None: ...

    def on_requests_gone(self, req_ids: set[str]) -> None: ...


def _rows_tensor(rows: list[range], device: torch.device) -> torch.Tensor | None:
    if not rows:
        return None
    flat = np.concatenate([np.arange(r.start, r.stop) for r in rows if len(r)] or [[]])
    if flat.size == 0:
        return None
    return torch.from_numpy(flat.astype(np.int64)).to(device)


@dataclass
class GuardRecord:
    """The frozen guard state of one request (all its runner-side ids)."""

    id: str
    language: str
    policy: str
    threshold: float
    threshold_source: str
    score: float | None = None
    partial: float = 0.0  # multi-layer gates: dot products of the earlier layers read
    harmful: bool | None = None
    positions: int = 0
    runner_ids: set[str] = field(default_factory=set)
    released: bool = False

    @property
    def action(self) -> str | None:
        """ "steer", "ablate", "none", or None while a routing decision is pending."""
        return policy_intervention(self.policy, self.harmful)

    def verdict(self) -> Verdict:
        return Verdict(
            id=self.id,
            language=self.language,
            policy=self.policy,
            threshold=self.threshold,
            threshold_source=self.threshold_source,
            score=self.score,
            harmful=self.harmful,
            intervention=self.action or "none",
            intervened_positions=self.positions,
        )


class RoutingIntervention:
    """The paper's routing at one layer, with per-request policies (see module docstring)."""

    name = "routing"

    def __init__(self, gate: GateParams, device: torch.device, dtype: torch.dtype) -> None:
        self.gate = gate
        self.u = {
            layer: torch.from_numpy(gate.u[j].astype(np.float64)).to(device)
            for j, layer in enumerate(gate.read_layers)
        }
        self.v = torch.from_numpy(gate.v).to(device=device, dtype=torch.float32)
        self.steer_delta = (gate.alpha * self.v).to(dtype)
        self.active: dict[str, GuardRecord] = {}
        self.by_runner_id: dict[str, str] = {}
        self.finished: OrderedDict[str, GuardRecord] = OrderedDict()
        self.decisions = 0

    def layers(self) -> tuple[int, ...]:
        return self.gate.read_layers

    def _record(self, span: RowSpan) -> GuardRecord | None:
        bid = self.by_runner_id.get(span.req_id)
        if bid is not None:
            return self.active[bid]
        params = span.extra.get(EXTRA_ARGS_KEY)
        if params is None:
            return None
        bid = str(params["id"])
        record = self.active.get(bid)
        if record is None:
            record = GuardRecord(
                id=bid,
                language=str(params["language"]),
                policy=str(params["policy"]),
                threshold=float(params["threshold"]),
                threshold_source=str(params["threshold_source"]),
            )
            self.active[bid] = record
        record.runner_ids.add(span.req_id)
        self.by_runner_id[span.req_id] = bid
        return record

    def on_layer(
        self, layer: int, hidden: torch.Tensor, residual: torch.Tensor, step: list[RowSpan]
    ) -> None:
        owned = [(span, rec) for span in step if (rec := self._record(span)) is not None]
        if not owned:
            return
        deciding = [
            (span.last_prompt_row, rec)
            for span, rec in owned
            if rec.score is None and rec.policy != "none" and span.last_prompt_row is not None
        ]
        if deciding:
            idx = torch.tensor([row for row, _ in deciding], device=hidden.device)
            stream = hidden.index_select(0, idx).double() + residual.index_select(0, idx).double()
            parts = (stream @ self.u[layer]).tolist()
            final = layer == self.gate.layer
            for (_, rec), part in zip(deciding, parts, strict=True):
                if layer == self.gate.read_layers[0]:
                    rec.partial = 0.0  # a fresh prefill step (also after a preemption)
                rec.partial += float(part)
                if final:
                    rec.score = rec.partial + self.gate.c
                    rec.harmful = rec.score >= rec.threshold
                    self.decisions += 1
        if layer != self.gate.layer:
            return
        steer: list[range] = []
        ablate: list[range] = []
        for span, rec in owned:
            action = rec.action
            if action == "steer":
                rows = span.rows_from_position(span.num_prompt - 1)
                steer.append(rows)
            elif action == "ablate":
                rows = range(span.start, span.stop)
                ablate.append(rows)
            else:
                continue
            rec.positions += len(rows)
        if (idx := _rows_tensor(steer, hidden.device)) is not None:
            hidden.index_add_(0, idx, self.steer_delta.expand(idx.numel(), -1))
        if (idx := _rows_tensor(ablate, hidden.device)) is not None:
            stream = hidden.index_select(0, idx).float() + residual.index_select(0, idx).float()
            proj = stream @ self.v
            hidden.index_add_(0, idx, (-proj[:, None] * self.v[None, :]).to(hidden.dtype))

    def on_requests_gone(self, req_ids: set[str]) -> None:
        for req_id in req_ids:
            bid = self.by_runner_id.pop(req_id, None)
            if bid is None:
                continue
            record = self.active[bid]
            record.runner_ids.discard(req_id)
            if record.runner_ids:
                continue
            del self.active[bid]
            if not record.released:
                self.finished[bid] = record
                while len(self.finished) > MAX_FINISHED_VERDICTS:
                    self.finished.popitem(last=False)

    def runner_ids(self) -> set[str]:
        return set(self.by_runner_id)

    def verdicts(self, ids: list[str], release: list[str]) -> dict[str, dict[str, Any]]:
        """Verdicts of the given babelgate ids that exist; ids in ``release`` are forgotten
        after this read (now if their requests finished, else when they finish)."""
        out: dict[str, dict[str, Any]] = {}
        for bid in ids:
            record = self.active.get(bid) or self.finished.get(bid)
            if record is not None:
                out[bid] = record.verdict().to_dict()
        for bid in release:
            if (record := self.active.get(bid)) is not None:
                record.released = True
            self.finished.pop(bid, None)
        return out


class ResidualCapture:
    """Copies the residual stream at the last prompt token at ``layers`` for requests whose
    ``extra_args`` carry a capture id (the vLLM activation backend)."""

    name = "capture"

    def __init__(self, layers: list[int]) -> None:
        self._layers = tuple(sorted(set(layers)))
        self.captured: dict[str, dict[int, np.ndarray]] = {}

    def layers(self) -> tuple[int, ...]:
        return self._layers

    def on_layer(
        self, layer: int, hidden: torch.Tensor, residual: torch.Tensor, step: list[RowSpan]
    ) -> None:
        for span in step:
            cid = span.extra.get(CAPTURE_KEY)
            row = span.last_prompt_row
            if cid is None or row is None:
                continue
            stream = hidden[row].float() + residual[row].float()
            self.captured.setdefault(str(cid), {})[layer] = stream.cpu().numpy()

    def on_requests_gone(self, req_ids: set[str]) -> None:
        """Captures outlive their requests until popped."""

    def pop(self, ids: list[str]) -> dict[str, bytes]:
        """float32 bytes of shape (len(layers), d) per id; ids with missing layers are absent."""
        out: dict[str, bytes] = {}
        for cid in ids:
            per_layer = self.captured.pop(cid, None)
            if per_layer is None or set(per_layer) != set(self._layers):
                continue
            out[cid] = np.stack([per_layer[layer] for layer in self._layers]).tobytes()
        return out
