"""The FastAPI app of ``babelgate serve``: OpenAI-compatible API, admin API, health, metrics.

Runs in the API-server process. ``create_app`` wires the routes to one ``GuardrailService``
behind admission control (``server.app.admission``), the admin API on the same listener or on
its own (``server.app.listeners``), and ``serve`` runs it under uvicorn; the
lifespan starts the service in the background (``/health`` is 503 until the guarded engine and
its self-check are up) and shuts the engine down on exit. What a supervisor sees: stopped
(SIGTERM) it exits with status 0, in order once started (responses in flight finish, the engine
is shut down), at once when it is still starting (the start-up work runs in threads nothing can
interrupt, a first-use calibration takes minutes, and asyncio would wait for them); when it
could not start, or when its engine died, with status 1.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NoReturn

import uvicorn
from fastapi import FastAPI

from babelgate.server.app import (
    admin,
    chat,
    litellm_guardrail,
    moderations,
    ops,
    portkey_webhook,
)
from babelgate.server.app.admission import AdmissionControl
from babelgate.server.app.errors import install_error_handlers
from babelgate.server.app.listeners import bind, exposure_warnings, served_app
from babelgate.server.app.service import GuardrailService
from babelgate.server.metrics import ServerMetrics
from babelgate.server.settings import ServeSettings

log = logging.getLogger(__name__)

STOPPED = 0  # stopped by SIGTERM: a stop asked for is a success (to make, systemd, a shell)
FAILED = 1  # could not start, or its engine died
# A stop waits this long for the responses in flight, then closes them (within systemd's
# TimeoutStopSec=60 of deploy/babelgate.service).
GRACEFUL_STOP_S = 30


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
            if service.failure is not None:
                exit_now(f"babelgate serve {service.failure}", FAILED)

    app = bare_app("babelgate", service, lifespan)
    app.add_middleware(
        AdmissionControl, limit=settings.max_queue_depth, rejected=service.metrics.rejected
    )
    for module in (chat, moderations, litellm_guardrail, portkey_webhook, ops):
        app.include_router(module.router)
    if settings.admin_port is None:
        # In the public OpenAPI document only when it is enabled (an admin token is set).
        for routes in admin.admin_routers():
            app.include_router(routes, include_in_schema=settings.admin_token is not None)
    else:
        app.state.admin_app = bare_app("babelgate admin", service)
        for routes in admin.admin_routers():
            app.state.admin_app.include_router(routes)
    return app


def bare_app(title: str, service: GuardrailService, lifespan: Any = None) -> FastAPI:
    """A FastAPI app of ``service`` with its errors in OpenAI's schema and no routes yet."""
    # No trailing-slash redirects: a 307 from PUT /admin/thresholds/ to a GET-only route helps
    # no client; an unknown path is a 404 in OpenAI's schema.
    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None,
                  redirect_slashes=False)  # fmt: skip
    app.state.service = service
    install_error_handlers(app)
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
    for warning in exposure_warnings(settings):
        log.warning(warning)
    app = create_app(settings)
    sockets = bind(settings)
    config = uvicorn.Config(
        served_app(app, sockets),
        log_level=settings.log_level,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=GRACEFUL_STOP_S,
    )
    server = uvicorn.Server(config)
    with sigterm_stops(server):
        server.run(sockets=sockets)
    return STOPPED


@contextmanager
def sigterm_stops(server: uvicorn.Server) -> Iterator[None]:
    """While the block runs, SIGTERM asks ``server`` to stop, and nothing else.

    uvicorn catches SIGTERM while it runs, stops in order (the lifespan shuts the engine down)
    and then raises the signal again for the handler it found: the CLI's, which would end a
    stop that went well with status 143 (``make`` reports it as an error, systemd as a failure).
    This handler, in place before uvicorn's and after it, hands the signal to uvicorn instead:
    a SIGTERM that comes before uvicorn listens stops it as soon as it has started, and the one
    raised again once it has stopped does nothing, so ``serve`` returns ``STOPPED``.
    """
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
