"""``POST /portkey/webhook``: Portkey's webhook guardrail (``default.webhook``), by the gate.

Runs in the API-server process. Portkey's gateway posts its hook context (the request, in a
before-request hook; the response too, in an after-request hook) and waits up to the check's
``timeout`` (3 s by default) for ``{"verdict": bool}``; a false verdict fails the check, and a
guardrail with ``deny: true`` answers the client 446. The rule is ``server.app.gateway``'s; a
gate failure is answered 503, an error to Portkey, which its ``failOnError`` setting turns into
a failed check (fail closed) or ignores (fail open, its default). The verdict goes in ``data``,
which Portkey keeps in its hook results. Authenticated with ``--api-key`` (the check's
``headers``: ``{"Authorization": "Bearer <key>"}``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import TypeAdapter, ValidationError

from babelgate.server.app.auth import authenticated, require_gateway_key
from babelgate.server.app.chat import service_of
from babelgate.server.app.errors import APIError, error_responses
from babelgate.server.app.gateway import Conversation, conversation, judge, user_turns
from babelgate.server.app.schemas import (
    ChatMessage,
    PortkeyWebhookRequest,
    PortkeyWebhookResponse,
)

MESSAGES = TypeAdapter(list[ChatMessage])  # a chat request's messages, read the same way
router = APIRouter(
    route_class=authenticated(require_gateway_key),
    responses=error_responses(400, 401, 429, 503),
)


def conversations(body: PortkeyWebhookRequest) -> list[Conversation]:
    """What is judged: before the request, its chat messages as a chat request's are (else its
    text, the prompt or input Portkey extracted, as one user turn); after it, the answer's text
    as one user turn."""
    if body.eventType == "afterRequestHook":
        return user_turns([body.response.text or ""] if body.response else [])
    messages = (body.request.body or {}).get("messages")
    if messages is None:
        return user_turns([body.request.text or ""])
    try:
        chat = conversation(MESSAGES.validate_python(messages))
    except ValidationError as err:
        raise APIError(400, f"request.json.messages: {err}", param="request.json.messages") from err
    return [chat] if chat is not None else []


@router.post("/portkey/webhook")
async def portkey_webhook(body: PortkeyWebhookRequest, request: Request) -> PortkeyWebhookResponse:
    verdict = await judge(service_of(request), conversations(body), None, "portkey")
    if verdict is None:
        return PortkeyWebhookResponse(verdict=True)
    return PortkeyWebhookResponse(verdict=not verdict.blocked, data=verdict.info)
