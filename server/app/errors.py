"""Every error the server returns, in OpenAI's schema: ``{"error": {message, type, param, code}}``.

Runs in the API-server process. The official client raises its typed exceptions from the HTTP
status (BadRequestError for 400, AuthenticationError for 401, NotFoundError for 404, ...) and
shows ``error.message``; so every path, including FastAPI's own validation and unknown routes,
ends here with a status and a message saying what to fix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from babelgate.server.admin_store import StoreUnavailable

log = logging.getLogger(__name__)

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
}


# What each error status means here, for the OpenAPI document (``error_responses``).
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: body, parameters, language or context length (see error.param).",
    401: "Missing or malformed bearer token.",
    403: "Wrong admin token, or the admin API is disabled.",
    404: "Unknown model, route or threshold override.",
    429: "The server's queue is full: retry after the Retry-After header's seconds.",
    503: "The engine is not ready (retry after Retry-After seconds) or failed.",
}


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body, which every error response of this server carries."""

    error: ErrorObject


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route or router that may answer these error statuses."""
    return {s: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


class APIError(Exception):
    """An error with an HTTP status, raised anywhere in a request and rendered by the handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, dict[str, str | None]]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """One readable line per problem, the first problem's field as ``param``."""
    problems = []
    param = None
    code = "invalid_request"
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        if err.get("type") == "json_invalid":
            code = "invalid_json"
            problems.append(f"the body is not valid JSON: {err.get('msg')}")
            continue
        if param is None and where:
            param = where
        message = err.get("msg")
        if err.get("type") == "string_unicode":  # pydantic's words for an unpaired surrogate
            message = "holds an unpaired UTF-16 surrogate (such as \\ud800): send valid Unicode"
        problems.append(f"{where or 'body'}: {message}")
    return "; ".join(problems) or "invalid request", param, code


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the first
    route's, and FastAPI makes one route per method)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _document_errors(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` without FastAPI's 422 responses: invalid requests are answered 400 in
    OpenAI's schema (``error_responses`` on the routers says so)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    return openapi


def install_error_handlers(app: FastAPI) -> None:
    """Route every error FastAPI or our code raises to an OpenAI-schema JSON response, and say
    so in the OpenAPI document."""
    app.openapi = _document_errors(app)  # type: ignore[method-assign]

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(
            error_body(503, str(exc), code="threshold_store_unavailable"),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = _validation_message(exc)
        return JSONResponse(error_body(400, message, param, code), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        headers = exc.headers
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return JSONResponse(
            error_body(exc.status_code, message), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(500, f"internal error ({type(exc).__name__}): see the server log"),
            status_code=500,
        )
