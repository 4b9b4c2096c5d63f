"""The FastAPI app of ``babelgate serve``: OpenAI-compatible API, admin API, health, metrics.

Runs in the API-server process. ``create_app`` wires the routes to one ``GuardrailService``
behind admission control (``server.app.admission``) and ``serve`` runs it under uvicorn; the
lifespan starts the service in the background (``/health`` is 503 until the guarded engine and
its self-check are up) and shuts the engine down on exit. What a supervisor sees: stopped
(SIGTERM) it exits with status 143, at once when it is still starting (the start-up work runs in
threads nothing can interrupt, a first-use calibration takes minutes, and asyncio would wait for
them); when it could not start, with status 1.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import uvicorn
from fastapi import FastAPI

from server.app import admin, chat, moderations, ops
from server.app.admission import AdmissionControl
from server.app.errors import install_error_handlers
from server.app.service import GuardrailService
from server.metrics import ServerMetrics
from server.settings import ServeSettings

log = logging.getLogger(__name__)

STOPPED = 128 + signal.SIGTERM  # the status of a process ended by SIGTERM, as the CLI's
START_FAILED = 1


def create_app(settings: ServeSettings, metrics: ServerMetrics | None = None) -> FastAPI:
    service = GuardrailService(settings, metrics or ServerMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.begin_start()
        try:
            yield
        finally:
            if service.starting:
                exit_now(f"stopped during start-up ({service.phase})", STOPPED)
            service.shutdown()
            if service.startup_error is not None:
                exit_now(f"babelgate serve could not start: {service.startup_error}", START_FAILED)

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


def exit_now(reason: str, status: int) -> NoReturn:
    """Exit at once with ``status``, without waiting for the start-up threads. Nothing is lost:
    a converted model, a calibration and its activation cache are written atomically, and vLLM's
    engine processes started so far die with this one (``server.engine.parent_watch``)."""
    log.log(logging.WARNING if status == STOPPED else logging.ERROR, "%s: exiting", reason)
    logging.shutdown()
    os._exit(status)


def serve(settings: ServeSettings) -> int:
    """Serve until stopped (``babelgate serve``; the exit statuses are the module's)."""
    logging.getLogger().setLevel(settings.log_level.upper())
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_keep_alive=30,
    )
    return 0
