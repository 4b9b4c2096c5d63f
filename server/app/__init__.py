"""The FastAPI app of ``babelgate serve``: OpenAI-compatible API, admin API, health, metrics.

Runs in the API-server process. ``create_app`` wires the routes to one ``GuardrailService``;
the lifespan starts the service in the background (``/health`` is 503 until the guarded engine
and its self-check are up) and shuts the engine down on exit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.app.errors import install_error_handlers
from server.app.service import GuardrailService
from server.metrics import ServerMetrics
from server.settings import ServeSettings


def create_app(settings: ServeSettings, metrics: ServerMetrics | None = None) -> FastAPI:
    from server.app import admin, chat, moderations, ops

    service = GuardrailService(settings, metrics or ServerMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.begin_start()
        try:
            yield
        finally:
            service.shutdown()

    app = FastAPI(title="babelgate", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    install_error_handlers(app)
    for module in (chat, moderations, admin, ops):
        app.include_router(module.router)
    return app
