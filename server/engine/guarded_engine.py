"""``GuardedEngine``: vLLM's ``AsyncLLM`` with babelgate's guard, for the API server.

Runs in the API-server process (vLLM's engine core and worker run in their own processes).
``start`` refuses to return an engine that would serve unguarded: it checks the artifact against
the model's config, the architecture and the runner, loads the gate into the guard the engine
was built with (inside the decoder layers it reads, compiled or eager) and sends a self-check
request that must come back scored. Per request, the guard parameters travel
in ``SamplingParams.extra_args["babelgate"]``; the verdict is decided inside the request's own
prefill and fetched from the worker by babelgate id (``collective_rpc``, no second forward pass).
Concurrent verdict fetches are coalesced into one RPC, so the cost per step stays one round trip
however many requests are waiting.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from babelgate.gate.prompt import chat_prompt_ids
from babelgate.server.engine.rpc import AsyncWorkerClient
from babelgate.server.engine.startup import (
    SELF_CHECK_PROMPT,
    prepare,
    self_check_guard,
    verify_install,
    verify_self_check,
)
from babelgate.server.engine.types import EXTRA_ARGS_KEY, GateParams, GuardParams, Verdict

if TYPE_CHECKING:
    from vllm import RequestOutput, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM


def _launch(
    model_path: str | Path | None,
    artifact_path: str | Path | GateParams,
    engine_kwargs: dict[str, Any] | None,
    launched: list[tuple[AsyncLLM, GateParams, str]],
) -> None:
    """Append the engine (processes started, gate not yet loaded), the gate and the model id to
    ``launched``; raises before any process starts when the artifact or the model does not fit.

    Runs in a worker thread. It hands the engine over in ``launched`` (emptied by the caller)
    instead of returning it: vLLM keeps the exception of an optional import it tried here (e.g.
    torchcodec's, ``vllm.multimodal.media.audio``) in a module global, whose traceback keeps this
    frame and the thread's frame alive until the interpreter tears down; a returned engine would
    stay in those frames' locals and be finalized only then, when ``AsyncLLM.__del__`` fails
    with ``TypeError: 'NoneType' object is not callable`` on its half-cleared module.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    plan = prepare(model_path, artifact_path, engine_kwargs)
    args = AsyncEngineArgs(model=plan.load_path, **plan.engine_kwargs)
    launched.append((AsyncLLM.from_engine_args(args), plan.gate, plan.model_id))


class _VerdictFetcher:
    """Coalesces concurrent verdict requests into one ``babelgate_verdicts`` RPC at a time."""

    def __init__(self, worker: AsyncWorkerClient) -> None:
        self._worker = worker
        self._waiting: dict[str, list[asyncio.Future[Verdict | None]]] = {}
        self._release: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.rpcs = 0

    async def get(self, bid: str, release: bool) -> Verdict | None:
        future: asyncio.Future[Verdict | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(bid, []).append(future)
        if release:
            self._release.add(bid)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            waiting, self._waiting = self._waiting, {}
            release, self._release = self._release, set()
            try:
                self.rpcs += 1
                got = await self._worker.verdicts(list(waiting), list(release))
            except Exception as err:  # hand the failure to every waiter, keep serving
                for futures in waiting.values():
                    for f in futures:
                        if not f.done():
                            f.set_exception(err)
                continue
            for bid, futures in waiting.items():
                verdict = got.get(bid)
                for f in futures:
                    if not f.done():
                        f.set_result(verdict)


class GuardedEngine:
    """An ``AsyncLLM`` whose requests carry per-request guard parameters and verdicts."""

    def __init__(self, engine: AsyncLLM, gate: GateParams, model_id: str, tokenizer: Any) -> None:
        self.engine = engine
        self.gate = gate
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.worker = AsyncWorkerClient(engine)
        self._verdicts = _VerdictFetcher(self.worker)
        self.install_info: dict[str, Any] = {}

    @classmethod
    async def start(
        cls,
        model_path: str | Path | None,
        artifact_path: str | Path | GateParams,
        *,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> GuardedEngine:
        """Start vLLM guarded by the gate at ``artifact_path`` (or ready ``GateParams``).

        Raises ``GuardrailStartupError`` (engine stopped) when it cannot serve guarded. The
        blocking part (importing vLLM, checking the artifact, starting the engine processes:
        about 30 s here) runs in a thread, so the caller's event loop keeps answering (the
        API server's ``/health`` says 503 "starting" instead of timing out); vLLM starts its
        output tasks on the first request when built outside the loop.
        """
        launched: list[tuple[AsyncLLM, GateParams, str]] = []
        await asyncio.to_thread(_launch, model_path, artifact_path, engine_kwargs, launched)
        engine, gate, model_id = launched.pop()
        try:
            self = cls(engine, gate, model_id, engine.get_tokenizer())
            self.install_info = await self.worker.install(gate)
            verify_install(self.install_info, gate)
            await self.self_check()
        except BaseException:
            engine.shutdown()
            raise
        return self

    @property
    def dead(self) -> bool:
        """The engine has died (its core process is gone or failed): it will serve no more."""
        return bool(self.engine.errored)

    async def status(self) -> dict[str, Any]:
        """Hook state in the worker: installed, layers, how often it fired, records held."""
        return await self.worker.status()

    async def self_check(self) -> None:
        """One shadow request must run as a guarded step and come back scored, else refuse."""
        from vllm import SamplingParams

        before = await self.status()
        verdict = None
        if before["installed"]:
            verdict = await self._final_verdict(
                SELF_CHECK_PROMPT,
                SamplingParams(max_tokens=1),
                self_check_guard(),
                f"babelgate-self-check-{uuid.uuid4().hex}",
            )
        after = await self.status()
        verify_self_check(verdict, before["fires"], after["fires"], before["installed"])

    def request(
        self,
        prompt: str | Sequence[int],
        sampling_params: SamplingParams,
        guard: GuardParams | None,
    ) -> tuple[dict[str, Any], SamplingParams]:
        """The engine prompt (chat-template ids for text, cache salt) and sampling params
        (guard parameters in ``extra_args``) for one request."""
        ids = (
            chat_prompt_ids(self.tokenizer, prompt)
            if isinstance(prompt, str)
            else [int(t) for t in prompt]
        )
        engine_prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if guard is None:
            return engine_prompt, sampling_params
        sp = sampling_params.clone()
        extra = dict(sampling_params.extra_args or {})
        extra[EXTRA_ARGS_KEY] = guard.to_extra_args()
        sp.extra_args = extra
        salt = guard.cache_salt(self.gate.fingerprint)
        if salt is not None:
            engine_prompt["cache_salt"] = salt
        return engine_prompt, sp

    async def generate(
        self,
        prompt: str | Sequence[int],
        sampling_params: SamplingParams,
        guard: GuardParams | None,
        request_id: str,
    ) -> AsyncIterator[tuple[RequestOutput, Verdict | None]]:
        """Stream ``(output, verdict)``; the verdict is there from the first output on (the
        prefill decided it) and refreshed on the last (final intervened-position count).
        Text prompts are rendered with the chat template (one user turn)."""
        engine_prompt, sp = self.request(prompt, sampling_params, guard)
        verdict: Verdict | None = None
        async for output in self.engine.generate(engine_prompt, sp, request_id):
            if guard is not None and (verdict is None or output.finished):
                verdict = await self._verdicts.get(guard.id, release=output.finished)
            yield output, verdict

    async def _final_verdict(
        self,
        prompt: str | Sequence[int],
        sampling_params: SamplingParams,
        guard: GuardParams,
        request_id: str,
    ) -> Verdict | None:
        """Run one request to the end; its last verdict."""
        verdict = None
        async for _, latest in self.generate(prompt, sampling_params, guard, request_id):
            verdict = latest
        return verdict

    async def verdict(self, guard_id: str, *, release: bool = False) -> Verdict | None:
        """The current verdict of a request by its babelgate id (None if the worker never saw
        it, or it was released)."""
        return await self._verdicts.get(guard_id, release)

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def gate_scores(
        self, prompts: Sequence[str | Sequence[int]], language: str
    ) -> list[float]:
        """Gate logits of the prompts: prefill-only shadow requests (max_tokens=1), concurrent.
        A text is one user turn; token ids are a whole conversation already rendered with the
        chat template (the gateway routes judge conversations the way a chat request is)."""
        from vllm import SamplingParams

        async def one(prompt: str | Sequence[int]) -> float:
            guard = GuardParams(language=language, policy="shadow", threshold_source="scoring")
            verdict = await self._final_verdict(
                prompt, SamplingParams(max_tokens=1), guard, f"babelgate-score-{guard.id}"
            )
            if verdict is None or verdict.score is None:
                raise RuntimeError(f"no gate score came back for prompt {prompt[:60]!r}")
            return verdict.score

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    def shutdown(self) -> None:
        self.engine.shutdown()
