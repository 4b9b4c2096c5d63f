"""The FastAPI app of ``babelgate serve``: OpenAI-compatible API, admin API, health, metrics.

Runs in the API-server process. ``create_app`` wires the routes to one ``GuardrailService``
behind admission control (``server.app.admission``) and ``serve`` runs it under uvicorn; the lifespan starts the service in the background
(``/health`` is 503 until the guarded engine and its self-check are up) and shuts the engine
down on exit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from server.app import admin, chat, moderations, ops
from server.app.admission import AdmissionControl
from server.app.errors import install_error_handlers
from server.app.service import GuardrailService
from server.metrics import ServerMetrics
from server.settings import ServeSettings

log = logging.getLogger(__name__)


def create_app(settings: ServeSettings, metrics: ServerMetrics | None = None) -> FastAPI:
    service = GuardrailService(settings, metrics or ServerMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.begin_start()
        try:
            yield
        finally:
            service.shutdown()

    # No trailing-slash redirects: a 307 from PUT /admin/thresholds/ to a GET-only route helps
    # no client; an unknown path is a 404 in OpenAI's schema.
    app = FastAPI(title="babelgate", lifespan=lifespan, docs_url=None, redoc_url=None,
                  redirect_slashes=False)  # fmt: skip
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(
        AdmissionControl, limit=settings.max_queue_depth, rejected=service.metrics.rejected
    )
    for module in (chat, moderations, admin, ops):
        app.include_router(module.router)
    return app


def serve(settings: ServeSettings) -> int:
    """Serve until stopped (``babelgate serve``); 1 when the guarded engine could not start."""
    logging.getLogger().setLevel(settings.log_level.upper())
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_keep_alive=30,
    )
    failure = app.state.service.startup_error
    if failure is not None:
        log.error("babelgate serve stopped because it could not start: %s", failure)
        return 1
    return 0
