"""Bearer-token checks: the API key for ``/v1/*`` and the separate admin token for ``/admin/*``.

Runs in the API-server process. Tokens are compared in constant time (``tokens_match``), checked
before a request's body is read (``authenticated``), and never logged or stored: the admin API
audits who changed a threshold by a short hash of the token used, never the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import SecretStr

from babelgate.server.app.errors import APIError

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None if absent or malformed."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def token_identity(token: str) -> str:
    """A stable, non-reversible name for a token in the audit trail."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def tokens_match(token: str, expected: SecretStr) -> bool:
    """Whether ``token`` is the expected one, in constant time: the SHA-256 digests are compared
    (``hmac.compare_digest`` of two 32-byte strings), so the time taken depends neither on where
    a guess first differs nor on its length."""
    given = hashlib.sha256(token.encode()).digest()
    wanted = hashlib.sha256(expected.get_secret_value().encode()).digest()
    return hmac.compare_digest(given, wanted)


def gateway_token(request: Request) -> str | None:
    """A gateway's token: bearer, else the ``x-api-key`` header, which is how LiteLLM's generic
    guardrail sends the ``api_key`` of its config."""
    return bearer_token(request) or request.headers.get("x-api-key")


def check_api_key(
    request: Request,
    api_key: SecretStr | None,
    token_of: Callable[[Request], str | None] = bearer_token,
) -> None:
    """401 unless the request carries the configured API key (no key configured: open)."""
    if api_key is None:
        return
    token = token_of(request)
    if token is None or not tokens_match(token, api_key):
        raise APIError(
            401,
            "invalid or missing API key: send `Authorization: Bearer <key>` with the key the "
            "server was started with (--api-key)",
            code="invalid_api_key",
            headers=CHALLENGE,
        )


def authenticated(check: Callable[[Request], None]) -> type[APIRoute]:
    """The route class of a router whose every route runs ``check`` first, before the body is
    read or validated, so an unauthenticated client learns nothing about what the API accepts
    (not even whether its JSON parses)."""

    class AuthenticatedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()

            async def checked(request: Request) -> Response:
                check(request)
                return await handle(request)

            return checked

    return AuthenticatedRoute


def require_api_key(request: Request) -> None:
    """The ``/v1`` routes' check: the API key the server was started with."""
    check_api_key(request, request.app.state.service.settings.api_key)


def require_gateway_key(request: Request) -> None:
    """The gateway routes' check: the same API key, as a bearer token or ``x-api-key``."""
    check_api_key(request, request.app.state.service.settings.api_key, gateway_token)


def require_admin_token(request: Request) -> None:
    """The admin routes' check; the caller's audit identity goes to ``request.state.actor``."""
    request.state.actor = check_admin_token(request, request.app.state.service.settings.admin_token)


def check_admin_token(request: Request, admin_token: SecretStr | None) -> str:
    """The caller's audit identity; 401 without (well-formed) bearer auth, 403 when wrong.

    With no admin token configured, the admin API is closed (403) rather than open.
    """
    token = bearer_token(request)
    if token is None:
        raise APIError(
            401,
            "admin endpoints need `Authorization: Bearer <admin token>` (the --admin-token)",
            code="missing_admin_token",
            headers=CHALLENGE,
        )
    if admin_token is None:
        raise APIError(
            403,
            "the admin API is disabled: start the server with --admin-token to enable it",
            code="admin_disabled",
        )
    if not tokens_match(token, admin_token):
        raise APIError(403, "wrong admin token", code="invalid_admin_token")
    return token_identity(token)
