"""The runner side of the guard: slots, the buffers filled before each step, verdicts read back.

Runs in the vLLM worker, on the host, around every real forward (``_model_forward``, wrapped by
``server.engine.worker``). The model's graph (``guard_graph``) only indexes persistent buffers;
this module keeps them true, the way vLLM's LoRA punica wrapper maps tokens to adapters:

- a request that carries guard parameters (``extra_args["babelgate"]``, any policy but "none")
  or a capture id gets a *slot* for its babelgate id (parallel-sampling siblings share it); its
  thresholds and its action table (policy -> what to do when undecided / harmful / harmless /
  unsure) are written into the slot when it is assigned, and its decision, score and count reset;
- before each step: each row's slot and whether it is at or after its request's last prompt
  token, and per slot the row of its last prompt token in this step (one row per slot,
  ``BatchLayout``), copied into the buffers; after it, they go back to the no-op state (so dummy
  runs, padding and CUDA-graph capture see slot 0);
- results are read back lazily (``readback.Readback``: pinned host memory and an event), and the
  step loop never waits on the device: nothing is copied after a step; when slots are freed
  (their requests left the runner) one copy of the slot results is started before the slots can
  be reset, and polled at later steps; a verdict or status RPC copies the slots it reads and waits
  for that copy (and for the pending copies of the ids it asks for). Captured activations are
  copied after the step that captured them and waited for only by ``pop_captures``.
A request's slot is freed when all its runner requests are gone; its record then waits, bounded,
until the caller reads and releases its verdict.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from babelgate.server.engine.guard_graph import (
    ACTION_CODES,
    DECISION_NAMES,
    NO_OP_SLOT,
    NUM_DECISIONS,
    UNDECIDED,
    GuardBuffers,
    GuardSpec,
)
from babelgate.server.engine.readback import Readback
from babelgate.server.engine.step import BatchLayout, batch_layout, extra_args
from babelgate.server.engine.types import (
    EXTRA_ARGS_KEY,
    TEST_FAULTS_ENV,
    Decision,
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
    harmless_threshold: float | None = None
    score: float | None = None
    decision: Decision | None = None
    positions: int = 0
    slot: int | None = None
    released: bool = False

    @property
    def harmful(self) -> bool | None:
        """``score >= threshold`` once decided (an unsure request is not harmful)."""
        return None if self.decision is None else self.decision == "harmful"

    @property
    def action(self) -> str | None:
        """ "steer", "ablate", "none", or None while a routing decision is pending."""
        return policy_intervention(self.policy, self.decision)

    def action_row(self) -> list[int]:
        """The slot's action codes when undecided, harmful, harmless, unsure."""
        return [
            ACTION_CODES[policy_intervention(self.policy, decision) or "none"]
            for decision in (None, *(DECISION_NAMES[code] for code in range(1, NUM_DECISIONS)))
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
            decision=self.decision,
            harmless_threshold=self.harmless_threshold,
        )


@dataclass
class _Retirement:
    """The slot results copied back when slots were freed, for the records that held them."""

    readback: Readback
    held: list[tuple[GuardRecord, int]] = field(default_factory=list)


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
        self.captured: dict[str, Readback] = {}
        self._threshold = np.zeros(num_slots, np.float64)
        self._harmless_below = np.zeros(num_slots, np.float64)
        self._action = np.zeros(num_slots * NUM_DECISIONS, np.int64)
        self._fresh: list[int] = []  # slots assigned since the last upload
        self._tables_dirty = False
        self._retiring: deque[_Retirement] = deque()
        self._rows = 0  # rows filled for the step that runs now
        self._capturing: list[tuple[str, int]] = []
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
        u = np.zeros((len(self.spec.read_layers), hidden), np.float32)
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
        """Take in the slot results whose copies have finished (without waiting), free the
        slots of finished requests, assign new ones and fill the buffers for the forward about
        to run."""
        began = time.perf_counter()
        self._poll()
        self._forget_gone()
        layout = batch_layout(self.runner)
        if layout is None:
            return
        slots = np.array([self._slot(rid) for rid in layout.req_ids], dtype=np.int64)
        self._upload_tables()
        if not slots.any():
            return
        positions = layout.positions()
        last_pos = layout.per_row(layout.num_prompt - 1)
        last_row, has_last = self._last_rows(layout, slots)
        self.b.load_step(
            torch.from_numpy(layout.per_row(slots)),
            torch.from_numpy(positions >= last_pos),
            torch.from_numpy(last_row),
            torch.from_numpy(has_last),
        )
        keys = [self.key_of[rid] for rid in layout.req_ids]
        capturing = {
            key: int(slot)
            for key, slot in zip(keys, slots, strict=True)
            if key is not None and key.startswith("capture:") and has_last[slot]
        }
        self._capturing = list(capturing.items())
        self._rows = layout.num_rows
        self.fires += 1
        self.seconds += time.perf_counter() - began

    def _last_rows(self, layout: BatchLayout, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per slot: the row of its last prompt token in this step and whether it has one. A
        slot shared by parallel-sampling siblings takes its first request's row, so the graph
        writes each slot once."""
        num_slots = len(self._threshold)
        last_row = np.zeros(num_slots, np.int64)
        has_last = np.zeros(num_slots, bool)
        here = np.flatnonzero(layout.has_last_prompt() & (slots != NO_OP_SLOT))
        rows = layout.starts[here] + layout.num_prompt[here] - 1 - layout.first_pos[here]
        unique, first = np.unique(slots[here], return_index=True)
        last_row[unique] = rows[first]
        has_last[unique] = True
        return last_row, has_last

    def after_forward(self) -> None:
        """Start copying this step's captures back and return the buffers to the no-op state;
        nothing is waited for."""
        if not self._rows:
            return
        began = time.perf_counter()
        for key, slot in self._capturing:
            self.captured[key.removeprefix("capture:")] = Readback(self.b.captures[:, slot])
        self._capturing = []
        self.b.clear_step(self._rows)
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
                band = params.get("harmless_threshold")
                record = GuardRecord(
                    id=bid,
                    language=str(params["language"]),
                    policy=str(params["policy"]),
                    threshold=float(params["threshold"]),
                    threshold_source=str(params["threshold_source"]),
                    harmless_threshold=None if band is None else float(band),
                )
                self.active[bid] = record
            key = f"guard:{bid}"
            if record.slot is None and record.policy != "none" and self.gate is not None:
                record.slot = self._assign(key, record, record.action_row())
            return key
        cid = extra.get(CAPTURE_KEY)
        if cid is not None and self.spec.capture_layers:
            key = f"capture:{cid}"
            if key not in self.slot_of:
                self._assign(key, None, [0] * NUM_DECISIONS)
            return key
        return None

    def _assign(self, key: str, record: GuardRecord | None, actions: list[int]) -> int:
        """A free slot for ``key`` with the record's thresholds (none for a capture)."""
        if not self.free:
            raise RuntimeError(
                f"babelgate: all {len(self.slot_of)} guard slots are in use; the engine was "
                "started with more concurrent sequences than its guard buffers hold"
            )
        slot = self.free.pop()
        self.slot_of[key] = slot
        threshold = 0.0 if record is None else record.threshold
        band = None if record is None else record.harmless_threshold
        self._threshold[slot] = threshold
        self._harmless_below[slot] = threshold if band is None else band
        self._action[slot * NUM_DECISIONS : (slot + 1) * NUM_DECISIONS] = actions
        self._fresh.append(slot)
        self._tables_dirty = True
        return slot

    def _forget_gone(self) -> None:
        """Runner requests that left the runner: free their key's slot once none remain; the
        freed guard slots' results are copied back (one copy, not waited for) before any of
        them can be reset for a new request."""
        requests = self.runner.requests
        retired: list[tuple[GuardRecord, int]] = []
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
                self._action[slot * NUM_DECISIONS : (slot + 1) * NUM_DECISIONS] = 0
                self._tables_dirty = True
                self.free.append(slot)
            if key.startswith("guard:"):
                record = self.active.pop(key.removeprefix("guard:"))
                if slot is not None:
                    retired.append((record, slot))
                self._finish(record)
        if retired:
            b = self.b
            self._retiring.append(
                _Retirement(Readback(b.decision, b.score, b.positions), retired)
            )

    def _finish(self, record: GuardRecord) -> None:
        record.slot = None
        if not record.released:
            self.finished[record.id] = record
            while len(self.finished) > MAX_FINISHED_VERDICTS:
                self.finished.popitem(last=False)

    def _upload_tables(self) -> None:
        if not self._tables_dirty:
            return
        self.b.load_tables(
            torch.from_numpy(self._threshold),
            torch.from_numpy(self._harmless_below),
            torch.from_numpy(self._action),
            self._fresh,
        )
        self._fresh = []
        self._tables_dirty = False

    # ------------------------------------------------------------------ slot results

    def _apply(self, readback: Readback, held: list[tuple[GuardRecord, int]]) -> None:
        """Bring records up to date from a finished copy of the slot results."""
        decision, score, positions = readback.values()
        for record, slot in held:
            code = int(decision[slot])
            if record.decision is None and code != UNDECIDED:
                record.decision = DECISION_NAMES[code]  # type: ignore[assignment]
                record.score = float(score[slot])
                self.decisions += 1
            record.positions = int(positions[slot])

    def _poll(self) -> None:
        """Apply the retirements whose copies have finished, oldest first (never waits)."""
        while self._retiring and self._retiring[0].readback.ready():
            retirement = self._retiring.popleft()
            self._apply(retirement.readback, retirement.held)

    def _settle(self, ids: set[str] | None) -> None:
        """RPC only: wait for the pending retirements holding ``ids`` (all: None) and apply
        them and those before them."""
        last = max(
            (
                i
                for i, retirement in enumerate(self._retiring)
                if ids is None or any(record.id in ids for record, _ in retirement.held)
            ),
            default=-1,
        )
        for _ in range(last + 1):
            retirement = self._retiring.popleft()
            retirement.readback.wait()
            self._apply(retirement.readback, retirement.held)
        self._poll()

    def _read_active(self, ids: set[str] | None) -> None:
        """RPC only: copy the slot results back now and wait for them, for the running
        records among ``ids`` (all: None)."""
        held = [
            (record, slot)
            for bid, record in self.active.items()
            if (slot := record.slot) is not None and (ids is None or bid in ids)
        ]
        if not held:
            return
        b = self.b
        readback = Readback(b.decision, b.score, b.positions)
        readback.wait()
        self._apply(readback, held)

    # ------------------------------------------------------------------ reads (RPCs)

    def refresh(self, ids: set[str] | None = None) -> None:
        """Bring the records of ``ids`` (all: None) up to date: the requests that left the
        runner, the pending copies, the running slots. Waits for the device: RPCs only."""
        self._forget_gone()
        self._settle(ids)
        self._read_active(ids)

    def verdicts(self, ids: list[str], release: list[str]) -> dict[str, dict[str, Any]]:
        """Verdicts of the given babelgate ids that exist; ids in ``release`` are forgotten
        after this read (now if their requests finished, else when they finish)."""
        self.refresh(set(ids))
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
        """float32 bytes of shape (len(capture_layers), d) per captured id, removed on return
        (waits for their copies: an RPC)."""
        out = {}
        for cid in ids:
            readback = self.captured.pop(cid, None)
            if readback is not None:
                readback.wait()
                out[cid] = readback.values()[0].tobytes()
        return out

    def runner_ids(self) -> set[str]:
        return {rid for rid, key in self.key_of.items() if key is not None}
