"""One chat completion on the guarded engine: n engine requests, their verdict, and the action.

Runs in the API-server process. The gate decides inside each request's own prefill, so the
verdict comes back with the first generated token; ``ChatRun.open`` waits for exactly that and
then either lets generation continue (steer / flag / harmless) or aborts the engine requests and
answers with the templated refusal (refuse, or a failed gate under fail-closed). ``n`` choices
are ``n`` engine requests of one sample each (seed + i when seeded), all judged by one plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from server.app.schemas import GuardInfo
from server.app.service import GuardPlan, GuardrailService
from server.engine.types import GuardParams
from server.refusal_templates import refusal_text

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
        service: GuardrailService,
        plan: GuardPlan,
        prompt_ids: list[int],
        sampling_params: list[Any],
        request_id: str,
        arrival: float,
    ) -> None:
        self.service = service
        self.engine = service.require_engine()
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
        self.info: GuardInfo | None = None
        self.refused = False
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
        )

    async def open(self) -> GuardInfo:
        """Start the engine requests, wait for their prefill, and apply the verdict."""
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
        verdict = next((v for _, v in firsts if v is not None), None)
        plan = self.plan
        failed = plan.policy != "none" and (verdict is None or verdict.score is None)
        decision = None if failed or verdict is None else verdict.decision
        mode = self.service.settings.gate_failure
        if failed:
            self.service.metrics.gate_failures.labels(mode).inc()
            log.error("gate verdict missing for %s (fail %s): %s", self.ids[0], mode, verdict)
        refuse = (failed and mode == "closed") or (
            decision == "harmful" and plan.action == "refuse"
        )
        if refuse:
            self._refuse()
            action = "refuse"
        else:
            self._pending = [self._take(i, out) for i, (out, _) in enumerate(firsts)]
            action = taken_action(decision, plan.action, verdict)
        self.info = GuardInfo(
            language=plan.detection.language,
            language_source=plan.detection.source,
            language_confidence=round(plan.detection.confidence, 4),
            gate_score=None if verdict is None else verdict.score,
            threshold=plan.record.value,
            threshold_source=plan.record.source,
            decision=decision,
            policy=plan.policy,
            action=action,
            intervened=refuse or bool(verdict is not None and verdict.intervened),
            gate_failure=failed,
            protected=plan.protected,
            weak_families=list(plan.weak_families),
        )
        return self.info

    def _refuse(self) -> None:
        self.close()
        self.refused = True
        text = refusal_text(self.plan.detection.language)
        count = len(self.service.tokenizer.encode(text, add_special_tokens=False))
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
        """Abort unfinished engine requests and release everything, in a task of its own so
        that it completes even when called from a cancelled request (client gone)."""
        if self._closed:
            return
        self._closed = True
        task = asyncio.get_running_loop().create_task(self._release())
        _CLEANUPS.add(task)
        task.add_done_callback(_CLEANUPS.discard)

    async def _release(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for i, gen in enumerate(self._gens):
            if self.finish[i] is None:
                try:
                    await self.engine.abort(self.ids[i])
                except Exception:
                    log.exception("could not abort engine request %s", self.ids[i])
            with contextlib.suppress(BaseException):
                await gen.aclose()  # type: ignore[attr-defined]


# Cleanup tasks in flight (a reference keeps them from being garbage-collected mid-way).
_CLEANUPS: set[asyncio.Task[None]] = set()


def taken_action(decision: str | None, configured: str, verdict: Any) -> str:
    """What the guard did to the output: "flag" for a harmful verdict under the flag action,
    else the engine's intervention ("steer" on harmful, "ablate" on harmless under routing)."""
    if decision == "harmful" and configured == "flag":
        return "flag"
    if verdict is not None and verdict.intervention in ("steer", "ablate"):
        return str(verdict.intervention)
    return "none"
