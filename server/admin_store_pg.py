"""The threshold store a fleet shares: PostgreSQL through psycopg 3 (``--state-url postgresql://``).

Runs in the API-server process of every replica. All replicas of one gate read and write one
table of overrides and one audit table (rows keyed by the gate id), each change in a transaction
with its audit row, committed before the admin API answers (PostgreSQL's default
``synchronous_commit=on``: an acknowledged change is on disk). Every change also bumps the gate's
row in ``babelgate_revisions``, which serializes writers and numbers the states, and sends
``NOTIFY babelgate_thresholds`` on commit.

Each replica keeps the overrides in memory (requests never wait on the database). A listener
thread holds its own connection: ``LISTEN``, re-read on every notification and at least every
``REFRESH_S`` (the safety net for a lost notification), and apply a snapshot only if its revision
is newer than the one in memory. When the database cannot be reached the replica serves on with
the overrides it last read, writes raise ``StoreUnavailable`` (503), ``status()`` says why
(``/health``: degraded), ``babelgate_threshold_store_errors_total`` counts it, and the listener
reconnects every ``RETRY_S`` and catches up with one re-read.

Schema changes are numbered migrations (``MIGRATIONS``), applied at start under an advisory lock
and recorded in ``babelgate_schema``; a database migrated by a newer babelgate is refused.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from babelgate.gate.estimator import ThresholdRecord
from babelgate.server.admin_store import (
    AUDIT_COLUMNS,
    AUDIT_INSERT_COLUMNS,
    DELETE_DETAIL,
    RECORD_COLUMNS,
    AuditEntry,
    OverrideStore,
    StoreUnavailable,
    audit_values,
    check_gate_id,
    record_from_row,
    record_values,
)
from babelgate.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

CHANNEL = "babelgate_thresholds"
REFRESH_S = 1.0  # safety-net re-read period (a notified change arrives in milliseconds)
RETRY_S = 1.0  # reconnect period while the database is unreachable
SCHEMA_LOCK = 0x6261_6265_6C67  # advisory lock key held while migrating ("babelg")

# Connection defaults a --state-url may override: fail fast (writes answer 503 within seconds,
# and a dead peer is noticed by TCP keepalives rather than a hung read).
CONNECT_DEFAULTS = {
    "connect_timeout": "2",
    "application_name": "babelgate",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "2",
    "tcp_user_timeout": "5000",
}

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: overrides and audit (the SQLite store's fields, keyed by gate), revisions per gate.
    (
        "CREATE TABLE babelgate_thresholds ("
        " gate_id text NOT NULL, language text NOT NULL, value double precision NOT NULL,"
        " source text NOT NULL, k integer, n_harmful integer, n_harmless integer,"
        " set_at text NOT NULL, note text NOT NULL DEFAULT '', auroc double precision,"
        " protected boolean NOT NULL DEFAULT true, set_by text NOT NULL,"
        " PRIMARY KEY (gate_id, language))",
        "CREATE TABLE babelgate_audit ("
        " id bigserial PRIMARY KEY, gate_id text NOT NULL, at text NOT NULL,"
        " language text NOT NULL, operation text NOT NULL, old_value double precision,"
        " old_source text, new_value double precision, new_source text, actor text NOT NULL,"
        " detail text NOT NULL DEFAULT '')",
        "CREATE INDEX babelgate_audit_gate_language ON babelgate_audit (gate_id, language, id)",
        "CREATE TABLE babelgate_revisions (gate_id text PRIMARY KEY, revision bigint NOT NULL)",
    ),
)

SNAPSHOT = (
    "SELECT r.revision, "
    + ", ".join(f"t.{c.strip()}" for c in RECORD_COLUMNS.split(","))
    + " FROM babelgate_revisions r LEFT JOIN babelgate_thresholds t ON t.gate_id = r.gate_id"
    " WHERE r.gate_id = %s ORDER BY t.language"
)
BUMP = (
    "INSERT INTO babelgate_revisions (gate_id, revision) VALUES (%s, 1) ON CONFLICT (gate_id)"
    " DO UPDATE SET revision = babelgate_revisions.revision + 1 RETURNING revision"
)
UPSERT = (
    f"INSERT INTO babelgate_thresholds (gate_id, {RECORD_COLUMNS}, set_by)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (gate_id, language)"
    " DO UPDATE SET "
    + ", ".join(
        f"{c} = EXCLUDED.{c}"
        for c in [*(c.strip() for c in RECORD_COLUMNS.split(",")), "set_by"]
        if c != "language"
    )
)
AUDIT = (
    f"INSERT INTO babelgate_audit (gate_id, {AUDIT_INSERT_COLUMNS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)

T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    """A gate's overrides as of one revision (0: nothing was ever written)."""

    revision: int
    overrides: dict[str, ThresholdRecord]


class StoreSchemaError(RuntimeError):
    """The database's schema is newer than this babelgate: upgrade it before serving."""


class PostgresThresholdStore(OverrideStore):
    """Threshold overrides of gate ``gate_id`` in the PostgreSQL database at ``url``, shared by
    every replica; raises ``StoreUnavailable`` if the database cannot be reached at start."""

    def __init__(
        self,
        url: str,
        gate_id: str,
        metrics: ServerMetrics | None = None,
        *,
        refresh_s: float = REFRESH_S,
    ) -> None:
        super().__init__(metrics)
        check_gate_id(gate_id)
        self.gate_id = gate_id
        self.description = describe(url)
        self.refresh_s = refresh_s
        self._url = url
        self._revision = -1
        self._apply_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_channel = f"babelgate_wake_{uuid.uuid4().hex}"  # this store's close() only
        self._writer: psycopg.Connection | None = None
        try:
            self._writer = connect(url)
            migrate(self._writer)
            self._apply(read_snapshot(self._writer, gate_id))
        except psycopg.OperationalError as err:
            self._writer = close_quietly(self._writer)
            self._unavailable("read", self._reason(err))
            raise StoreUnavailable(self._reason(err)) from err
        except BaseException:
            self._writer = close_quietly(self._writer)
            raise
        self._available()
        self._listener = threading.Thread(
            target=self._listen, name="babelgate-threshold-listener", daemon=True
        )
        self._listener.start()

    @property
    def revision(self) -> int:
        """The revision of the overrides in memory."""
        return self._revision

    def close(self) -> None:
        self._stop.set()
        with self._write_lock:
            if self._writer is not None and not self._writer.closed:
                try:  # wake the listener from its wait on notifications
                    self._writer.execute("SELECT pg_notify(%s, '')", (self._wake_channel,))
                except psycopg.Error as err:  # then it stops at its next re-read
                    log.debug("waking the threshold listener: %s", err)
        if self._listener.is_alive():
            self._listener.join(timeout=self.refresh_s + 5)
        with self._write_lock:
            self._writer = close_quietly(self._writer)

    # ------------------------------------------------------------------------- writes

    def put(
        self, record: ThresholdRecord, *, previous: ThresholdRecord, actor: str, operation: str
    ) -> None:
        """Store ``record`` as ``record.language``'s override and audit the change from
        ``previous``, committed (and announced to the other replicas) before returning."""

        def write(conn: psycopg.Connection) -> Snapshot:
            conn.execute(BUMP, (self.gate_id,))
            conn.execute(UPSERT, (self.gate_id, *record_values(record), actor))
            conn.execute(
                AUDIT,
                (self.gate_id,
                 *audit_values(record.language, operation, previous, record, actor, record.note)),
            )  # fmt: skip
            return self._announce(conn)

        self._apply(self._write(write))

    def delete(
        self, language: str, *, previous: ThresholdRecord, after: ThresholdRecord, actor: str
    ) -> bool:
        """Drop ``language``'s override (False if it had none); audit old -> ``after``."""

        def write(conn: psycopg.Connection) -> Snapshot | None:
            conn.execute(BUMP, (self.gate_id,))  # first: writers lock the revision row first
            gone = conn.execute(
                "DELETE FROM babelgate_thresholds WHERE gate_id = %s AND language = %s",
                (self.gate_id, language),
            ).rowcount
            if not gone:
                raise psycopg.Rollback()  # nothing changed: no revision, no audit
            conn.execute(
                AUDIT,
                (self.gate_id,
                 *audit_values(language, "delete", previous, after, actor, DELETE_DETAIL)),
            )  # fmt: skip
            return self._announce(conn)

        snapshot = self._write(write)
        if snapshot is None:
            return False
        self._apply(snapshot)
        return True

    def _announce(self, conn: psycopg.Connection) -> Snapshot:
        """Notify the other replicas (delivered at commit) and read the state being committed."""
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.gate_id))
        return read_snapshot(conn, self.gate_id)

    def _write(
        self, body: Callable[[psycopg.Connection], T], operation: str = "write"
    ) -> T | None:
        """Run ``body`` in one transaction on the writer connection (None if it rolled back
        with ``psycopg.Rollback``); ``StoreUnavailable`` if the database cannot be reached (a
        failed ``operation`` in the metrics)."""
        with self._write_lock:
            try:
                conn = self._writer_connection()
                result = None
                with conn.transaction():
                    result = body(conn)
            except psycopg.OperationalError as err:
                self._writer = close_quietly(self._writer)
                self._unavailable(operation, self._reason(err))
                raise StoreUnavailable(
                    f"{self._reason(err)}: nothing was changed; retry when GET /health no longer "
                    "says degraded"
                ) from err
        self._available()
        return result

    def _writer_connection(self) -> psycopg.Connection:
        """The writer connection, reopened if the database dropped it (e.g. after a restart)."""
        if self._writer is not None and not self._writer.closed:
            try:
                self._writer.execute("SELECT 1")
                return self._writer
            except psycopg.OperationalError:
                self._writer = close_quietly(self._writer)
        self._writer = connect(self._url)
        return self._writer

    # ------------------------------------------------------------------------- reads

    def audit(self, language: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """Audit entries of this gate, newest first (optionally one language's)."""
        where, args = "WHERE gate_id = %s", [self.gate_id]
        if language is not None:
            where, args = f"{where} AND language = %s", [*args, language]
        rows = self._write(
            lambda conn: conn.execute(
                f"SELECT {AUDIT_COLUMNS} FROM babelgate_audit {where} ORDER BY id DESC LIMIT %s",
                (*args, limit),
            ).fetchall(),
            "read",
        )
        return [AuditEntry(*row) for row in rows or ()]

    def _apply(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the overrides in effect unless memory already holds a newer one."""
        with self._apply_lock:
            if snapshot.revision > self._revision:
                self._revision = snapshot.revision
                self._replace(snapshot.overrides)

    def _listen(self) -> None:
        """Listener thread: apply every committed change, reconnecting while the database is
        down; the first read on each connection catches up on whatever was missed."""
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = connect(self._url)
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {self._wake_channel}")
                self._apply(read_snapshot(conn, self.gate_id))
                self._available()
                if self._stop.is_set():  # closed while connecting: the wake-up may be missed
                    break
                for _ in conn.notifies(timeout=self.refresh_s, stop_after=1):
                    pass
            except psycopg.OperationalError as err:
                self._unavailable("listen", self._reason(err))
                conn = close_quietly(conn)
                self._stop.wait(RETRY_S)
        close_quietly(conn)

    def _reason(self, err: BaseException) -> str:
        detail = " ".join(str(err).split()) or type(err).__name__
        return f"threshold store {self.description} unreachable ({detail})"


def connect(url: str) -> psycopg.Connection:
    """An autocommit connection to ``url`` with ``CONNECT_DEFAULTS`` where the URL sets none."""
    params = {**CONNECT_DEFAULTS, **conninfo_to_dict(url)}
    return psycopg.connect(make_conninfo("", **params), autocommit=True)


def close_quietly(conn: psycopg.Connection | None) -> None:
    """Close ``conn`` if open, ignoring a connection that is already dead; returns None."""
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error as err:  # closing a broken connection has nothing left to lose
            log.debug("closing a threshold store connection: %s", err)


def describe(url: str) -> str:
    """``url`` without its password (for logs and ``/health``)."""
    params = conninfo_to_dict(url)
    user = f"{params['user']}@" if params.get("user") else ""
    where = params.get("host", "local socket") + (f":{params['port']}" if "port" in params else "")
    return f"postgresql://{user}{where}/{params.get('dbname', '')}"


def migrate(conn: psycopg.Connection) -> None:
    """Bring the schema to ``len(MIGRATIONS)``, once across replicas starting together."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS babelgate_schema (version integer NOT NULL)")
        have = conn.execute("SELECT coalesce(max(version), 0) FROM babelgate_schema").fetchone()
        version = int(have[0]) if have else 0
        if version > len(MIGRATIONS):
            raise StoreSchemaError(
                f"the threshold database is at schema version {version}, newer than this "
                f"babelgate knows ({len(MIGRATIONS)}): upgrade babelgate on this replica"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO babelgate_schema (version) VALUES (%s)", (number,))
            log.info("threshold store: schema migrated to version %d", number)


def read_snapshot(conn: psycopg.Connection, gate_id: str) -> Snapshot:
    """The gate's overrides and their revision, read in one statement (one consistent view)."""
    rows = conn.execute(SNAPSHOT, (gate_id,)).fetchall()
    if not rows:
        return Snapshot(0, {})
    overrides = {row[1]: record_from_row(row[1:]) for row in rows if row[1] is not None}
    return Snapshot(int(rows[0][0]), overrides)
