"""One chat completion on the guarded engine: n engine requests, their verdicts, the outcome.

Runs in the API-server process. The gate decides inside each request's own prefill, so the
verdict comes back with the first generated token; ``ChatRun.open`` waits for exactly that and
returns the verdict of every choice, the route turns them into one
(``server.app.outcome.request_verdict``) and decides the outcome
(``server.app.outcome.decide_outcome``), and ``ChatRun.apply`` either lets generation continue
(steer / ablate / flag / nothing) or aborts the engine requests and answers with the templated
refusal (refuse, or a failed gate under fail-closed). ``n`` choices are ``n`` engine requests of
one sample each (seed + i when seeded), each with its own guard id, all judged by one plan and
one outcome. Every guard id is released in the worker: by the engine when its request runs to
its last output, by ``ChatRun.close`` when it is aborted (refusal, client gone, error). A run
needs only the engine and the plan, not the whole service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from babelgate.server.app.outcome import Outcome
from babelgate.server.app.service import Engine
from babelgate.server.engine.types import GuardParams, Verdict
from babelgate.server.plan import GuardPlan
from babelgate.server.refusal_templates import refusal_text

log = logging.getLogger(__name__)

FINISH_REASONS = {"stop": "stop", "length": "length"}


@dataclass(frozen=True)
class Piece:
    """New text of one choice; ``finish_reason`` set on the choice's last piece."""

    index: int
    text: str
    finish_reason: str | None


class ChatRun:
    """The engine requests behind one chat completion; ``close()`` aborts what is unfinished."""

    def __init__(
        self,
        engine: Engine,
        plan: GuardPlan,
        prompt_ids: list[int],
        sampling_params: list[Any],
        request_id: str,
        arrival: float,
    ) -> None:
        self.engine = engine
        self.plan = plan
        self.prompt_ids = prompt_ids
        self.params = sampling_params
        self.n = len(sampling_params)
        self.ids = [f"{request_id}-{i}" for i in range(self.n)]
        self.arrival = arrival
        self.texts = [""] * self.n
        self.tokens = [0] * self.n
        self.finish: list[str | None] = [None] * self.n
        self.first_token_at: float | None = None
        self._firsts: list[Any] = []
        self._gens: list[AsyncIterator[tuple[Any, Any]]] = []
        self._pending: list[Piece] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # ------------------------------------------------------------------------- start

    def _guard(self, request_id: str) -> GuardParams:
        record = self.plan.record
        return GuardParams(
            language=self.plan.detection.language,
            policy=self.plan.policy,
            threshold=float(record.value),
            threshold_source=record.source,
            id=request_id,
            harmless_threshold=self.plan.harmless_threshold,
        )

    async def open(self) -> list[Verdict | None]:
        """Start the engine requests and wait for their prefill; the verdict of each choice
        (None where none came back). Nothing reaches the client before ``apply``."""
        self._gens = [
            self.engine.generate(self.prompt_ids, params, self._guard(rid), rid)
            for params, rid in zip(self.params, self.ids, strict=True)
        ]
        try:
            firsts = await asyncio.gather(*(anext(gen) for gen in self._gens))
        except BaseException:
            self.close()
            raise
        self.first_token_at = time.monotonic()
        self._firsts = [output for output, _ in firsts]
        return [verdict for _, verdict in firsts]

    def apply(self, outcome: Outcome) -> None:
        """Carry out the outcome: the templated refusal, or the first tokens as they came."""
        if outcome.refuse:
            self._refuse()
        else:
            self._pending = [self._take(i, out) for i, out in enumerate(self._firsts)]
        self._firsts = []

    def _refuse(self) -> None:
        self.close()
        text = refusal_text(self.plan.detection.language)
        count = len(self.engine.tokenizer.encode(text, add_special_tokens=False))
        self.texts = [text] * self.n
        self.tokens = [count] * self.n
        self.finish = ["content_filter"] * self.n
        self._pending = [Piece(i, text, "content_filter") for i in range(self.n)]

    def _take(self, index: int, output: Any) -> Piece:
        """Record a DELTA ``RequestOutput`` of choice ``index`` and return its new text."""
        completion = output.outputs[0]
        self.texts[index] += completion.text
        self.tokens[index] += len(completion.token_ids)
        finish = None
        if output.finished:
            finish = FINISH_REASONS.get(completion.finish_reason or "", "stop")
            self.finish[index] = finish
        return Piece(index, completion.text, finish)

    # ------------------------------------------------------------------------- stream

    async def pieces(self) -> AsyncIterator[Piece]:
        """Every piece of every choice, as the engine produces them (after ``open``)."""
        pending, self._pending = self._pending, []
        for piece in pending:
            yield piece
        live = [i for i in range(self.n) if self.finish[i] is None]
        if len(live) == 1:
            async for output, _ in self._gens[live[0]]:
                yield self._take(live[0], output)
            return
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                async for output, _ in self._gens[index]:
                    await queue.put((index, output))
            except Exception as exc:
                await queue.put((index, exc))
                return
            await queue.put((index, None))

        self._tasks = [asyncio.create_task(pump(i)) for i in live]
        remaining = len(live)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield self._take(index, item)

    async def collect(self) -> None:
        """Run every choice to completion (non-streaming responses)."""
        async for _ in self.pieces():
            pass

    @property
    def finished(self) -> bool:
        return all(f is not None for f in self.finish)

    def close(self) -> None:
        """Abort the engine requests unfinished now and release everything (their guard ids in
        the worker too: an aborted request never reaches the last output on which the engine
        releases it), in a task of its own so that it completes even when called from a
        cancelled request (client gone). Which requests to abort is read here, not in the task:
        a refusal marks every choice finished right after closing, yet its engine requests must
        be aborted."""
        if self._closed:
            return
        self._closed = True
        unfinished = {i for i in range(self.n) if self.finish[i] is None}
        task = asyncio.get_running_loop().create_task(self._release(unfinished))
        _CLEANUPS.add(task)
        task.add_done_callback(_CLEANUPS.discard)

    async def _release(self, unfinished: set[int]) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for i, gen in enumerate(self._gens):
            if i in unfinished:
                await self._abort(self.ids[i])
            with contextlib.suppress(BaseException):
                await gen.aclose()  # type: ignore[attr-defined]

    async def _abort(self, request_id: str) -> None:
        """Abort one engine request, then release its guard id (the request id, see ``_guard``)
        in the worker, which otherwise keeps the verdict among its finished, unfetched ones.
        Nothing to do once the engine has died: its requests and records are gone with it."""
        if self.engine.dead:
            return
        try:
            await self.engine.abort(request_id)
        except Exception:
            log.exception("could not abort engine request %s", request_id)
        try:
            await self.engine.verdict(request_id, release=True)
        except Exception:
            log.exception("could not release the verdict of engine request %s", request_id)


# Cleanup tasks in flight (a reference keeps them from being garbage-collected mid-way).
_CLEANUPS: set[asyncio.Task[None]] = set()

