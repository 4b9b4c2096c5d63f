"""Which rows of the current forward pass belong to which request (vLLM V1 model runner).

Runs in the vLLM worker. vLLM packs every scheduled request's new tokens into one flat batch of
rows; the layout changes every step (requests join, finish, get preempted, prefill in chunks).
Interventions must therefore be per request and per step: ``read_step`` turns the runner's state
at forward time into a list of ``RowSpan`` (rows, absolute positions, prompt length, the
request's ``extra_args``), built once per forward by a pre-hook on the first hooked decoder
layer (the stack's own hooks never fire).

Facts relied on (``v1/worker/gpu_model_runner.py``, vLLM 0.32; re-checked at install by
``check_runner``): ``_update_states`` and ``_prepare_inputs`` have run before the forward, so
``input_batch.req_ids[:n]`` orders the requests, ``query_start_loc.np[i]:[i+1]`` are request i's
rows, ``input_batch.num_computed_tokens_cpu[i]`` is the position of its first row and
``input_batch.num_prompt_tokens[i]`` its prompt length (unchanged when a preempted request is
recomputed from position 0 with its generated tokens appended).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Attributes of the V1 runner the row mapping reads; their absence means another runner.
RUNNER_ATTRIBUTES: tuple[str, ...] = ("input_batch", "query_start_loc", "requests")


@dataclass(frozen=True)
class RowSpan:
    """One request's rows in the current forward: rows ``start:stop`` hold positions
    ``first_pos:first_pos + (stop - start)``; its prompt has ``num_prompt`` tokens."""

    req_id: str
    start: int
    stop: int
    first_pos: int
    num_prompt: int
    extra: dict[str, Any]

    @property
    def last_prompt_row(self) -> int | None:
        """Row of the last prompt token if this step processes it, else None."""
        offset = self.num_prompt - 1 - self.first_pos
        return self.start + offset if 0 <= offset < self.stop - self.start else None

    def rows_from_position(self, position: int) -> range:
        """Rows of this span whose absolute position is >= ``position``."""
        return range(max(self.start, self.start + position - self.first_pos), self.stop)


def read_step(runner: Any, expected_rows: int | None) -> list[RowSpan] | None:
    """Row spans of the requests that carry ``extra_args`` in the forward about to run.

    ``expected_rows`` is the scheduler's token count for this step (None outside a real
    ``execute_model`` call). Returns None for forwards that are not a real scheduled step
    (profiling and dummy runs), which interventions must leave alone.
    """
    batch = runner.input_batch
    n = int(batch.num_reqs)
    if n == 0 or expected_rows is None:
        return None
    qsl = runner.query_start_loc.np
    if int(qsl[n]) != expected_rows:
        return None
    spans: list[RowSpan] = []
    requests = runner.requests
    for i, req_id in enumerate(batch.req_ids[:n]):
        state = requests.get(req_id)
        params = getattr(state, "sampling_params", None)
        extra = getattr(params, "extra_args", None)
        if not extra:
            continue
        spans.append(
            RowSpan(
                req_id=req_id,
                start=int(qsl[i]),
                stop=int(qsl[i + 1]),
                first_pos=int(batch.num_computed_tokens_cpu[i]),
                num_prompt=int(batch.num_prompt_tokens[i]),
                extra=extra,
            )
        )
    return spans
