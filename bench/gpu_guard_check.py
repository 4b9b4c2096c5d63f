"""The guard's maths under CUDA graphs, with torch and transformers alone: a one-shot GPU check.

Runs in its own process, from a checkout (babelgate need not be installed: it loads
``server/engine/guard_graph.py`` by path, and that file imports only torch). No vLLM, nothing
downloaded. It stacks a few real decoder layers at a 7B model's size (transformers'
``Qwen2DecoderLayer``: hidden 3584, 28 heads, 4 key-value heads, MLP 18944; random weights,
bf16), each called the way vLLM's decoder layers are (``(hidden, residual)`` in and out), with
the guard wrapped around the layers it reads and captures exactly as ``server.engine.worker``
wraps them (``GuardedDecoderLayer``, one shared ``GuardBuffers``). The gate reads two layers and
decides at the last one, so the stack's output is the deciding layer's, intervention included.

A scripted run of steps then goes through four copies of the stack, each with its own buffers:
the unguarded stack (eager), the guarded stack eager, the guarded stack captured once in a CUDA
graph (``torch.cuda.CUDAGraph``, captured on the no-op buffers as vLLM captures dummy runs) and
the guarded stack under ``torch.compile(mode="reduce-overhead")``. Steps change everything the
guard sees: requests of every policy (routing, always-steer, always-ablate, shadow, unguarded),
routing requests planned harmful, harmless and unsure (the abstain band), prompts longer than a
step (chunked prefill), decode rows, requests leaving and their slots reused, padding rows. The
planned decisions come from a shadow pass over the same steps: each request's thresholds are put
a margin away from its own eager score, so every run must reach the planned decision.

Checked at every step, mismatches printed: the eager guard against the plan (decisions, counted
rows; rows of no action bit-identical to the unguarded stack, steered rows moved by alpha * v,
ablated rows without a v component) and the graph and compiled runs against eager (decisions
and counts exactly; scores, captured activations and output rows within bf16 tolerance, with
how many were bit-identical). Then guarded and unguarded CUDA-graph replays are timed at 1, 8,
64 and 256 tokens per step and their ratios printed. A JSON record (command, git commit,
machine, raw figures) is written; the exit status is 1 on any mismatch.

``--fast``: a small hidden size on the CPU, CUDA graphs skipped, eager against the default
``torch.compile``; ``tests/test_gpu_guard_check.py`` runs it in ``make test``. On a GPU the full
run is meant to finish within 8 minutes.

    python bench/gpu_guard_check.py [--fast] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import transformers
from torch import nn
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

REPO = Path(__file__).resolve().parents[1]
TOKENS_PER_STEP = (1, 8, 64, 256)
POLICY_ACTIONS = {  # action codes when undecided, harmful, harmless, unsure (runtime's table)
    "routing": (0, 1, 2, 0),
    "always-steer": (1, 1, 1, 1),
    "always-ablate": (2, 2, 2, 2),
    "shadow": (0, 0, 0, 0),
}


def load_guard_graph() -> ModuleType:
    """``server/engine/guard_graph.py`` by path (it imports only torch)."""
    path = REPO / "server/engine/guard_graph.py"
    spec = importlib.util.spec_from_file_location("guard_graph", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["guard_graph"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gg = load_guard_graph()


@dataclass(frozen=True)
class Config:
    """The run's sizes: the 7B-sized GPU run or the small CPU one."""

    device: str
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    layers: int
    read_layers: tuple[int, ...]
    capture_layers: tuple[int, ...]
    max_tokens: int  # rows per step (the captured size; real rows are fewer, the rest padding)
    num_slots: int  # max_num_seqs + 1
    steps: int
    replays: int
    seed: int = 0
    alpha: float = 4.0

    @classmethod
    def for_mode(cls, fast: bool) -> Config:
        if fast:
            return cls("cpu", 64, 4, 2, 128, 4, (1, 3), (2,), 48, 9, 14, 3)
        return cls("cuda", 3584, 28, 4, 18944, 4, (1, 3), (2,), 256, 257, 32, 200)


# ----------------------------------------------------------------------------- the model


class VllmStyleLayer(nn.Module):
    """A transformers Qwen2 decoder layer called as vLLM calls its own: ``(hidden, residual)``
    in and out, the residual added before each norm, flat rows ``(tokens, d)``."""

    def __init__(self, layer: Qwen2DecoderLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layer
        residual = hidden + residual
        h, _ = layer.self_attn(
            layer.input_layernorm(residual)[None], position_embeddings=(cos, sin),
            attention_mask=None,
        )  # fmt: skip
        residual = h[0] + residual
        return layer.mlp(layer.post_attention_layernorm(residual)), residual


class Stack(nn.Module):
    """Rotary embedding and the layers; returns the last layer's ``(hidden, residual)``."""

    def __init__(self, rotary: nn.Module, layers: list[nn.Module]) -> None:
        super().__init__()
        self.rotary = rotary
        self.layers = nn.ModuleList(layers)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.rotary(x[None], positions[None])
        hidden, residual = x, torch.zeros_like(x)
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, cos, sin)
        return hidden, residual


@dataclass
class Model:
    """The shared weights, the gate's vectors and the stacks built on them."""

    cfg: Config
    layers: list[VllmStyleLayer]
    rotary: nn.Module
    u: torch.Tensor  # (len(read_layers), d) float32
    v: torch.Tensor  # (d,) float32, unit

    @classmethod
    def build(cls, cfg: Config) -> Model:
        torch.manual_seed(cfg.seed)
        config = Qwen2Config(
            hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
            num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
            num_hidden_layers=cfg.layers, max_position_embeddings=4096,
        )  # fmt: skip
        config._attn_implementation = "sdpa"
        with torch.device(cfg.device):
            layers = [
                VllmStyleLayer(Qwen2DecoderLayer(config, i)).to(torch.bfloat16).eval()
                for i in range(cfg.layers)
            ]
            for layer in layers:
                layer.requires_grad_(False)
            rotary = Qwen2RotaryEmbedding(config)
            u = torch.randn(len(cfg.read_layers), cfg.hidden) / len(cfg.read_layers) ** 0.5
            v = torch.randn(cfg.hidden)
        return cls(cfg, layers, rotary, u / u.norm(dim=1, keepdim=True), v / v.norm())

    def buffers(self, max_tokens: int | None = None) -> Any:
        """A fresh ``GuardBuffers`` holding this model's gate (c = 0)."""
        cfg = self.cfg
        b = gg.GuardBuffers(
            self.spec, cfg.hidden, max_tokens or cfg.max_tokens, cfg.num_slots,
            torch.device(cfg.device), torch.bfloat16,
        )  # fmt: skip
        b.u.copy_(self.u)
        b.v.copy_(self.v)
        b.steer_delta.copy_((cfg.alpha * self.v).to(torch.bfloat16))
        return b

    @property
    def spec(self) -> Any:
        return gg.GuardSpec(self.cfg.read_layers, self.cfg.capture_layers)

    def unguarded(self) -> Stack:
        return Stack(self.rotary, list(self.layers))

    def guarded(self, b: Any) -> Stack:
        """The layers the spec names wrapped as ``server.engine.worker`` wraps them."""
        spec = self.spec
        return Stack(self.rotary, [
            gg.GuardedDecoderLayer(layer, i, spec, b) if i in spec.layers else layer
            for i, layer in enumerate(self.layers)
        ])  # fmt: skip


# ----------------------------------------------------------------------------- the script


@dataclass
class Request:
    """One request of the script: its slot (0: unguarded), sizes, policy and planned decision."""

    rid: int
    slot: int
    prompt: int
    decode: int
    policy: str
    plan: int  # guard_graph decision code the thresholds are set for
    score: float = float("nan")  # its eager score (the shadow pass)
    threshold: float = 0.0
    harmless_below: float = 0.0


@dataclass
class Step:
    """One forward: ``(request, rows, first position)`` segments, rows in order; requests that
    left before it (their slots are freed); requests that start in it (slots assigned)."""

    segments: list[tuple[Request, int, int]]
    gone: list[Request] = field(default_factory=list)
    new: list[Request] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(rows for _, rows, _ in self.segments)


def script(cfg: Config) -> list[Step]:
    """Steps of changing batches: new requests while slots are free, chunked prompts, decode,
    departures and slot reuse, unguarded requests, padding (a random number of real rows)."""
    rng = random.Random(cfg.seed)
    free = list(range(cfg.num_slots - 1, 0, -1))
    running: list[tuple[Request, int]] = []  # (request, tokens done)
    steps: list[Step] = []
    rid = 0
    policies = ["routing"] * 4 + ["always-steer", "always-ablate", "shadow", "unguarded"]
    for _ in range(cfg.steps):
        budget = rng.choice([cfg.max_tokens, rng.randint(1, cfg.max_tokens)])
        step = Step([])
        kept = []
        for req, done in running:
            if done >= req.prompt + req.decode:
                step.gone.append(req)
                if req.slot:
                    free.append(req.slot)
            else:
                kept.append((req, done))
        running = kept
        while len(running) < cfg.num_slots - 1 and free and rng.random() < 0.7:
            policy = rng.choice(policies)
            req = Request(
                rid, 0 if policy == "unguarded" else free.pop(),
                rng.randint(1, cfg.max_tokens + cfg.max_tokens // 2), rng.randint(0, 4),
                policy, rng.choice([gg.HARMFUL, gg.HARMLESS, gg.UNSURE]),
            )  # fmt: skip
            rid += 1
            running.append((req, 0))
            step.new.append(req)
        used, progressed = 0, []
        for req, done in running:
            want = min(req.prompt - done, cfg.max_tokens) if done < req.prompt else 1
            rows = min(want, budget - used)
            if rows > 0:
                step.segments.append((req, rows, done))
                used += rows
            progressed.append((req, done + max(rows, 0)))
        running = progressed
        steps.append(step)
    return steps


def coverage(steps: list[Step], max_tokens: int) -> dict[str, int]:
    """How much of what the guard must handle the script exercised: decided requests per
    policy and planned decision, prompts split over steps, reused slots, padded steps."""
    out: dict[str, int] = {"chunked_prompts": 0, "reused_slots": 0, "padded_steps": 0}
    names = {gg.HARMFUL: "harmful", gg.HARMLESS: "harmless", gg.UNSURE: "unsure"}
    seen: set[int] = set()
    chunks: dict[int, int] = {}
    for step in steps:
        out["padded_steps"] += int(step.rows < max_tokens)
        for req in step.new:
            if req.slot:
                out["reused_slots"] += int(req.slot in seen)
                seen.add(req.slot)
        for req, rows, first in step.segments:
            if first < req.prompt:
                chunks[req.rid] = chunks.get(req.rid, 0) + 1
            if req.slot and first <= req.prompt - 1 < first + rows:
                key = f"decided {req.policy} {names[req.plan]}"
                out[key] = out.get(key, 0) + 1
    out["chunked_prompts"] = sum(n > 1 for n in chunks.values())
    return out


class HostSide:
    """The runner's job for one set of buffers (``server.engine.runtime`` in the worker): slot
    tables when requests come and go, per-step rows, the no-op state after each step."""

    def __init__(self, cfg: Config, b: Any, shadow: bool) -> None:
        self.cfg, self.b, self.shadow = cfg, b, shadow
        self.threshold = torch.zeros(cfg.num_slots, dtype=torch.float64)
        self.harmless_below = torch.zeros(cfg.num_slots, dtype=torch.float64)
        self.action = torch.zeros(cfg.num_slots * gg.NUM_DECISIONS, dtype=torch.int64)

    def before(self, step: Step) -> None:
        n = gg.NUM_DECISIONS
        for req in step.gone:
            self.action[req.slot * n : (req.slot + 1) * n] = 0
        fresh = [req.slot for req in step.new if req.slot]
        for req in step.new:
            if req.slot:
                self.threshold[req.slot] = req.threshold
                self.harmless_below[req.slot] = req.harmless_below
                actions = POLICY_ACTIONS["shadow" if self.shadow else req.policy]
                self.action[req.slot * n : (req.slot + 1) * n] = torch.tensor(actions)
        self.b.load_tables(self.threshold, self.harmless_below, self.action, fresh)
        slot, after = [], []
        last_row = torch.zeros(self.cfg.num_slots, dtype=torch.int64)
        has_last = torch.zeros(self.cfg.num_slots, dtype=torch.bool)
        for req, rows, first in step.segments:
            start = len(slot)
            slot += [req.slot] * rows
            after += [first + i >= req.prompt - 1 for i in range(rows)]
            if req.slot and first <= req.prompt - 1 < first + rows:
                last_row[req.slot] = start + req.prompt - 1 - first
                has_last[req.slot] = True
        self.b.load_step(torch.tensor(slot), torch.tensor(after), last_row, has_last)

    def after(self, step: Step) -> None:
        self.b.clear_step(step.rows)


def step_inputs(cfg: Config, index: int, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's layer-0 rows (random, fixed by the step's index) and positions, padded."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + index)
    x = torch.randn(cfg.max_tokens, cfg.hidden, generator=gen).to(torch.bfloat16)
    positions = torch.zeros(cfg.max_tokens, dtype=torch.int64)
    row = 0
    for _, rows, first in step.segments:
        positions[row : row + rows] = torch.arange(first, first + rows)
        row += rows
    return x.to(cfg.device), positions.to(cfg.device)


# ----------------------------------------------------------------------------- the runs


@dataclass
class Snapshot:
    """What one run left after a step: the output rows and the slot state, on the host."""

    hidden: torch.Tensor
    stream: torch.Tensor
    decision: torch.Tensor
    score: torch.Tensor
    positions: torch.Tensor
    captures: torch.Tensor

    @classmethod
    def take(cls, out: tuple[torch.Tensor, torch.Tensor], b: Any) -> Snapshot:
        hidden, residual = (t.detach().float().cpu() for t in out)
        return cls(hidden, hidden + residual, b.decision.cpu(), b.score.cpu(),
                   b.positions.cpu(), b.captures.cpu())  # fmt: skip


class Run:
    """A stack, its buffers, its host side and how one step is executed."""

    def __init__(self, name: str, host: HostSide, forward: Callable[..., Any]) -> None:
        self.name, self.host, self.forward = name, host, forward

    def step(self, step: Step, x: torch.Tensor, positions: torch.Tensor) -> Snapshot:
        self.host.before(step)
        out = self.forward(x, positions)
        snap = Snapshot.take(out, self.host.b)
        self.host.after(step)
        return snap


def graph_forward(cfg: Config, stack: Stack) -> Callable[..., Any]:
    """Capture ``stack`` once in a CUDA graph at ``max_tokens`` rows (on the no-op buffers, as
    vLLM captures dummy runs); each call copies its inputs in and replays."""
    x = torch.zeros(cfg.max_tokens, cfg.hidden, dtype=torch.bfloat16, device="cuda")
    positions = torch.zeros(cfg.max_tokens, dtype=torch.int64, device="cuda")
    graph, out = capture(lambda: stack(x, positions))

    def forward(new_x: torch.Tensor, new_positions: torch.Tensor) -> Any:
        x.copy_(new_x)
        positions.copy_(new_positions)
        graph.replay()
        return out

    return forward


def capture(fn: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Warm up on a side stream, then capture ``fn`` (the recipe of torch's CUDA-graph docs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def compiled_forward(cfg: Config, stack: Stack) -> Callable[..., Any]:
    """``torch.compile`` of the guarded stack: ``reduce-overhead`` (CUDA graphs) on a GPU, the
    default mode on the CPU. On the GPU the guard's buffers are marked static: CUDA graphs read
    and write them in place at fixed addresses, as in vLLM."""
    mode = None
    if cfg.device == "cuda":
        mode = "reduce-overhead"
        for buf in stack.buffers():
            torch._dynamo.mark_static_address(buf)
    compiled = torch.compile(stack, mode=mode, dynamic=False)

    def forward(x: torch.Tensor, positions: torch.Tensor) -> Any:
        if cfg.device == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(x, positions)

    return forward


# ----------------------------------------------------------------------------- checks


@dataclass
class Tally:
    """Counts and worst gaps of the checks, and the mismatches (printed as they come)."""

    checks: int = 0
    mismatches: list[str] = field(default_factory=list)
    max_gap: dict[str, float] = field(default_factory=dict)
    identical: dict[str, list[int]] = field(default_factory=dict)  # name -> [identical, total]

    def check(self, ok: bool, message: str) -> None:
        self.checks += 1
        if not ok:
            self.mismatches.append(message)
            print(f"MISMATCH {message}", flush=True)

    def gap(self, name: str, got: torch.Tensor, want: torch.Tensor) -> float:
        gap = float((got - want).abs().max()) if got.numel() else 0.0
        self.max_gap[name] = max(self.max_gap.get(name, 0.0), gap)
        same = self.identical.setdefault(name, [0, 0])
        same[0] += int(torch.equal(got, want))
        same[1] += 1
        return gap


def row_actions(step: Step, decision: torch.Tensor) -> list[tuple[int, int]]:
    """Per real row: (0 none / 1 steer / 2 ablate, slot) as the graph applies them after the
    step's decisions (steering only at or after the last prompt token)."""
    out = []
    for req, rows, first in step.segments:
        table = POLICY_ACTIONS.get(req.policy, (0, 0, 0, 0))
        code = table[int(decision[req.slot])] if req.slot else 0
        for i in range(rows):
            steer_here = code == 1 and first + i >= req.prompt - 1
            out.append((2 if code == 2 else 1 if steer_here else 0, req.slot))
    return out


def far_rows(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor) -> list[int]:
    """Rows whose difference exceeds bf16 tolerance: 2 % of the norm of the residual stream
    they belong to (``scale``; a layer's own output can be small beside the stream it adds
    to, and its rounding follows the stream's size)."""
    err = (got - want).norm(dim=-1)
    return torch.nonzero(err > 2e-2 * scale.norm(dim=-1) + 1e-6).flatten().tolist()


def check_plan(
    tally: Tally, where: str, step: Step, eager: Snapshot, plain: Snapshot, cfg: Config,
    counted: dict[int, int], v: torch.Tensor,
) -> None:  # fmt: skip
    """Eager guard against the plan and the unguarded stack."""
    for req, rows, first in step.segments:
        if req.slot:
            want = req.plan if first + rows >= req.prompt else gg.UNDECIDED
            got = int(eager.decision[req.slot])
            tally.check(got == want, f"{where}: request {req.rid} decided {got}, want {want}")
    delta, v = cfg.alpha * v.float().cpu(), v.float().cpu()
    for row, (action, slot) in enumerate(row_actions(step, eager.decision)):
        counted[slot] = counted.get(slot, 0) + int(action != 0)
        got, base = eager.hidden[row], plain.hidden[row]
        if action == 0:
            tally.check(torch.equal(got, base), f"{where}: row {row} changed, no action")
        elif action == 1:
            err = float((got - base - delta).norm())
            bound = 1e-2 * float(base.norm() + delta.norm())
            tally.check(err <= bound, f"{where}: row {row} not moved by alpha * v ({err:.3g})")
        else:
            left = float(eager.stream[row] @ v)
            bound = 1e-2 * float(eager.stream[row].norm())
            tally.check(abs(left) <= bound, f"{where}: row {row} keeps {left:.3g} along v")
    for slot in sorted({req.slot for req, _, _ in step.segments if req.slot}):
        got, want = int(eager.positions[slot]), counted.get(slot, 0)
        tally.check(got == want, f"{where}: slot {slot} counted {got} rows, want {want}")


def check_against_eager(
    tally: Tally, name: str, where: str, step: Step, got: Snapshot, eager: Snapshot,
    score_scale: float,
) -> None:  # fmt: skip
    """A graph or compiled run against eager: decisions and counts exactly, scores within 5 %
    of the scores' typical size, captured activations and output rows within bf16 tolerance
    (``far_rows``)."""
    idx = torch.tensor(sorted({req.slot for req, _, _ in step.segments if req.slot}))
    if idx.numel():
        same = torch.equal(got.decision[idx], eager.decision[idx])
        tally.check(same, f"{name} {where}: decisions differ")
        same = torch.equal(got.positions[idx], eager.positions[idx])
        tally.check(same, f"{name} {where}: counted rows differ")
        decided = idx[eager.decision[idx] != gg.UNDECIDED]
        gap = tally.gap(f"{name} score", got.score[decided], eager.score[decided])
        tally.check(gap <= 5e-2 * score_scale, f"{name} {where}: score gap {gap:.3g}")
        tally.gap(f"{name} capture", got.captures[:, idx], eager.captures[:, idx])
        bad = far_rows(got.captures[:, idx], eager.captures[:, idx], eager.captures[:, idx])
        tally.check(not bad, f"{name} {where}: captures differ beyond bf16 tolerance")
    rows = step.rows
    tally.gap(f"{name} rows", got.hidden[:rows], eager.hidden[:rows])
    bad = far_rows(got.hidden[:rows], eager.hidden[:rows], eager.stream[:rows])
    tally.check(not bad, f"{name} {where}: rows {bad[:8]} differ beyond bf16 tolerance")


# ----------------------------------------------------------------------------- main


def plan_thresholds(model: Model, steps: list[Step]) -> float:
    """The shadow pass: every request's eager score, then thresholds half the scores' typical
    size (median |score|, returned) away from it, so that it decides as planned."""
    b = model.buffers()
    shadow = Run("shadow", HostSide(model.cfg, b, shadow=True), model.guarded(b))
    scores = []
    for i, step in enumerate(steps):
        snap = shadow.step(step, *step_inputs(model.cfg, i, step))
        for req, rows, first in step.segments:
            if req.slot and first <= req.prompt - 1 < first + rows:
                req.score = float(snap.score[req.slot])
                scores.append(abs(req.score))
    scale = sorted(scores)[len(scores) // 2]
    margin = 0.5 * scale
    for step in steps:
        for req in step.new:
            s = req.score
            req.threshold, req.harmless_below = {
                gg.HARMFUL: (s - margin, s - margin),
                gg.HARMLESS: (s + margin, s + margin / 2),
                gg.UNSURE: (s + margin, s - margin),
            }[req.plan]
    return scale


def make_runs(model: Model) -> dict[str, Run]:
    """Unguarded and guarded eager, the CUDA graph (GPU only) and torch.compile, each with its
    own buffers."""
    cfg = model.cfg
    runs = {"plain": Run("plain", HostSide(cfg, model.buffers(), False), model.unguarded())}
    for name in ("eager", "graph", "compiled"):
        if name == "graph" and cfg.device != "cuda":
            continue
        b = model.buffers()
        stack = model.guarded(b)
        forward: Callable[..., Any] = stack
        if name == "graph":
            forward = graph_forward(cfg, stack)
        elif name == "compiled":
            forward = compiled_forward(cfg, stack)
        runs[name] = Run(name, HostSide(cfg, b, False), forward)
    return runs


def run_checks(model: Model, steps: list[Step], score_scale: float, tally: Tally) -> list[str]:
    """The runs step by step, compared as they go; the runs' names."""
    runs = make_runs(model)
    counted: dict[int, int] = {}
    for i, step in enumerate(steps):
        for req in step.new:
            counted.pop(req.slot, None)
        x, positions = step_inputs(model.cfg, i, step)
        snaps = {name: run.step(step, x, positions) for name, run in runs.items()}
        where = f"step {i} ({step.rows} rows, {len(step.segments)} requests)"
        check_plan(tally, where, step, snaps["eager"], snaps["plain"], model.cfg, counted, model.v)
        for name in ("graph", "compiled"):
            if name in snaps:
                check_against_eager(tally, name, where, step, snaps[name], snaps["eager"],
                                    score_scale)  # fmt: skip
    return sorted(runs)


def time_replays(model: Model) -> list[dict[str, Any]]:
    """Guarded against unguarded, per tokens per step: CUDA-graph replays on a GPU (guard
    buffers filled with a decided batch), eager calls on the CPU."""
    cfg = model.cfg
    out = []
    for tokens in TOKENS_PER_STEP:
        b = model.buffers(max(TOKENS_PER_STEP))
        host = HostSide(cfg, b, False)
        rows_each = max(1, tokens // (cfg.num_slots - 1))
        reqs = [Request(i, 1 + i % (cfg.num_slots - 1), 1, 1 << 30, "routing", gg.HARMFUL)
                for i in range(-(-tokens // rows_each))]  # fmt: skip
        segments = [(r, min(rows_each, tokens - k * rows_each), 1) for k, r in enumerate(reqs)]
        step = Step(segments, new=list({r.slot: r for r in reqs}.values()))
        host.before(step)
        x = torch.randn(tokens, cfg.hidden, device=cfg.device).to(torch.bfloat16)
        positions = torch.arange(tokens, device=cfg.device)
        row: dict[str, Any] = {"tokens": tokens}
        for name, stack in (("guarded", model.guarded(b)), ("unguarded", model.unguarded())):
            row[f"{name}_ms"] = time_one(cfg, stack, x, positions)
        row["ratio"] = row["guarded_ms"] / row["unguarded_ms"]
        out.append(row)
        print(f"{tokens:>4} tokens/step: guarded {row['guarded_ms']:.4f} ms, unguarded "
              f"{row['unguarded_ms']:.4f} ms, ratio {row['ratio']:.4f}", flush=True)  # fmt: skip
    return out


def time_one(cfg: Config, stack: Stack, x: torch.Tensor, positions: torch.Tensor) -> float:
    """Median milliseconds per call of ``stack`` over ``cfg.replays`` (CUDA: a captured graph's
    replays, timed with CUDA events, in 5 rounds)."""

    def fn() -> Any:
        return stack(x, positions)

    if cfg.device != "cuda":
        fn()
        times = []
        for _ in range(cfg.replays):
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
        return sorted(times)[len(times) // 2]
    graph, _ = capture(fn)
    rounds = []
    for _ in range(5):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(cfg.replays):
            graph.replay()
        stop.record()
        stop.synchronize()
        rounds.append(start.elapsed_time(stop) / cfg.replays)
    return sorted(rounds)[len(rounds) // 2]


def cudagraph_counters() -> dict[str, int]:
    """Inductor's CUDA-graph counters (e.g. ``cudagraph_skips``: reduce-overhead fell back to
    running without a graph, which would make its check a check of Inductor alone)."""
    from torch._dynamo.utils import counters

    return {k: int(n) for k, n in counters["inductor"].items() if "cudagraph" in k}


def machine(cfg: Config) -> dict[str, Any]:
    """What ran it: versions, CPU count and load, the GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cpus": os.cpu_count(), "load_average": os.getloadavg(),
    }  # fmt: skip
    if cfg.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def git_commit() -> str:
    """HEAD of the checkout, ``+dirty`` with uncommitted changes ("unknown" without git)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True)  # fmt: skip
        return done.stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="small, on the CPU, no CUDA graphs")
    parser.add_argument("--out", type=Path, help="JSON record (default: docs/bench/)")
    args = parser.parse_args(argv)
    cfg = Config.for_mode(args.fast)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --fast for the CPU check", file=sys.stderr)
        return 2
    began = time.perf_counter()
    with torch.inference_mode():
        record = check_and_time(cfg)
    record["command"] = " ".join(["python", *sys.argv])
    record["seconds"] = time.perf_counter() - began
    out = args.out or REPO / f"docs/bench/gpu_guard_check-{record['mode']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    verdict = "FAIL" if record["mismatches"] else "PASS"
    print(f"{verdict} in {record['seconds']:.0f} s; record: {out}")
    return 1 if record["mismatches"] else 0


def check_and_time(cfg: Config) -> dict[str, Any]:
    """Build, plan, check, time; the JSON record's figures."""
    model = Model.build(cfg)
    steps = script(cfg)
    score_scale = plan_thresholds(model, steps)
    tally = Tally()
    print(f"{len(steps)} steps, {sum(len(s.new) for s in steps)} requests, "
          f"median |score| {score_scale:.3g}", flush=True)  # fmt: skip
    checked = time.perf_counter()
    runs = run_checks(model, steps, score_scale, tally)
    skipped = "" if cfg.device == "cuda" else "; CUDA graphs skipped on the CPU"
    print(f"checks {tally.checks}, mismatches {len(tally.mismatches)} "
          f"(runs: {', '.join(runs)}{skipped})")  # fmt: skip
    for name, gap in sorted(tally.max_gap.items()):
        same, total = tally.identical[name]
        print(f"  {name} against eager: max gap {gap:.3g}, bit-identical {same}/{total}")
    checks_seconds = time.perf_counter() - checked
    graphs = cudagraph_counters()
    if graphs:
        print(f"  torch.compile CUDA-graph counters: {graphs}")
    timing = time_replays(model)
    return {
        "commit": git_commit(), "machine": machine(cfg),
        "mode": "gpu" if cfg.device == "cuda" else "fast", "config": asdict(cfg),
        "median_abs_score": score_scale, "steps": len(steps),
        "coverage": coverage(steps, cfg.max_tokens), "runs": runs, "checks": tally.checks,
        "mismatches": tally.mismatches, "max_gap": tally.max_gap,
        "bit_identical": tally.identical, "checks_seconds": checks_seconds,
        "compile_cudagraph_counters": graphs, "timing": timing,
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
