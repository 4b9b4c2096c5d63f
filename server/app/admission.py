"""Admission control: beyond ``--max-queue-depth`` requests in flight, answer 429 at once.

Runs in the API-server process, as ASGI middleware around the routes that put work on the
engine (chat completions, moderations and the gateways' guardrail calls). vLLM queues every
request it is given and a client of an overloaded server would wait until it times out; here a
request that would make the queue deeper than the limit is answered immediately with 429,
``Retry-After`` and OpenAI's error body (the official client retries it after that many
seconds), and counted. A request holds its place from arrival until its response has been sent,
the last streamed chunk included, or its client has gone. One event loop serves every request,
so the count needs no lock.
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from babelgate.server.app.errors import error_body

log = logging.getLogger(__name__)

# Routes that queue work on the engine (the admin API is the operator's and is not limited).
ADMITTED_PATHS = frozenset({
    "/v1/chat/completions", "/v1/moderations", "/beta/litellm_basic_guardrail_api",
    "/portkey/webhook",
})  # fmt: skip
RETRY_AFTER_S = 1


class AdmissionControl:
    """ASGI middleware: at most ``limit`` requests to ``ADMITTED_PATHS`` at once; the others
    get 429 and are counted in ``rejected`` (by path)."""

    def __init__(self, app: ASGIApp, limit: int, rejected: Counter) -> None:
        self.app = app
        self.limit = limit
        self.rejected = rejected
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in ADMITTED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await self._reject(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.rejected.labels(scope["path"]).inc()
        log.warning("queue full (%d requests in flight): 429 for %s", self.active, scope["path"])
        body = error_body(
            429,
            f"the server is at its queue depth ({self.limit} requests in flight, "
            f"--max-queue-depth): retry after {RETRY_AFTER_S} s",
            code="queue_full",
        )
        response = JSONResponse(body, 429, headers={"Retry-After": str(RETRY_AFTER_S)})
        await response(scope, receive, send)
