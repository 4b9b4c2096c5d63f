"""The sockets ``babelgate serve`` listens on, and which app answers on which.

Runs in the API-server process. By default one listener (``--host``:``--port``) serves
everything. With ``--admin-port``, the admin API is served only on a second listener
(``--admin-host``, loopback by default) and is absent from the first: its routes answer 404
there and its OpenAPI document lists none of them. One uvicorn server runs both sockets, so
there is one event loop, one lifespan (the public app's) and one way to stop.
"""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from babelgate.server.settings import ServeSettings

EVERY_INTERFACE = ("0.0.0.0", "::", "")


class Listeners:
    """ASGI: requests that arrived on ``admin_port`` go to ``admin``, the rest and the lifespan
    to ``public``."""

    def __init__(self, public: ASGIApp, admin: ASGIApp, admin_port: int) -> None:
        self.public = public
        self.admin = admin
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        on_admin = scope["type"] != "lifespan" and server is not None
        if on_admin and server[1] == self.admin_port:
            await self.admin(scope, receive, send)
        else:
            await self.public(scope, receive, send)


def bind(settings: ServeSettings) -> list[socket.socket]:
    """The listening sockets: the API's, then the admin API's when it has its own."""
    addresses = [(settings.host, settings.port)]
    if settings.admin_port is not None:
        addresses.append((settings.admin_host, settings.admin_port))
    return [uvicorn.Config(None, host=h, port=p).bind_socket() for h, p in addresses]


def served_app(app: FastAPI, sockets: list[socket.socket]) -> ASGIApp:
    """What uvicorn serves on ``sockets`` (from ``bind``): ``app``, or with an admin listener
    the split between ``app`` and ``app.state.admin_app``."""
    if len(sockets) == 1:
        return app
    return Listeners(app, app.state.admin_app, sockets[1].getsockname()[1])


def exposure_warnings(settings: ServeSettings) -> list[str]:
    """What the bind addresses expose that the operator may not mean to."""
    warnings = []
    public = settings.host in EVERY_INTERFACE
    if public and settings.api_key is None:
        warnings.append(
            f"listening on every interface ({settings.host or '*'}:{settings.port}) without "
            "--api-key: anyone who can reach this port can use the model; set --api-key or "
            "--host 127.0.0.1"
        )
    if settings.admin_token is not None and settings.admin_port is None and public:
        warnings.append(
            "the admin API is served on every interface with the API: serve it on its own "
            "loopback listener with --admin-port (and --admin-host 127.0.0.1, the default)"
        )
    if settings.admin_port is not None and settings.admin_host in EVERY_INTERFACE:
        warnings.append(
            f"the admin listener is on every interface ({settings.admin_host or '*'}:"
            f"{settings.admin_port}): --admin-host 127.0.0.1 keeps it on this machine"
        )
    return warnings
