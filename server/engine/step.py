"""Which rows of the current forward pass belong to which request (vLLM V1 model runner).

Runs in the vLLM worker. vLLM packs every scheduled request's new tokens into one flat batch of
rows; the layout changes every step (requests join, finish, get preempted, prefill in chunks).
``batch_layout`` reads it from the runner's state right before the forward, as arrays (the one
reading of the runner's layout: the guard's buffers and the evaluation's eager hooks use it).

Facts relied on (``v1/worker/gpu_model_runner.py``, vLLM 0.32; the runner class is checked at
load by ``server.engine.model.check_runner``): ``_update_states`` and ``_prepare_inputs`` have
run before ``_model_forward``, so ``input_batch.req_ids[:n]`` orders the requests,
``query_start_loc.np[i]:[i+1]`` are request i's rows, ``input_batch.num_computed_tokens_cpu[i]``
is the position of its first row and ``input_batch.num_prompt_tokens[i]`` its prompt length
(unchanged when a preempted request is recomputed from position 0 with its generated tokens
appended).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Attributes of the V1 runner the row mapping reads; their absence means another runner.
RUNNER_ATTRIBUTES: tuple[str, ...] = ("input_batch", "query_start_loc", "requests")


@dataclass(frozen=True)
class BatchLayout:
    """The requests of one forward: request i owns rows ``starts[i]:stops[i]``, which hold
    positions ``first_pos[i]`` on; its prompt has ``num_prompt[i]`` tokens."""

    req_ids: list[str]
    starts: np.ndarray
    stops: np.ndarray
    first_pos: np.ndarray
    num_prompt: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.stops[-1]) if len(self.req_ids) else 0

    def per_row(self, values: np.ndarray) -> np.ndarray:
        """A per-request array repeated over each request's rows."""
        return np.repeat(values, self.stops - self.starts)

    def has_last_prompt(self) -> np.ndarray:
        """Per request: does this forward process its last prompt token?"""
        last = self.num_prompt - 1
        return (last >= self.first_pos) & (last < self.first_pos + self.stops - self.starts)

    def positions(self) -> np.ndarray:
        """Absolute position of every row."""
        return np.arange(self.num_rows) + self.per_row(self.first_pos - self.starts)


def batch_layout(runner: Any, expected_rows: int | None = None) -> BatchLayout | None:
    """The layout of the forward about to run, or None when no request is scheduled or the row
    count differs from ``expected_rows`` (the scheduler's count, when the caller knows it)."""
    batch = runner.input_batch
    n = int(batch.num_reqs)
    if n == 0:
        return None
    qsl = np.asarray(runner.query_start_loc.np[: n + 1], dtype=np.int64)
    if expected_rows is not None and int(qsl[n]) != expected_rows:
        return None
    return BatchLayout(
        req_ids=list(batch.req_ids[:n]),
        starts=qsl[:n].copy(),
        stops=qsl[1:].copy(),
        first_pos=np.asarray(batch.num_computed_tokens_cpu[:n], dtype=np.int64).copy(),
        num_prompt=np.asarray(batch.num_prompt_tokens[:n], dtype=np.int64).copy(),
    )


def extra_args(runner: Any, req_id: str) -> dict[str, Any]:
    """The request's ``SamplingParams.extra_args`` (empty if none)."""
    state = runner.requests.get(req_id)
    params = getattr(state, "sampling_params", None)
    return getattr(params, "extra_args", None) or {}
