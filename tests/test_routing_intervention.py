"""``RoutingIntervention``'s arithmetic on hand-made steps, against values computed by hand.

Hidden size 4, unit direction v = (1/2, 1/2, 1/2, 1/2), alpha = 2 (so alpha * v = (1, 1, 1, 1)),
score = stream[0] (u = e0, c = 0), threshold 0. Steps come from a fake model runner through
``read_step``, and ``on_layer`` is called as the worker's forward hook calls it, with the
layer's ``(hidden, residual)``. Every value is exact in float32, so rows are compared exactly.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from server.engine import interventions
from server.engine.interventions import RoutingIntervention
from server.engine.step import RowSpan, read_step
from server.engine.types import EXTRA_ARGS_KEY, GateParams

LAYER = 2
V = torch.tensor([0.5, 0.5, 0.5, 0.5])
STEER = 2.0 * V  # alpha * v = (1, 1, 1, 1)


def hook() -> RoutingIntervention:
    gate = GateParams(LAYER, np.float32([[1, 0, 0, 0]]), 0.0, V.numpy(), 2.0, "fp")
    return RoutingIntervention(gate, torch.device("cpu"), torch.float32)


def guard(bid: str, policy: str = "routing") -> dict[str, Any]:
    return {EXTRA_ARGS_KEY: {"id": bid, "language": "de", "policy": policy, "threshold": 0.0,
                             "threshold_source": "recalibrated"}}  # fmt: skip


def step(*requests: tuple[str, int, int, int, dict[str, Any] | None]) -> list[RowSpan]:
    """The row map of one forward, read from a fake V1 runner as the worker's pre-hook reads
    it: ``(runner id, rows this step, first position, prompt length, extra_args)`` each."""
    starts = np.cumsum([0] + [rows for _, rows, _, _, _ in requests])
    runner = SimpleNamespace(
        input_batch=SimpleNamespace(
            num_reqs=len(requests),
            req_ids=[rid for rid, *_ in requests],
            num_computed_tokens_cpu=np.array([first for _, _, first, _, _ in requests]),
            num_prompt_tokens=np.array([prompt for _, _, _, prompt, _ in requests]),
        ),
        query_start_loc=SimpleNamespace(np=starts),
        requests={
            rid: SimpleNamespace(sampling_params=SimpleNamespace(extra_args=extra))
            for rid, _, _, _, extra in requests
        },
    )
    spans = read_step(runner, int(starts[-1]))
    assert spans is not None
    return spans


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_prefill_steers_harmful_from_the_last_prompt_token_ablates_harmless_leaves_the_rest():
    h = hook()
    spans = step(
        ("hot", 3, 0, 3, guard("hot")),  # rows 0-2, harmful
        ("calm", 2, 0, 2, guard("calm")),  # rows 3-4, harmless
        ("watch", 2, 0, 2, guard("watch", "shadow")),  # rows 5-6, harmful but shadow
        ("off", 1, 0, 1, guard("off", "none")),  # row 7, never scored
        ("other", 1, 0, 1, {"something_else": 1}),  # row 8, extra_args but no guard
        ("plain", 1, 0, 1, None),  # row 9, no extra_args: not even in the row map
    )
    assert [s.req_id for s in spans] == ["hot", "calm", "watch", "off", "other"]
    hidden = t([9, 9, 9, 9], [7, -7, 7, -7], [1, 2, 3, 4],
               [2, 0, 2, 0], [-3, 1, 0, 2],
               [5, 6, 7, 8], [1, 0, 0, 0],
               [3, 1, 4, 1], [2, 7, 1, 8], [-1, -2, -3, -4])  # fmt: skip
    residual = torch.zeros_like(hidden)
    residual[2] = t([1, 0, 0, 0])[0]  # hot's last prompt token: stream (2, 2, 3, 4), score 2
    residual[3] = t([0, 2, 0, 2])[0]  # calm: stream (2, 2, 2, 2), stream . v = 4
    residual[4] = t([0, 0, 1, 1])[0]  # calm's last prompt token: stream (-3, 1, 1, 3), score -3
    before = hidden.clone()
    h.on_layer(LAYER, hidden, residual, spans)

    # harmful: + alpha * v from the last prompt token on, earlier prompt rows untouched
    assert torch.equal(hidden[:2], before[:2])
    assert torch.equal(hidden[2], t([2, 3, 4, 5])[0])
    assert torch.equal(hidden[2], before[2] + STEER)
    # harmless: h - (s . v) v on every row, s = hidden + residual (the residual stream)
    assert torch.equal(hidden[3], t([0, -2, 0, -2])[0])  # (2, 0, 2, 0) - 4 * v
    assert torch.equal(hidden[4], t([-3.5, 0.5, -0.5, 1.5])[0])  # (-3, 1, 0, 2) - 1 * v
    for row in (3, 4):
        assert float((hidden[row] + residual[row]) @ V) == 0.0, "v is projected out"
    # shadow, policy none, foreign and plain rows: exactly unchanged
    assert torch.equal(hidden[5:], before[5:])

    verdicts = h.verdicts(["hot", "calm", "watch", "off"], [])
    assert (verdicts["hot"]["score"], verdicts["hot"]["intervention"]) == (2.0, "steer")
    assert (verdicts["calm"]["score"], verdicts["calm"]["intervention"]) == (-3.0, "ablate")
    assert (verdicts["watch"]["decision"], verdicts["watch"]["intervention"]) == ("harmful", "none")
    assert (verdicts["off"]["score"], verdicts["off"]["intervention"]) == (None, "none")
    assert [verdicts[b]["intervened_positions"] for b in ("hot", "calm", "watch")] == [1, 2, 0]
    assert h.decisions == 3  # hot, calm, watch; "none" is never scored

    # the next decode step: one row each, the frozen decisions apply again
    spans = step(("hot", 1, 3, 3, guard("hot")), ("calm", 1, 2, 2, guard("calm")),
                 ("other", 1, 1, 1, {"something_else": 1}))  # fmt: skip
    hidden = t([-5, 0, 0, 0], [1, 1, 1, 1], [4, 4, 4, 4])
    residual = t([0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0])
    h.on_layer(LAYER, hidden, residual, spans)
    assert torch.equal(hidden[0], t([-4, 1, 1, 1])[0])  # steered although its stream scores -5
    assert torch.equal(hidden[1], t([-1, -1, -1, -1])[0])  # (1, 1, 1, 1) - 4 * v
    assert torch.equal(hidden[2], t([4, 4, 4, 4])[0])
    assert h.decisions == 3 and h.verdicts(["hot"], [])["hot"]["intervened_positions"] == 2


def test_chunked_prefill_decides_in_the_last_chunk_and_steers_only_from_there():
    h = hook()
    hidden = t([1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3])
    before = hidden.clone()
    h.on_layer(LAYER, hidden, torch.zeros(3, 4), step(("long", 3, 0, 5, guard("long"))))
    assert torch.equal(hidden, before), "no decision yet: rows before it are left alone"
    assert h.verdicts(["long"], [])["long"]["score"] is None
    hidden = t([6, 0, 0, 0], [1, 0, 0, 0])  # positions 3 and 4; position 4 scores 1
    h.on_layer(LAYER, hidden, torch.zeros(2, 4), step(("long", 2, 3, 5, guard("long"))))
    assert torch.equal(hidden, t([6, 0, 0, 0], [2, 1, 1, 1]))


def test_preempted_request_is_recomputed_with_its_frozen_decision():
    h = hook()
    h.on_layer(LAYER, t([1, 0, 0, 0], [1, 0, 0, 0]), torch.zeros(2, 4),
               step(("r", 2, 0, 2, guard("r"))))  # fmt: skip
    # recomputed from position 0 with one generated token: prompt rows 0-1, generated row 2;
    # the stream now scores -1 at the last prompt token, but the decision stays harmful
    hidden = t([0, 0, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 0])
    h.on_layer(LAYER, hidden, torch.zeros(3, 4), step(("r", 3, 0, 2, guard("r"))))
    assert torch.equal(hidden, t([0, 0, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]))
    assert h.verdicts(["r"], [])["r"]["score"] == 1.0 and h.decisions == 1


def test_requests_gone_move_records_to_finished_and_release_evicts_them(monkeypatch):
    h = hook()
    # two parallel-sampling siblings share one guard id; a third request has its own
    spans = step(("s-0", 1, 0, 1, guard("sib")), ("s-1", 1, 0, 1, guard("sib")),
                 ("x", 1, 0, 1, guard("x")))  # fmt: skip
    h.on_layer(LAYER, t([1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]), torch.zeros(3, 4), spans)
    assert set(h.active) == {"sib", "x"} and h.runner_ids() == {"s-0", "s-1", "x"}

    h.on_requests_gone({"s-0", "never-seen"})
    assert "sib" in h.active and h.runner_ids() == {"s-1", "x"}  # a sibling still runs
    h.on_requests_gone({"s-1"})
    assert set(h.active) == {"x"} and list(h.finished) == ["sib"]
    assert h.verdicts(["sib"], ["sib"])["sib"]["intervention"] == "steer"
    assert "sib" not in h.finished and h.verdicts(["sib"], []) == {}  # released: gone

    h.verdicts(["x"], ["x"])  # released while running: dropped as soon as it finishes
    h.on_requests_gone({"x"})
    assert h.active == {} and h.finished == {} and h.runner_ids() == set()

    monkeypatch.setattr(interventions, "MAX_FINISHED_VERDICTS", 2)
    for bid in ("a", "b", "c"):
        h.on_layer(LAYER, t([1, 0, 0, 0]), torch.zeros(1, 4), step((bid, 1, 0, 1, guard(bid))))
        h.on_requests_gone({bid})
    assert list(h.finished) == ["b", "c"], "unfetched verdicts beyond the cap go oldest first"
