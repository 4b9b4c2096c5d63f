"""The guard's maths inside the forward (``guard_graph``) and its runner side (``runtime``), on
hand-made steps, against values computed by hand.

Hidden size 4, unit direction v = (1/2, 1/2, 1/2, 1/2), alpha = 2 (so alpha * v = (1, 1, 1, 1)),
score = stream[0] (u = e0, c = 0), threshold 0. Each step goes as in the worker: a fake V1
runner holds the batch, ``GuardRuntime.before_forward`` fills the buffers, the wrapped decoder
layer (around a pass-through layer returning the given ``(hidden, residual)``) runs the maths,
``after_forward`` reads the slots back. Every value is exact in float32, so rows are compared
exactly. The last tests trace the wrapped layer with torch.compile (full graph, dynamic token
count): no graph break, no data-dependent shape, the same numbers.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from babelgate.server.engine import runtime as runtime_module
from babelgate.server.engine.guard_graph import GuardBuffers, GuardedDecoderLayer, GuardSpec
from babelgate.server.engine.readback import Readback
from babelgate.server.engine.runtime import CAPTURE_KEY, GuardRuntime
from babelgate.server.engine.types import (
    EXTRA_ARGS_KEY,
    TEST_FAULTS_ENV,
    GateParams,
    GuardParams,
    GuardrailStartupError,
)

LAYER = 2
V = torch.tensor([0.5, 0.5, 0.5, 0.5])
STEER = 2.0 * V  # alpha * v = (1, 1, 1, 1)
ONE_LAYER = GuardSpec((LAYER,))


class PassThrough(torch.nn.Module):
    """A decoder layer whose output is whatever the test hands it."""

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor):
        return hidden, residual


class Guard:
    """One runner, its guard runtime and its wrapped layers."""

    def __init__(self, spec: GuardSpec = ONE_LAYER, gate: GateParams | None = None):
        self.runner = SimpleNamespace(requests={})
        self.buffers = GuardBuffers(spec, 4, 32, 8, torch.device("cpu"), torch.float32)
        self.runtime = GuardRuntime(self.runner, spec, self.buffers)
        gate = gate or GateParams(LAYER, np.float32([[1, 0, 0, 0]]), 0.0, V.numpy(), 2.0, "fp")
        if spec.read_layers:
            self.runtime.install(gate)
        self.layers = {
            layer: GuardedDecoderLayer(PassThrough(), layer, spec, self.buffers)
            for layer in spec.layers
        }

    def step(
        self,
        requests: list[tuple[str, int, int, int, dict[str, Any] | None]],
        **per_layer: tuple[torch.Tensor, torch.Tensor],
    ) -> dict[int, torch.Tensor]:
        """Run one forward: ``(runner id, rows, first position, prompt length, extra_args)``
        per request; ``per_layer``: ``L<n>=(hidden, residual)``; the layers' new hidden."""
        starts = np.cumsum([0] + [rows for _, rows, _, _, _ in requests])
        self.runner.input_batch = SimpleNamespace(
            num_reqs=len(requests),
            req_ids=[rid for rid, *_ in requests],
            num_computed_tokens_cpu=np.array([first for _, _, first, _, _ in requests]),
            num_prompt_tokens=np.array([prompt for _, _, _, prompt, _ in requests]),
        )
        self.runner.query_start_loc = SimpleNamespace(np=starts)
        self.runner.requests = {
            rid: SimpleNamespace(sampling_params=SimpleNamespace(extra_args=extra))
            for rid, _, _, _, extra in requests
        }
        self.runtime.before_forward()
        out = {}
        for name, (hidden, residual) in per_layer.items():
            layer = int(name[1:])
            out[layer] = self.layers[layer](hidden, residual)[0]
        self.runtime.after_forward()
        return out

    def verdicts(self, ids: list[str], release: list[str] | None = None) -> dict[str, Any]:
        return self.runtime.verdicts(ids, release or [])


def guard(
    bid: str, policy: str = "routing", threshold: float = 0.0, harmless: float | None = None
) -> dict[str, Any]:
    """A request's ``extra_args`` as the server sends them."""
    params = GuardParams("de", policy, threshold, "recalibrated", bid, harmless)  # type: ignore[arg-type]
    return {EXTRA_ARGS_KEY: params.to_extra_args()}


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_prefill_steers_harmful_from_the_last_prompt_token_ablates_harmless_leaves_the_rest():
    g = Guard()
    hidden = t([9, 9, 9, 9], [7, -7, 7, -7], [1, 2, 3, 4],
               [2, 0, 2, 0], [-3, 1, 0, 2],
               [5, 6, 7, 8], [1, 0, 0, 0],
               [3, 1, 4, 1], [2, 7, 1, 8], [-1, -2, -3, -4])  # fmt: skip
    residual = torch.zeros_like(hidden)
    residual[2] = t([1, 0, 0, 0])[0]  # hot's last prompt token: stream (2, 2, 3, 4), score 2
    residual[3] = t([0, 2, 0, 2])[0]  # calm: stream (2, 2, 2, 2), stream . v = 4
    residual[4] = t([0, 0, 1, 1])[0]  # calm's last prompt token: stream (-3, 1, 1, 3), score -3
    before = hidden.clone()
    out = g.step(
        [
            ("hot", 3, 0, 3, guard("hot")),  # rows 0-2, harmful
            ("calm", 2, 0, 2, guard("calm")),  # rows 3-4, harmless
            ("watch", 2, 0, 2, guard("watch", "shadow")),  # rows 5-6, harmful but shadow
            ("off", 1, 0, 1, guard("off", "none")),  # row 7, never scored
            ("other", 1, 0, 1, {"something_else": 1}),  # row 8, extra_args but no guard
            ("plain", 1, 0, 1, None),  # row 9, no extra_args at all
        ],
        L2=(hidden, residual),
    )[LAYER]
    # harmful: + alpha * v from the last prompt token on, earlier prompt rows untouched
    assert torch.equal(out[:2], before[:2])
    assert torch.equal(out[2], t([2, 3, 4, 5])[0])
    assert torch.equal(out[2], before[2] + STEER)
    # harmless: h - (s . v) v on every row, s = hidden + residual (the residual stream)
    assert torch.equal(out[3], t([0, -2, 0, -2])[0])  # (2, 0, 2, 0) - 4 * v
    assert torch.equal(out[4], t([-3.5, 0.5, -0.5, 1.5])[0])  # (-3, 1, 0, 2) - 1 * v
    for row in (3, 4):
        assert float((out[row] + residual[row]) @ V) == 0.0, "v is projected out"
    # shadow, policy none, foreign and plain rows: exactly unchanged (slot 0 or no action)
    assert torch.equal(out[5:], before[5:])
    assert torch.equal(hidden, before), "the layer's own output tensor is not written"

    verdicts = g.verdicts(["hot", "calm", "watch", "off"])
    assert (verdicts["hot"]["score"], verdicts["hot"]["intervention"]) == (2.0, "steer")
    assert (verdicts["calm"]["score"], verdicts["calm"]["intervention"]) == (-3.0, "ablate")
    assert (verdicts["watch"]["decision"], verdicts["watch"]["intervention"]) == ("harmful", "none")
    assert (verdicts["off"]["score"], verdicts["off"]["intervention"]) == (None, "none")
    assert [verdicts[b]["intervened_positions"] for b in ("hot", "calm", "watch")] == [1, 2, 0]
    assert g.runtime.decisions == 3  # hot, calm, watch; "none" gets no slot and no score

    # the next decode step: one row each, the frozen decisions apply again
    out = g.step(
        [("hot", 1, 3, 3, guard("hot")), ("calm", 1, 2, 2, guard("calm")),
         ("other", 1, 1, 1, {"something_else": 1})],
        L2=(t([-5, 0, 0, 0], [1, 1, 1, 1], [4, 4, 4, 4]),
            t([0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0])),
    )[LAYER]  # fmt: skip
    assert torch.equal(out[0], t([-4, 1, 1, 1])[0])  # steered although its stream scores -5
    assert torch.equal(out[1], t([-1, -1, -1, -1])[0])  # (1, 1, 1, 1) - 4 * v
    assert torch.equal(out[2], t([4, 4, 4, 4])[0])
    assert g.runtime.decisions == 3 and g.verdicts(["hot"])["hot"]["intervened_positions"] == 2
    assert not g.buffers.slot.any(), "after each step every row is back on the no-op slot"


def test_chunked_prefill_decides_in_the_last_chunk_and_steers_only_from_there():
    g = Guard()
    hidden = t([1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3])
    out = g.step([("long", 3, 0, 5, guard("long"))], L2=(hidden, torch.zeros(3, 4)))[LAYER]
    assert torch.equal(out, hidden), "no decision yet: rows before it are left alone"
    assert g.verdicts(["long"])["long"]["score"] is None
    hidden = t([6, 0, 0, 0], [1, 0, 0, 0])  # positions 3 and 4; position 4 scores 1
    out = g.step([("long", 2, 3, 5, guard("long"))], L2=(hidden, torch.zeros(2, 4)))[LAYER]
    assert torch.equal(out, t([6, 0, 0, 0], [2, 1, 1, 1]))


def test_preempted_request_is_recomputed_with_its_frozen_decision():
    g = Guard()
    g.step([("r", 2, 0, 2, guard("r"))], L2=(t([1, 0, 0, 0], [1, 0, 0, 0]), torch.zeros(2, 4)))
    # recomputed from position 0 with one generated token: prompt rows 0-1, generated row 2;
    # the stream now scores -1 at the last prompt token, but the decision stays harmful
    hidden = t([0, 0, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 0])
    out = g.step([("r", 3, 0, 2, guard("r"))], L2=(hidden, torch.zeros(3, 4)))[LAYER]
    assert torch.equal(out, t([0, 0, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]))
    assert g.verdicts(["r"])["r"]["score"] == 1.0 and g.runtime.decisions == 1


def test_always_policies_act_without_waiting_for_the_decision():
    g = Guard()
    hidden = t([1, 1, 1, 1], [-2, 0, 0, 0])
    out = g.step(
        [("s", 1, 0, 2, guard("s", "always-steer")), ("a", 1, 0, 3, guard("a", "always-ablate"))],
        L2=(hidden, torch.zeros(2, 4)),
    )[LAYER]
    assert torch.equal(out[0], hidden[0]), "steering starts at the last prompt token"
    assert torch.equal(out[1], t([-1.5, 0.5, 0.5, 0.5])[0]), "ablation needs no decision"
    out = g.step(
        [("s", 1, 1, 2, guard("s", "always-steer"))], L2=(t([-9, 0, 0, 0]), torch.zeros(1, 4))
    )[LAYER]
    assert torch.equal(out[0], t([-8, 1, 1, 1])[0]), "steered although it scores harmless"
    assert g.verdicts(["s"])["s"]["decision"] == "harmless"


def test_requests_gone_free_slots_move_records_to_finished_and_release_evicts_them(monkeypatch):
    g = Guard()
    # two parallel-sampling siblings share one guard id (and slot); a third has its own
    g.step([("s-0", 1, 0, 1, guard("sib")), ("s-1", 1, 0, 1, guard("sib")),
            ("x", 1, 0, 1, guard("x"))],
           L2=(t([1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]), torch.zeros(3, 4)))  # fmt: skip
    rt = g.runtime
    rt.refresh()
    assert set(rt.active) == {"sib", "x"} and rt.runner_ids() == {"s-0", "s-1", "x"}
    assert len(rt.slot_of) == 2 and rt.decisions == 2

    g.step([("s-1", 1, 1, 1, guard("sib")), ("x", 1, 1, 1, guard("x"))],
           L2=(t([0, 0, 0, 0], [0, 0, 0, 0]), torch.zeros(2, 4)))  # fmt: skip
    assert "sib" in rt.active and rt.runner_ids() == {"s-1", "x"}  # a sibling still runs
    g.runner.requests.pop("s-1")
    assert g.verdicts(["sib"], ["sib"])["sib"]["intervention"] == "steer"
    assert set(rt.active) == {"x"} and "sib" not in rt.finished, "read and released: gone"
    assert g.verdicts(["sib"]) == {} and len(rt.slot_of) == 1

    g.verdicts(["x"], ["x"])  # released while running: dropped as soon as it finishes
    g.runner.requests.clear()
    assert g.verdicts(["x"]) == {} and rt.active == {} and rt.finished == {}
    assert rt.slot_of == {} and rt.runner_ids() == set() and len(rt.free) == 7

    monkeypatch.setattr(runtime_module, "MAX_FINISHED_VERDICTS", 2)
    for bid in ("a", "b", "c"):
        g.step([(bid, 1, 0, 1, guard(bid))], L2=(t([1, 0, 0, 0]), torch.zeros(1, 4)))
        g.runner.requests.clear()
        g.runtime.verdicts([], [])
    assert list(rt.finished) == ["b", "c"], "unfetched verdicts beyond the cap go oldest first"


def test_a_freed_slot_is_reset_before_its_next_request():
    g = Guard()
    g.step([("a", 1, 0, 1, guard("a"))], L2=(t([1, 0, 0, 0]), torch.zeros(1, 4)))
    g.runner.requests.clear()
    g.verdicts(["a"], ["a"])
    out = g.step([("b", 2, 0, 2, guard("b"))],
                 L2=(t([5, 0, 0, 0], [-1, 0, 0, 0]), torch.zeros(2, 4)))[LAYER]  # fmt: skip
    assert g.verdicts(["b"])["b"]["decision"] == "harmless", "a's decision did not leak to b"
    assert g.verdicts(["b"])["b"]["intervened_positions"] == 2
    assert torch.equal(out[1], t([-0.75, 0.25, 0.25, 0.25])[0])  # (-1, 0, 0, 0) + v / 2


def test_multi_layer_gate_sums_its_layers_dot_products_and_decides_at_the_last():
    u = np.float32([[0, 0, 2, 0], [0, 0, 0, 2]])
    gp = GateParams(5, u, 0.5, V.numpy(), 2.0, "fp", read_layers=(2, 5))
    assert GateParams.from_wire(gp.to_wire()).read_layers == (2, 5)
    with pytest.raises(ValueError, match="end at the decision layer"):
        GateParams(2, u, 0.5, V.numpy(), 1.0, "fp", read_layers=(2, 5))
    g = Guard(GuardSpec((2, 5)), gp)
    # rows 0-1 are earlier prompt tokens (not read: huge values change nothing); row 2 is the
    # last: stream (1, 2, 0.75, 4) . u_0 = 1.5 at layer 2, (9, 9, 9, 0.75) . u_1 = 1.5 at 5
    h2 = t([1e30, 1, 1e30, 1], [-1e30, 0, -1e30, 0], [1, 2, 0.25, 4])
    r2 = t([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0.5, 0])
    h5 = t([7, 7, 7, 7], [1e30, 0, 0, 1e30], [0, 0, 0, -0.5])
    r5 = t([0, 0, 0, 0], [0, 0, 0, 0], [9, 9, 9, 1.25])
    g.step([("r1", 3, 0, 3, guard("b1", "shadow"))], L2=(h2, r2), L5=(h5, r5))
    assert g.verdicts(["b1"])["b1"]["score"] == 1.5 + 1.5 + 0.5


def test_a_gate_reading_a_subset_of_the_engines_layers_loads_others_are_refused():
    g = Guard(GuardSpec((1, 2)))  # the one-layer gate at 2 fits an engine reading 1 and 2
    out = g.step([("r", 1, 0, 1, guard("r"))], L1=(t([9, 9, 9, 9]), torch.zeros(1, 4)),
                 L2=(t([1, 0, 0, 0]), torch.zeros(1, 4)))  # fmt: skip
    assert g.verdicts(["r"])["r"]["score"] == 1.0 and torch.equal(out[2], t([2, 1, 1, 1]))
    other = GateParams(3, np.float32([[1, 0, 0, 0]]), 0.0, V.numpy(), 2.0, "fp")
    with pytest.raises(GuardrailStartupError, match="decide at 2"):
        g.runtime.install(other)
    v5 = np.float32([0.5, 0.5, 0.5, 0.5, 0])
    wide = GateParams(2, np.float32([[1, 0, 0, 0, 0]]), 0.0, v5, 2.0, "w")
    with pytest.raises(GuardrailStartupError, match="hidden size is 4"):
        g.runtime.install(wide)


def test_capture_copies_each_layers_stream_at_the_last_prompt_token():
    g = Guard(GuardSpec((), (0, 3)))
    h0, h3 = t([1, 2, 3, 4], [5, 6, 7, 8]), t([0, 1, 0, 1], [2, 2, 2, 2])
    g.step([("c", 2, 0, 2, {CAPTURE_KEY: "c1"}), ("p", 1, 0, 1, None)],
           L0=(torch.cat([h0, t([7, 7, 7, 7])]), torch.ones(3, 4)),
           L3=(torch.cat([h3, t([7, 7, 7, 7])]), torch.zeros(3, 4)))  # fmt: skip
    got = np.frombuffer(g.runtime.pop_captures(["c1", "nope"])["c1"], np.float32).reshape(2, 4)
    np.testing.assert_array_equal(got, [[6, 7, 8, 9], [2, 2, 2, 2]])
    assert g.runtime.pop_captures(["c1"]) == {}, "popped once"


@pytest.mark.parametrize("rows", [3, 7])
def test_the_wrapped_layer_compiles_to_one_graph_with_the_same_numbers(rows):
    """torch.compile traces the maths whole (``fullgraph``: no graph break) for a symbolic
    token count, and gives exactly the eager results."""
    spec = GuardSpec((1, 2))
    eager, compiled = Guard(spec), Guard(spec)
    compiled.layers = {
        layer: torch.compile(module, fullgraph=True, dynamic=True, backend="aot_eager")
        for layer, module in compiled.layers.items()
    }
    rng = np.random.default_rng(rows)
    h1, r1, h2, r2 = (torch.from_numpy(rng.standard_normal((rows, 4)).astype(np.float32))
                      for _ in range(4))  # fmt: skip
    batch = [("a", 2, 0, 2, guard("a")), ("b", rows - 2, 0, rows - 2, guard("b"))]
    want = eager.step(batch, L1=(h1, r1), L2=(h2, r2))
    got = compiled.step(batch, L1=(h1, r1), L2=(h2, r2))
    assert torch.equal(want[2], got[2]) and torch.equal(want[1], got[1])
    assert eager.verdicts(["a", "b"]) == compiled.verdicts(["a", "b"])


def test_an_injected_gate_failure_scores_every_guarded_request_nan_until_switched_off(
    monkeypatch,
):
    """The test-only switch poisons the gate in the graph itself: both requests of the step
    score NaN (which the server treats as a gate failure); off, the next request scores again."""
    g = Guard()
    with pytest.raises(PermissionError, match=TEST_FAULTS_ENV):
        g.runtime.inject_gate_failure(True)
    monkeypatch.setenv(TEST_FAULTS_ENV, "1")
    g.runtime.inject_gate_failure(True)
    hidden = t([2, 0, 0, 0], [-2, 0, 0, 0])
    g.step([("a", 1, 0, 1, guard("a")), ("b", 1, 0, 1, guard("b"))],
           L2=(hidden, torch.zeros_like(hidden)))  # fmt: skip
    verdicts = g.verdicts(["a", "b"])
    assert all(np.isnan(verdicts[b]["score"]) for b in ("a", "b")), verdicts
    g.runtime.inject_gate_failure(False)
    g.step([("c", 1, 0, 1, guard("c"))], L2=(hidden[:1], torch.zeros_like(hidden[:1])))
    assert g.verdicts(["c"])["c"]["score"] == 2.0


def test_abstain_band_leaves_unsure_requests_alone_and_decides_the_others():
    """Threshold 1, harmless below -1: at or above 1 harmful (steered), below -1 harmless
    (ablated), in [-1, 1) unsure: its rows unchanged, counted 0, under routing. Without a band
    (``flat``) the same score is harmless, as before bands existed; a fixed policy keeps its
    action whatever the decision."""
    g = Guard()
    band = {"threshold": 1.0, "harmless": -1.0}
    hidden = t([3, 3, 3, 3], [1, 0, 0, 0],  # hi: last row scores 1 (= threshold)
               [5, 5, 5, 5], [0.5, 2, 2, 2],  # mid: 0.5
               [-1, 4, 0, 0],  # edge: -1 (= harmless threshold: still unsure)
               [2, 0, 2, 0], [-1.5, 1.5, 1.5, 1.5],  # lo: -1.5
               [0.5, 0.5, 0.5, 0.5],  # flat (no band, threshold 1): 0.5
               [0, 0, 0, 0])  # fixed (always-steer): 0
    before = hidden.clone()
    out = g.step(
        [("hi", 2, 0, 2, guard("hi", **band)), ("mid", 2, 0, 2, guard("mid", **band)),
         ("edge", 1, 0, 1, guard("edge", **band)), ("lo", 2, 0, 2, guard("lo", **band)),
         ("flat", 1, 0, 1, guard("flat", threshold=1.0)),
         ("fixed", 1, 0, 1, guard("fixed", "always-steer", **band))],
        L2=(hidden, torch.zeros_like(hidden)),
    )[LAYER]  # fmt: skip
    assert torch.equal(out[0], before[0]) and torch.equal(out[1], t([2, 1, 1, 1])[0])
    assert torch.equal(out[2:5], before[2:5]), "unsure: not a bit changed"
    assert torch.equal(out[5], t([1, -1, 1, -1])[0])  # (2, 0, 2, 0) - 2 * v
    assert torch.equal(out[6], t([-2.25, 0.75, 0.75, 0.75])[0])  # - 1.5 * v
    assert torch.equal(out[7], t([0, 0, 0, 0])[0])  # - 1 * v
    assert torch.equal(out[8], t([1, 1, 1, 1])[0])  # + alpha * v
    # the next decode step: the frozen decisions apply; mid would now score harmful
    out = g.step(
        [("hi", 1, 2, 2, guard("hi", **band)), ("mid", 1, 2, 2, guard("mid", **band))],
        L2=(t([-5, 0, 0, 0], [9, 1, 1, 1]), torch.zeros(2, 4)),
    )[LAYER]  # fmt: skip
    assert torch.equal(out, t([-4, 1, 1, 1], [9, 1, 1, 1]))

    v = g.verdicts(["hi", "mid", "edge", "lo", "flat", "fixed"])
    got = {b: (v[b]["decision"], v[b]["harmful"], v[b]["score"], v[b]["intervention"],
               v[b]["intervened_positions"], v[b]["harmless_threshold"]) for b in v}  # fmt: skip
    assert got == {
        "hi": ("harmful", True, 1.0, "steer", 2, -1.0),
        "mid": ("unsure", False, 0.5, "none", 0, -1.0),
        "edge": ("unsure", False, -1.0, "none", 0, -1.0),
        "lo": ("harmless", False, -1.5, "ablate", 2, -1.0),
        "flat": ("harmless", False, 0.5, "ablate", 1, None),
        "fixed": ("unsure", False, 0.0, "steer", 1, -1.0),
    }
    assert g.runtime.decisions == 6


def test_the_threshold_is_compared_in_float64():
    """The float32 score 0.1f against a threshold one float64 step above it: harmless, as the
    transformers reference (float64) says. In float32 the threshold rounds onto the score and
    the request would be called harmful: the one place float64 stays."""
    score = np.float32(0.1)
    above = float(np.nextafter(float(score), 1.0))
    assert np.float32(above) == score, "a float32 comparison would call it harmful"
    g = Guard()
    g.step([("r", 1, 0, 1, guard("r", threshold=above)),
            ("q", 1, 0, 1, guard("q", threshold=float(score)))],
           L2=(t([score, 0, 0, 0], [score, 0, 0, 0]), torch.zeros(2, 4)))  # fmt: skip
    v = g.verdicts(["r", "q"])
    assert (v["r"]["decision"], v["r"]["score"]) == ("harmless", float(score))
    assert v["q"]["decision"] == "harmful"


@pytest.mark.parametrize(
    ("order", "decision", "rows"),
    [
        (("s-0", "s-1"), "harmful", [[2, 1, 1, 1], [0, 1, 1, 1]]),  # + alpha * v
        (("s-1", "s-0"), "harmless", [[-0.75, 0.25, 0.25, 0.25], [0.75, -0.25, -0.25, -0.25]]),
    ],
)
def test_siblings_at_their_last_prompt_token_in_one_step_decide_once_by_the_first(
    order, decision, rows
):
    """Parallel-sampling siblings share a slot: the runner gathers the first one's row only,
    so the slot is written once (no duplicate-index write), by a rule, not by a race."""
    streams = {"s-0": [1, 0, 0, 0], "s-1": [-1, 0, 0, 0]}
    g = Guard()
    out = g.step([(rid, 1, 0, 1, guard("sib")) for rid in order],
                 L2=(t(*(streams[rid] for rid in order)), torch.zeros(2, 4)))[LAYER]  # fmt: skip
    v = g.verdicts(["sib"])["sib"]
    assert (v["decision"], v["score"], v["intervened_positions"]) == (
        decision, streams[order[0]][0], 2
    )
    assert torch.equal(out, t(*rows))


def _count_waits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every ``Readback.wait`` (the one call that blocks on the device), then wait."""
    calls: list[str] = []
    real = Readback.wait

    def wait(self: Readback) -> None:
        calls.append("wait")
        real(self)

    monkeypatch.setattr(Readback, "wait", wait)
    return calls


def test_no_step_waits_for_the_device_only_the_reads_do(monkeypatch):
    """Steps with decisions, chunked prefill, requests leaving (their slots copied back and
    reused) and captures: no wait at all; the verdict RPC waits once for the running slot it
    reads, ``pop_captures`` once for its capture."""
    waits = _count_waits(monkeypatch)
    g = Guard(GuardSpec((LAYER,), (LAYER,)))
    one = (t([1, 0, 0, 0]), torch.zeros(1, 4))
    two = (t([1, 0, 0, 0], [-1, 0, 0, 0]), torch.zeros(2, 4))
    g.step([("a", 1, 0, 1, guard("a")), ("c", 1, 0, 3, guard("c"))], L2=two)
    g.step([("a", 1, 1, 1, guard("a")), ("b", 1, 0, 1, guard("b"))], L2=two)  # c gone
    g.step([("b", 1, 1, 1, guard("b")), ("d", 1, 0, 1, guard("d"))], L2=two)  # a gone
    g.step([("d", 1, 1, 1, guard("d")), ("x", 1, 0, 1, {CAPTURE_KEY: "x"})], L2=two)
    g.step([("d", 1, 2, 1, guard("d"))], L2=one)
    assert waits == [], "a step waited for the device"
    v = g.verdicts(["a", "b", "c", "d"])
    assert waits == ["wait"], "only d still runs: one copy, one wait"
    assert [v[k]["decision"] for k in "abcd"] == ["harmful", "harmless", None, "harmless"]
    assert [v[k]["intervened_positions"] for k in "abcd"] == [2, 2, 0, 3]
    assert g.runtime.pop_captures(["x"]) and waits == ["wait", "wait"]


def test_slot_results_still_copying_when_the_slot_is_reused_reach_their_record(monkeypatch):
    """The device behind the host (``ready`` is False: the copies of freed slots have not
    finished): a freed slot is reused at once; its first owner's verdict comes from the copy
    started before the reset, and the verdict RPC waits for that copy."""
    waits = _count_waits(monkeypatch)
    monkeypatch.setattr(Readback, "ready", lambda self: False)
    g = Guard()
    g.step([("a", 2, 0, 2, guard("a"))], L2=(t([0, 0, 0, 0], [3, 0, 0, 0]), torch.zeros(2, 4)))
    g.step([("b", 1, 0, 1, guard("b"))], L2=(t([-2, 0, 0, 0]), torch.zeros(1, 4)))  # a gone
    assert g.runtime.slot_of == {"guard:b": 1}, "b took a's slot"
    assert waits == []
    v = g.verdicts(["a", "b"])
    assert (v["a"]["decision"], v["a"]["score"], v["a"]["intervened_positions"]) == (
        "harmful", 3.0, 1
    )
    assert (v["b"]["decision"], v["b"]["score"], v["b"]["intervened_positions"]) == (
        "harmless", -2.0, 1
    )
    assert waits == ["wait", "wait"], "a's pending copy and b's read"
