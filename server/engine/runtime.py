"""The runner side of the guard: slots, the buffers filled before each step, verdicts after it.

Runs in the vLLM worker, on the host, around every real forward (``_model_forward``, wrapped by
``server.engine.worker``). The model's graph (``guard_graph``) only indexes persistent buffers;
this module keeps them true, the way vLLM's LoRA punica wrapper maps tokens to adapters:

- a request that carries guard parameters (``extra_args["babelgate"]``, any policy but "none")
  or a capture id gets a *slot* for its babelgate id (parallel-sampling siblings share it); its
  threshold and its action table (policy -> what to do when undecided / harmful / harmless) are
  written into the slot when it is assigned, and its decision, score and count reset;
- before each step: each row's slot, whether it is its request's last prompt token, whether it
  is at or after it (``BatchLayout``), copied into the per-token buffers;
- after each step: the per-slot decisions, scores and counts are copied back (non-blocking),
  the per-token slots zeroed (so dummy runs, padding and CUDA-graph capture see slot 0, the
  no-op), and at the next step or verdict read the records are brought up to date.
A request's slot is freed when all its runner requests are gone; its record then waits, bounded,
until the caller reads and releases its verdict.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from babelgate.server.engine.guard_graph import (
    ACTION_CODES,
    HARMFUL,
    NO_OP_SLOT,
    UNDECIDED,
    GuardBuffers,
    GuardSpec,
)
from babelgate.server.engine.step import batch_layout, extra_args
from babelgate.server.engine.types import (
    EXTRA_ARGS_KEY,
    TEST_FAULTS_ENV,
    GateParams,
    GuardrailStartupError,
    Verdict,
    faults_enabled,
    policy_intervention,
)

CAPTURE_KEY = "babelgate_capture"
# Finished verdicts nobody fetched are dropped oldest-first beyond this many.
MAX_FINISHED_VERDICTS = 65536


@dataclass
class GuardRecord:
    """The guard state of one request (all its runner-side ids), as last read from its slot."""

    id: str
    language: str
    policy: str
    threshold: float
    threshold_source: str
    score: float | None = None
    harmful: bool | None = None
    positions: int = 0
    slot: int | None = None
    released: bool = False

    @property
    def action(self) -> str | None:
        """ "steer", "ablate", "none", or None while a routing decision is pending."""
        return policy_intervention(self.policy, self.harmful)

    def action_row(self) -> list[int]:
        """The slot's action codes when undecided, harmful, harmless."""
        return [
            ACTION_CODES[policy_intervention(self.policy, harmful) or "none"]
            for harmful in (None, True, False)
        ]

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


class GuardRuntime:
    """Slots, buffer fills and verdicts for one model runner (see module docstring)."""

    def __init__(self, runner: Any, spec: GuardSpec, buffers: GuardBuffers) -> None:
        self.runner = runner
        self.spec = spec
        self.b = buffers
        self.gate: GateParams | None = None
        num_slots = int(buffers.decision.shape[0])
        self.free = list(range(num_slots - 1, NO_OP_SLOT, -1))  # pop() hands out 1 first
        self.slot_of: dict[str, int] = {}  # key ("guard:<id>" / "capture:<id>") -> its slot
        self.key_of: dict[str, str | None] = {}  # runner id -> key (None: not guarded)
        self.runners: dict[str, set[str]] = {}  # key -> its live runner ids
        self.active: dict[str, GuardRecord] = {}
        self.finished: OrderedDict[str, GuardRecord] = OrderedDict()
        self.captured: dict[str, np.ndarray] = {}
        self._threshold = np.zeros(num_slots, np.float64)
        self._action = np.zeros(num_slots * 3, np.int64)
        self._fresh: list[int] = []  # slots assigned since the last upload
        self._tables_dirty = False
        self._rows = 0  # rows filled for the step that runs now
        self._capturing: list[tuple[str, int]] = []
        self._results: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._event: Any = None
        self.fires = 0
        self.decisions = 0
        self.seconds = 0.0

    # ------------------------------------------------------------------ the gate's values

    def install(self, gate: GateParams) -> None:
        """Load a gate into the buffers; its layers must fit the engine's traced shape."""
        if gate.layer != self.spec.decision_layer or not set(gate.read_layers) <= set(
            self.spec.read_layers
        ):
            raise GuardrailStartupError(
                f"the gate reads layers {list(gate.read_layers)} and decides at {gate.layer}, but "
                f"this engine was built to read {list(self.spec.read_layers)} and decide at "
                f"{self.spec.decision_layer}: start the engine with this gate (its layers are "
                "part of the compiled model)"
            )
        hidden = int(self.b.v.shape[0])
        if gate.hidden_size != hidden:
            raise GuardrailStartupError(
                f"gate direction has size {gate.hidden_size} but the model's hidden size is "
                f"{hidden}: the artifact belongs to another model"
            )
        u = np.zeros((len(self.spec.read_layers), hidden), np.float64)
        for j, layer in enumerate(gate.read_layers):
            u[self.spec.read_layers.index(layer)] = gate.u[j]
        device = self.b.u.device
        self.b.u.copy_(torch.from_numpy(u).to(device))
        self.b.c.fill_(gate.c)
        v = torch.from_numpy(gate.v).to(device=device, dtype=torch.float32)
        self.b.v.copy_(v)
        self.b.steer_delta.copy_((gate.alpha * v).to(self.b.steer_delta.dtype))
        self.gate = gate

    def uninstall(self) -> None:
        """New requests are no longer routed (running ones keep their slots)."""
        self.gate = None

    def inject_gate_failure(self, on: bool) -> None:
        """Test-only (``TEST_FAULTS_ENV``): while on, the gate's intercept is NaN, so every
        guarded row of every step scores NaN in the graph itself, as a broken activation would;
        off restores the gate's intercept."""
        if not faults_enabled():
            raise PermissionError(
                f"fault injection is test-only: set {TEST_FAULTS_ENV}=1 in the server's "
                "environment to allow it"
            )
        if self.gate is None:
            raise RuntimeError("no gate is loaded: nothing to make fail")
        self.b.c.fill_(float("nan") if on else self.gate.c)

    # ------------------------------------------------------------------ around each forward

    def before_forward(self) -> None:
        """Bring records up to date, free the slots of finished requests, assign new ones and
        fill the per-token buffers for the forward about to run."""
        began = time.perf_counter()
        self.refresh()
        layout = batch_layout(self.runner)
        if layout is None:
            return
        slots = np.array([self._slot(rid) for rid in layout.req_ids], dtype=np.int64)
        self._upload_tables()
        if not slots.any():
            return
        positions = layout.positions()
        last_pos = layout.per_row(layout.num_prompt - 1)
        last = positions == last_pos
        slot_rows = layout.per_row(slots)
        self._put(self.b.slot, slot_rows)
        self._put(self.b.last, last)
        self._put(self.b.after, positions >= last_pos)
        has_last = layout.has_last_prompt()
        self._capturing = [
            (key, slot)
            for key, slot, here in zip(
                (self.key_of[rid] for rid in layout.req_ids), slots.tolist(), has_last, strict=True
            )
            if here and slot and key is not None and key.startswith("capture:")
        ]
        self._rows = layout.num_rows
        self.fires += 1
        self.seconds += time.perf_counter() - began

    def after_forward(self) -> None:
        """Start copying the slots' results back and return the per-token slots to 0."""
        if not self._rows:
            return
        began = time.perf_counter()
        b = self.b
        device = b.decision.device
        pin = device.type == "cuda"
        # copies, never views: the buffers change at the next step (on CPU ``.to("cpu")``
        # would return the buffer itself)
        self._results = tuple(  # type: ignore[assignment]
            t.to("cpu", non_blocking=pin, copy=True) for t in (b.decision, b.score, b.positions)
        )
        if pin:
            self._event = torch.cuda.Event()
            self._event.record()
        for key, slot in self._capturing:
            self.captured[key.removeprefix("capture:")] = b.captures[:, slot].cpu().numpy().copy()
        self._capturing = []
        b.slot[: self._rows].zero_()
        self._rows = 0
        self.seconds += time.perf_counter() - began

    # ------------------------------------------------------------------ slots

    def _slot(self, rid: str) -> int:
        if rid not in self.key_of:
            self.key_of[rid] = self._register(extra_args(self.runner, rid))
            key = self.key_of[rid]
            if key is not None:
                self.runners.setdefault(key, set()).add(rid)
        key = self.key_of[rid]
        return NO_OP_SLOT if key is None else self.slot_of.get(key, NO_OP_SLOT)

    def _register(self, extra: dict[str, Any]) -> str | None:
        """The key of a request seen for the first time (None: nothing to do for it)."""
        params = extra.get(EXTRA_ARGS_KEY)
        if params is not None:
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
            key = f"guard:{bid}"
            if record.slot is None and record.policy != "none" and self.gate is not None:
                record.slot = self._assign(key, record.threshold, record.action_row())
            return key
        cid = extra.get(CAPTURE_KEY)
        if cid is not None and self.spec.capture_layers:
            key = f"capture:{cid}"
            if key not in self.slot_of:
                self._assign(key, 0.0, [0, 0, 0])
            return key
        return None

    def _assign(self, key: str, threshold: float, actions: list[int]) -> int:
        if not self.free:
            raise RuntimeError(
                f"babelgate: all {len(self.slot_of)} guard slots are in use; the engine was "
                "started with more concurrent sequences than its guard buffers hold"
            )
        slot = self.free.pop()
        self.slot_of[key] = slot
        self._threshold[slot] = threshold
        self._action[slot * 3 : slot * 3 + 3] = actions
        self._fresh.append(slot)
        self._tables_dirty = True
        return slot

    def _forget_gone(self) -> None:
        """Runner requests that left the runner: free their key's slot once none remain."""
        requests = self.runner.requests
        for rid in [rid for rid in self.key_of if rid not in requests]:
            key = self.key_of.pop(rid)
            if key is None:
                continue
            live = self.runners[key]
            live.discard(rid)
            if live:
                continue
            del self.runners[key]
            slot = self.slot_of.pop(key, None)
            if slot is not None:
                self._action[slot * 3 : slot * 3 + 3] = 0
                self._tables_dirty = True
                self.free.append(slot)
            if key.startswith("guard:"):
                self._finish(self.active.pop(key.removeprefix("guard:")))

    def _finish(self, record: GuardRecord) -> None:
        record.slot = None
        if not record.released:
            self.finished[record.id] = record
            while len(self.finished) > MAX_FINISHED_VERDICTS:
                self.finished.popitem(last=False)

    def _upload_tables(self) -> None:
        if not self._tables_dirty:
            return
        b = self.b
        self._put(b.threshold, self._threshold)
        self._put(b.action, self._action)
        if self._fresh:
            idx = torch.tensor(self._fresh, dtype=torch.int64, device=b.decision.device)
            b.decision.index_fill_(0, idx, UNDECIDED)
            b.score.index_fill_(0, idx, float("nan"))
            b.positions.index_fill_(0, idx, 0)
            self._fresh = []
        self._tables_dirty = False

    @staticmethod
    def _put(dst: torch.Tensor, values: np.ndarray) -> None:
        dst[: len(values)].copy_(torch.from_numpy(values), non_blocking=True)

    def _collect(self) -> None:
        """Read the last step's slot results into the records of the slots in use."""
        if self._results is None:
            return
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        decision, score, positions = (t.numpy() for t in self._results)
        self._results = None
        for record in self.active.values():
            slot = record.slot
            if slot is None:
                continue
            if record.harmful is None and decision[slot] != UNDECIDED:
                record.harmful = bool(decision[slot] == HARMFUL)
                record.score = float(score[slot])
                self.decisions += 1
            record.positions = int(positions[slot])

    # ------------------------------------------------------------------ reads

    def refresh(self) -> None:
        """Bring the records up to date between steps (the last step's results, the requests
        that left the runner since)."""
        self._collect()
        self._forget_gone()

    def verdicts(self, ids: list[str], release: list[str]) -> dict[str, dict[str, Any]]:
        """Verdicts of the given babelgate ids that exist; ids in ``release`` are forgotten
        after this read (now if their requests finished, else when they finish)."""
        self.refresh()
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

    def pop_captures(self, ids: list[str]) -> dict[str, bytes]:
        """float32 bytes of shape (len(capture_layers), d) per captured id, removed on return."""
        return {cid: self.captured.pop(cid).tobytes() for cid in ids if cid in self.captured}

    def runner_ids(self) -> set[str]:
        return {rid for rid, key in self.key_of.items() if key is not None}
