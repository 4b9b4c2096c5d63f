"""``POST /v1/chat/completions`` and ``GET /v1/models``: OpenAI's chat API over the guarded engine.

Runs in the API-server process. The server renders the chat template itself (so it can check
the prompt length and count tokens), routes the user text to a language, resolves that
language's threshold and action, and sends one engine request per choice. Streaming responses
start once the verdict is known (it arrives with the first token) and its outcome decided
(``server.app.outcome``), so the ``x-babelgate-*`` headers carry it; a client that goes away
aborts its engine requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from babelgate.gate.prompt import chat_token_ids
from babelgate.refusal.judge import is_refusal
from babelgate.server.app.auth import authenticated, require_api_key
from babelgate.server.app.errors import APIError, error_responses
from babelgate.server.app.generation import ChatRun
from babelgate.server.app.outcome import decide_outcome, guard_info, request_verdict
from babelgate.server.app.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    GuardInfo,
    ModelCard,
    ModelList,
    Usage,
    template_messages,
)
from babelgate.server.app.service import GuardrailService, generation_failed
from babelgate.server.metrics import ServerMetrics
from babelgate.server.settings import GateFailureMode

log = logging.getLogger(__name__)
router = APIRouter(
    route_class=authenticated(require_api_key),
    responses=error_responses(400, 401, 404, 429, 503),
)


def service_of(request: Request) -> GuardrailService:
    return request.app.state.service


# ----------------------------------------------------------------------------- models


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    svc = service_of(request)
    svc.require_engine()
    created = int(svc.started_at)
    root = str(svc.model_path)
    return ModelList(
        data=[ModelCard(id=name, created=created, root=root) for name in svc.served_names]
    )


# ----------------------------------------------------------------------------- chat


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    """Messages as the chat template wants them (``schemas.template_messages``)."""
    return template_messages(body.messages)


def prompt_token_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The conversation's token ids by the prompt rule (``gate.prompt``); 400 when the model's
    chat template rejects it."""
    try:
        return chat_token_ids(tokenizer, messages)
    except Exception as err:  # the template rejects the conversation (roles, order, ...)
        raise APIError(
            400, f"the model's chat template rejects these messages: {err}", param="messages"
        ) from err


def completion_budget(body: ChatCompletionRequest, prompt_len: int, max_model_len: int) -> int:
    """Tokens the completion may use; 400 when the prompt (plus the asked-for completion) does
    not fit the model's context."""
    limit = body.completion_limit()
    if prompt_len >= max_model_len or (limit is not None and prompt_len + limit > max_model_len):
        asked = f" + {limit} completion tokens" if limit is not None else ""
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + (limit or 0)} tokens ({prompt_len} in the messages{asked}). "
            "Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )
    return limit if limit is not None else max_model_len - prompt_len


def sampling_params(body: ChatCompletionRequest, max_tokens: int) -> list[Any]:
    """One single-sample ``SamplingParams`` per choice (seed + i keeps seeded choices distinct);
    DELTA outputs so the first token (and the verdict) arrives as soon as it exists."""
    # lazy: vLLM takes seconds to import; the app's fast tests (fake engine) never build these
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    try:
        return [
            SamplingParams(
                n=1,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                max_tokens=max_tokens,
                stop=body.stop,
                seed=None if body.seed is None else body.seed + i,
                output_kind=RequestOutputKind.DELTA,
            )
            for i in range(body.n)
        ]
    except ValueError as err:  # vLLM's own checks of the sampling parameters
        raise APIError(400, f"invalid sampling parameters: {err}") from err


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    arrival = time.monotonic()
    svc = service_of(request)
    engine = svc.require_engine()
    model = svc.check_model(body.model)
    messages = chat_messages(body)
    ids = prompt_token_ids(svc.tokenizer, messages)
    budget = completion_budget(body, len(ids), svc.max_model_len)
    override = body.babelgate.language if body.babelgate else None
    override = override or request.headers.get("x-babelgate-language")
    plan = svc.plan(svc.detect(override, messages))
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    run = ChatRun(engine, plan, ids, sampling_params(body, budget), request_id, arrival)
    mode, metrics = svc.settings.gate_failure, svc.metrics
    metrics.in_flight.inc()
    if body.stream:
        return await _stream(run, body, model, request_id, mode, metrics)
    try:
        info = await _until_disconnect(request, _complete(run, mode, metrics))
    except Exception as exc:
        raise generation_failed(exc, engine) from exc
    finally:
        run.close()
        metrics.in_flight.dec()
    record_metrics(metrics, run, info, arrival)
    created = int(time.time())
    completion = ChatCompletion(
        id=request_id,
        created=created,
        model=model,
        choices=[
            Choice(
                index=i,
                message=AssistantMessage(content=run.texts[i]),
                finish_reason=run.finish[i] or "stop",
            )
            for i in range(run.n)
        ],
        usage=usage(run),
        babelgate=info,
    )
    return JSONResponse(
        completion.model_dump(), headers={**info.headers(), "x-request-id": request_id}
    )


async def open_and_decide(run: ChatRun, mode: GateFailureMode, metrics: ServerMetrics) -> GuardInfo:
    """Wait for the run's verdicts, decide its one outcome and carry it out (both the streamed
    and the whole response go through here); the verdict as the client sees it. A gate that
    gave no score is counted once per completion by the failure mode applied, and logged."""
    verdicts = await run.open()
    verdict = request_verdict(verdicts)
    outcome = decide_outcome(run.plan, verdict, mode)
    if outcome.gate_failure:
        metrics.gate_failures.labels(mode).inc()
        log.error("gate verdict missing for %s (fail %s): %s", run.ids, mode, verdicts)
    run.apply(outcome)
    return guard_info(run.plan, verdict, outcome)


async def _complete(run: ChatRun, mode: GateFailureMode, metrics: ServerMetrics) -> GuardInfo:
    info = await open_and_decide(run, mode, metrics)
    await run.collect()
    return info


async def _until_disconnect(request: Request, work: Any) -> Any:
    """Run ``work``; cancel it if the client disconnects first (its engine requests are then
    aborted by ``ChatRun.close``)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise APIError(499, "the client closed the connection before the completion was ready")
    return task.result()


def usage(run: ChatRun) -> Usage:
    prompt = len(run.prompt_ids)
    completion = sum(run.tokens)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def record_metrics(m: ServerMetrics, run: ChatRun, info: GuardInfo, arrival: float) -> None:
    """Count a finished chat completion (also when the client went away mid-stream): one
    request and one gate score per completion, whatever its ``n`` (its choices share one
    verdict, ``request_verdict``); refusals in the output are counted per choice."""
    decision = info.decision or ("error" if info.gate_failure else "none")
    m.requests.labels(info.language, decision, info.policy, info.action).inc()
    if info.gate_score is not None:
        m.gate_score.labels(info.language).observe(info.gate_score)
    if run.first_token_at is not None:
        m.ttft.observe(run.first_token_at - arrival)
    m.e2e_latency.observe(time.monotonic() - arrival)
    m.prompt_tokens.inc(len(run.prompt_ids))
    m.completion_tokens.inc(sum(run.tokens))
    for text, finish in zip(run.texts, run.finish, strict=True):
        if finish is not None and is_refusal(text, info.language):
            m.output_refusals.labels(info.language, decision).inc()


# ----------------------------------------------------------------------------- streaming


class GuardedStream(StreamingResponse):
    """A streaming response that always releases its run: normal end, error, or disconnect."""

    def __init__(self, content: AsyncIterator[str], cleanup: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()


async def _stream(
    run: ChatRun,
    body: ChatCompletionRequest,
    model: str,
    request_id: str,
    mode: GateFailureMode,
    metrics: ServerMetrics,
) -> StreamingResponse:
    arrival = run.arrival
    try:
        info = await open_and_decide(run, mode, metrics)
    except BaseException as exc:
        run.close()
        metrics.in_flight.dec()
        if isinstance(exc, Exception):
            raise generation_failed(exc, run.engine) from exc
        raise
    created = int(time.time())
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    released = False

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        payload = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        run.close()
        metrics.in_flight.dec()
        record_metrics(metrics, run, info, arrival)

    async def events() -> AsyncIterator[str]:
        guard = info.model_dump()
        started: set[int] = set()
        try:
            async for piece in run.pieces():
                delta: dict[str, Any] = {"content": piece.text}
                extra: dict[str, Any] = {}
                if piece.index not in started:
                    started.add(piece.index)
                    delta["role"] = "assistant"
                    extra["babelgate"] = guard
                yield chunk(
                    [{"index": piece.index, "delta": delta, "logprobs": None,
                      "finish_reason": piece.finish_reason}],
                    **extra,
                )  # fmt: skip
        except Exception as exc:  # headers are gone: report in-band, as vLLM does
            yield f"data: {json.dumps(generation_failed(exc, run.engine).body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        if include_usage:
            yield chunk([], usage=usage(run).model_dump(), babelgate=guard)
        yield "data: [DONE]\n\n"

    return GuardedStream(
        events(),
        release,
        media_type="text/event-stream",
        headers={**info.headers(), "x-request-id": request_id, "cache-control": "no-cache"},
    )
