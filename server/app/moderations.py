"""``POST /v1/moderations``: OpenAI's moderation API answered by the gate alone (prefill only).

Runs in the API-server process. Each input is routed to a language and scored by the gate on the
live engine (one prefill, no generation); it is flagged when the score reaches that language's
threshold (for text of several languages, the language whose plan is the strictest, as for a
chat request). The gate detects harmfulness as a whole, not OpenAI's categories, so its verdict is
the extra category ``harmful`` (score: sigmoid(gate logit - threshold), 0.5 at the threshold);
OpenAI's named categories are present, as the client expects, and never set by the gate.
OpenAI's moderation model names (``omni-moderation-latest``, ...) name the gate too, so a client
or gateway written for OpenAI's endpoint (LiteLLM's ``openai_moderation`` guardrail) works as is.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from babelgate.server.app.auth import authenticated, require_api_key
from babelgate.server.app.chat import prompt_token_ids, service_of
from babelgate.server.app.errors import APIError, error_responses
from babelgate.server.app.schemas import GuardInfo, ModerationRequest
from babelgate.server.app.service import GuardrailService, generation_failed
from babelgate.server.langid import Detection

log = logging.getLogger(__name__)
router = APIRouter(
    route_class=authenticated(require_api_key),
    responses=error_responses(400, 401, 404, 429, 503),
)

OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)  # fmt: skip
GATE_CATEGORY = "harmful"
# OpenAI's moderation model names: clients and gateways (LiteLLM's ``openai_moderation``
# guardrail, which sends ``omni-moderation-latest``) name one of these, and the gate answers.
OPENAI_MODERATION_MODELS: frozenset[str] = frozenset({
    "omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
    "text-moderation-stable",
})  # fmt: skip


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@router.post("/v1/moderations")
async def moderations(body: ModerationRequest, request: Request) -> JSONResponse:
    svc = service_of(request)
    engine = svc.require_engine()
    model = moderation_model(svc, body.model)
    texts = body.inputs()
    if len(texts) > svc.settings.max_moderation_inputs:
        raise APIError(
            400,
            f"{len(texts)} inputs; this server scores at most "
            f"{svc.settings.max_moderation_inputs} per request",
            param="input",
        )
    for i, text in enumerate(texts):
        length = len(prompt_token_ids(svc.tokenizer, [{"role": "user", "content": text}]))
        if length >= svc.max_model_len:
            raise APIError(
                400,
                f"input {i} has {length} tokens in the chat template; this model's maximum "
                f"context length is {svc.max_model_len} tokens",
                param="input",
                code="context_length_exceeded",
            )
    override = body.babelgate.language if body.babelgate else None
    override = override or request.headers.get("x-babelgate-language")
    # Mixed text is scored against the language whose plan a chat request would be held to.
    detections = [
        svc.strictest(svc.detect(override, [{"role": "user", "content": text}])).detection
        for text in texts
    ]
    svc.metrics.in_flight.inc()
    try:
        scores = await _scores(svc, engine, texts, detections)
    finally:
        svc.metrics.in_flight.dec()
    results = [_result(svc, d, s) for d, s in zip(detections, scores, strict=True)]
    return JSONResponse(
        {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}
    )


def moderation_model(svc: GuardrailService, name: str | None) -> str:
    """The model name a moderation answers with: an OpenAI moderation model's name as asked
    (the gate answers for it, so a client written for OpenAI works unchanged), else a served
    name (``check_model``: omitted is the first one, an unknown one is 404)."""
    return name if name in OPENAI_MODERATION_MODELS else svc.check_model(name)


async def _scores(
    svc: GuardrailService, engine: Any, texts: list[str], detections: list[Detection]
) -> list[float | None]:
    """Gate logits per input, scored per language in one call each; None where the gate
    failed (counted; the failure mode decides the verdict)."""
    out: list[float | None] = [None] * len(texts)
    by_language: dict[str, list[int]] = {}
    for i, d in enumerate(detections):
        by_language.setdefault(d.language, []).append(i)
    for language, indices in by_language.items():
        try:
            scores = await engine.gate_scores([texts[i] for i in indices], language)
        except Exception as exc:
            if engine.dead:  # not a gate failure: nothing will be served any more
                raise generation_failed(exc, engine) from exc
            log.exception("gate scoring failed for %d %s inputs", len(indices), language)
            svc.metrics.gate_failures.labels(svc.settings.gate_failure).inc(len(indices))
            continue
        for i, score in zip(indices, scores, strict=True):
            out[i] = float(score) if math.isfinite(score) else None
    return out


def _result(svc: GuardrailService, detection: Detection, score: float | None) -> dict[str, Any]:
    language = detection.language
    record = svc.threshold(language)
    failed = score is None
    if failed:
        flagged = svc.settings.gate_failure == "closed"
        probability = 1.0 if flagged else 0.0
        decision = None
    else:
        flagged = score >= record.value
        probability = _sigmoid(score - record.value)
        decision = "harmful" if flagged else "harmless"
        svc.metrics.gate_score.labels(language).observe(score)
    svc.metrics.moderation_inputs.labels(language, decision or "error").inc()
    info = GuardInfo(
        language=language,
        language_source=detection.source,
        language_confidence=round(detection.confidence, 4),
        languages=list(detection.languages),
        gate_score=score,
        threshold=record.value,
        threshold_source=record.source,
        decision=decision,
        policy="shadow",
        action="flag" if flagged else "none",
        intervened=False,
        gate_failure=failed,
    )
    categories: dict[str, bool] = dict.fromkeys(OPENAI_CATEGORIES, False)
    categories[GATE_CATEGORY] = flagged
    category_scores: dict[str, float] = dict.fromkeys(OPENAI_CATEGORIES, 0.0)
    category_scores[GATE_CATEGORY] = probability
    applied: dict[str, list[str]] = {c: [] for c in OPENAI_CATEGORIES}
    applied[GATE_CATEGORY] = ["text"]
    return {
        "flagged": flagged,
        "categories": categories,
        "category_scores": category_scores,
        "category_applied_input_types": applied,
        "babelgate": info.model_dump(),
    }
