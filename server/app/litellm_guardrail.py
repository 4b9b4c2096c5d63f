"""``POST /beta/litellm_basic_guardrail_api``: LiteLLM's generic guardrail API, by the gate.

Runs in the API-server process. LiteLLM proxy (``guardrail: generic_guardrail_api``, its
``api_base`` this server) posts every request it guards, in ``pre_call`` mode before it calls
the upstream model and in ``during_call`` mode while it does; babelgate answers ``BLOCKED`` with
the verdict as ``blocked_reason`` (LiteLLM's guardrail error and its logs carry it) or ``NONE``
(``server.app.gateway``: the rule, and a gate failure answered 503 for LiteLLM's
``unreachable_fallback``). LiteLLM keeps nothing else of an answer, so each call's verdict is
also logged here with LiteLLM's call and trace ids, to join with its logs. The API key is the
server's ``--api-key``, which LiteLLM sends as ``x-api-key`` (its ``api_key`` setting).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from babelgate.server.app.auth import authenticated, require_gateway_key
from babelgate.server.app.chat import service_of
from babelgate.server.app.errors import error_responses
from babelgate.server.app.gateway import Conversation, conversation, judge, user_turns
from babelgate.server.app.schemas import LiteLLMGuardrailRequest, LiteLLMGuardrailResponse

log = logging.getLogger(__name__)
router = APIRouter(
    route_class=authenticated(require_gateway_key),
    responses=error_responses(400, 401, 429, 503),
)

LANGUAGE_HEADER = "x-babelgate-language"
# What LiteLLM forwards for a header outside its allowlist (and ``extra_headers``).
HIDDEN_HEADER = "[present]"


def conversations(body: LiteLLMGuardrailRequest) -> list[Conversation]:
    """What is judged: a request's conversation (``structured_messages``) when it holds a user
    turn, as a chat request is judged; otherwise each text as one user turn (a completion's
    prompt, embedding inputs, and in ``post_call`` mode the model's answers)."""
    messages = conversation(body.structured_messages) if body.input_type == "request" else None
    return [messages] if messages is not None else user_turns(body.texts)


def language_override(body: LiteLLMGuardrailRequest) -> str | None:
    """The client's ``x-babelgate-language`` header, when LiteLLM forwards its value (list it
    in the guardrail's ``extra_headers``)."""
    headers = {k.lower(): v for k, v in (body.request_headers or {}).items()}
    value = headers.get(LANGUAGE_HEADER)
    return None if value in (None, HIDDEN_HEADER) else value


@router.post("/beta/litellm_basic_guardrail_api")
async def litellm_guardrail(
    body: LiteLLMGuardrailRequest, request: Request
) -> LiteLLMGuardrailResponse:
    svc = service_of(request)
    verdict = await judge(svc, conversations(body), language_override(body), "litellm")
    if verdict is None:
        return LiteLLMGuardrailResponse(action="NONE")
    log.info(
        "litellm guardrail (%s, call %s, trace %s): %s", body.input_type, body.litellm_call_id,
        body.litellm_trace_id, verdict.reason(),
    )  # fmt: skip
    if verdict.blocked:
        return LiteLLMGuardrailResponse(
            action="BLOCKED", blocked_reason=verdict.reason(), babelgate=verdict.info
        )
    return LiteLLMGuardrailResponse(action="NONE", babelgate=verdict.info)
