"""``--state-url``: which threshold store it names, and opening it at start.

Runs in the API-server process (``check_state_url`` also while settings are validated).
``sqlite:///DIR`` keeps the overrides of one replica in a file in DIR (SQLAlchemy's spelling:
``sqlite:///state`` is relative to the working directory, ``sqlite:////var/lib/babelgate``
absolute); ``postgresql://user:password@host:port/db`` shares them across every replica that
names the same database (``server.admin_store_pg``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from babelgate.server.admin_store import OverrideStore, StoreUnavailable, ThresholdStore
from babelgate.server.admin_store_pg import RETRY_S, PostgresThresholdStore
from babelgate.server.metrics import ServerMetrics

SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgres://")


def check_state_url(url: str) -> str:
    """``url`` if it names a store this server can open; ValueError saying what to write if not."""
    if url.startswith(POSTGRES):
        return url
    if url.startswith(SQLITE) and url[len(SQLITE) :]:
        return url
    raise ValueError(
        f"state URL {url.split('@')[-1]!r} is neither sqlite:///DIR (one replica; "
        "sqlite:////abs/dir for an absolute folder) nor postgresql://user:password@host:port/db "
        "(shared by replicas)"
    )


def sqlite_url(folder: Path) -> str:
    """The ``--state-url`` of the SQLite store in ``folder``."""
    return SQLITE + str(folder)


def open_store(url: str, gate_id: str, metrics: ServerMetrics | None = None) -> OverrideStore:
    """The store ``url`` names, for the gate ``gate_id`` (``StoreUnavailable`` if its database
    cannot be reached)."""
    check_state_url(url)
    if url.startswith(POSTGRES):
        return PostgresThresholdStore(url, gate_id, metrics)
    return ThresholdStore(Path(url[len(SQLITE) :]), gate_id, metrics)


async def connect_store(
    url: str,
    gate_id: str,
    metrics: ServerMetrics | None,
    on_wait: Callable[[str], object],
) -> OverrideStore:
    """``open_store``, retried every ``RETRY_S`` while the database cannot be reached (each
    failure reported to ``on_wait``): a replica does not serve before it has read the fleet's
    thresholds once, and does not give up on a database that is still starting."""
    while True:
        try:
            return await asyncio.to_thread(open_store, url, gate_id, metrics)
        except StoreUnavailable as err:
            on_wait(f"waiting for the threshold store: {err}")
            await asyncio.sleep(RETRY_S)
