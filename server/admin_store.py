"""Durable per-language threshold overrides and their audit trail: what every store shares, and
the single-process store (SQLite, WAL, synchronous=FULL; the default).

Runs in the API-server process. The admin API writes to a store before it answers, in one
transaction with its audit row, so an acknowledged change survives a crash or ``kill -9`` (here:
WAL with synchronous=FULL syncs the log on every commit). Overrides win over the artifact's
thresholds. Requests read overrides from memory (``OverrideStore.get``: a dict lookup), never
from the database; a store replaces that dict when a change commits, here or, for the shared
PostgreSQL store (``server.admin_store_pg``), on another replica.

Thresholds live on one gate's logit scale, so a store belongs to one artifact: the SQLite file
is named after the artifact's tensor checksum (PostgreSQL keys its rows by it), and another
artifact starts with an empty store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from babelgate.gate.estimator import ThresholdRecord
from babelgate.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS thresholds (
    language   TEXT PRIMARY KEY,
    value      REAL NOT NULL,
    source     TEXT NOT NULL,
    k          INTEGER,
    n_harmful  INTEGER,
    n_harmless INTEGER,
    set_at     TEXT NOT NULL,
    note       TEXT NOT NULL DEFAULT '',
    set_by     TEXT NOT NULL,
    auroc      REAL,
    protected  INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    language   TEXT NOT NULL,
    operation  TEXT NOT NULL,
    old_value  REAL,
    old_source TEXT,
    new_value  REAL,
    new_source TEXT,
    actor      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT ''
);
"""

# Column lists every store reads and writes in this order (``record_from_row``, ``audit_values``).
RECORD_COLUMNS = "language, value, source, k, n_harmful, n_harmless, set_at, note, auroc, protected"
AUDIT_COLUMNS = (
    "id, at, language, operation, old_value, old_source, new_value, new_source, actor, detail"
)
AUDIT_INSERT_COLUMNS = AUDIT_COLUMNS.removeprefix("id, ")


class StoreUnavailable(RuntimeError):
    """The store's database cannot be reached: nothing was written (the admin API answers 503)."""


@dataclass(frozen=True)
class StoreStatus:
    """Whether the store's database answers; ``reason`` says why not (for ``/health``)."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class AuditEntry:
    """One change: when, which language, what (set / recalibrate / delete), old and new, by whom.

    ``old_*`` describe the threshold in effect before the change (an override, the artifact's own
    threshold or the zero-shot fallback), ``new_*`` the one in effect after it.
    """

    id: int
    at: str
    language: str
    operation: str
    old_value: float | None
    old_source: str | None
    new_value: float | None
    new_source: str | None
    actor: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class OverrideStore:
    """What requests and the admin API read: the overrides in memory, change listeners, and the
    database's availability. Backends add ``put``, ``delete``, ``audit`` and ``close``, and call
    ``_replace`` with the overrides as committed."""

    description: str  # where the data lives, without secrets (for logs and /health)

    def __init__(self, metrics: ServerMetrics | None) -> None:
        self._metrics = metrics
        self._overrides: dict[str, ThresholdRecord] = {}
        self._listeners: list[Callable[[str], object]] = []
        self._status = StoreStatus(True)
        self._status_lock = threading.Lock()

    def overrides(self) -> dict[str, ThresholdRecord]:
        """Every stored override, by language (a copy)."""
        return dict(self._overrides)

    def get(self, language: str) -> ThresholdRecord | None:
        return self._overrides.get(language)

    def subscribe(self, listener: Callable[[str], object]) -> None:
        """Call ``listener(language)`` after each change of a language's override, wherever the
        change was made (on a background thread for changes from other replicas)."""
        self._listeners.append(listener)

    def status(self) -> StoreStatus:
        return self._status

    def _replace(self, overrides: Mapping[str, ThresholdRecord]) -> None:
        """Make ``overrides`` the ones in effect; tell the listeners which languages changed."""
        old, self._overrides = self._overrides, dict(overrides)
        changed = sorted(
            lang for lang in set(old) | set(overrides) if old.get(lang) != overrides.get(lang)
        )
        for lang in changed:
            if self._metrics is not None:
                self._metrics.threshold_changes.labels(lang).inc()
            for listener in self._listeners:
                listener(lang)

    def _available(self) -> None:
        with self._status_lock:
            if not self._status.ok:
                log.warning("%s answers again: thresholds are current", self.description)
            self._status = StoreStatus(True)
            if self._metrics is not None:
                self._metrics.threshold_store_up.set(1)

    def _unavailable(self, operation: str, reason: str) -> None:
        """Count a failed ``operation`` ("read", "write", "listen") and report the store down."""
        with self._status_lock:
            if self._status.ok:
                log.error("%s; serving on with the thresholds last read", reason)
            self._status = StoreStatus(False, reason)
            if self._metrics is not None:
                self._metrics.threshold_store_up.set(0)
                self._metrics.threshold_store_errors.labels(operation).inc()


class ThresholdStore(OverrideStore):
    """Threshold overrides keyed by language, in ``<state_dir>/thresholds-<gate id>.sqlite3``.

    Thread-safe (one connection behind a lock); every write is a short transaction. This process
    is the only writer, so memory is updated after each commit and never re-read.
    """

    def __init__(self, state_dir: Path, gate_id: str, metrics: ServerMetrics | None = None) -> None:
        super().__init__(metrics)
        check_gate_id(gate_id)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / f"thresholds-{gate_id}.sqlite3"
        self.description = f"sqlite:///{self.path}"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._replace(self._read_overrides())
        self._available()

    def _migrate(self) -> None:
        """Add the protection columns to a database written before they existed."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(thresholds)")}
        with self._transaction() as db:
            if "auroc" not in have:
                db.execute("ALTER TABLE thresholds ADD COLUMN auroc REAL")
            if "protected" not in have:
                db.execute(
                    "ALTER TABLE thresholds ADD COLUMN protected INTEGER NOT NULL DEFAULT 1"
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read_overrides(self) -> dict[str, ThresholdRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {RECORD_COLUMNS} FROM thresholds ORDER BY language"
            ).fetchall()
        return {row[0]: record_from_row(row) for row in rows}

    def put(
        self, record: ThresholdRecord, *, previous: ThresholdRecord, actor: str, operation: str
    ) -> None:
        """Store ``record`` as ``record.language``'s override and audit the change from
        ``previous`` (the threshold in effect before), durably, before returning."""
        with self._transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO thresholds ({RECORD_COLUMNS}, set_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*record_values(record), actor),
            )
            db.execute(
                f"INSERT INTO audit ({AUDIT_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                audit_values(record.language, operation, previous, record, actor, record.note),
            )
        self._replace({**self._overrides, record.language: record})

    def delete(
        self, language: str, *, previous: ThresholdRecord, after: ThresholdRecord, actor: str
    ) -> bool:
        """Drop ``language``'s override (False if it had none); audit old -> ``after``."""
        with self._transaction() as db:
            gone = db.execute("DELETE FROM thresholds WHERE language = ?", (language,)).rowcount
            if gone:
                db.execute(
                    f"INSERT INTO audit ({AUDIT_INSERT_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    audit_values(language, "delete", previous, after, actor, DELETE_DETAIL),
                )
        self._replace({k: v for k, v in self._overrides.items() if k != language})
        return bool(gone)

    def audit(self, language: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """Audit entries, newest first (optionally one language's)."""
        where, args = ("WHERE language = ?", (language,)) if language is not None else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit {where} ORDER BY id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [AuditEntry(*row) for row in rows]


DELETE_DETAIL = "override removed"


def check_gate_id(gate_id: str) -> None:
    """A gate id names a file and keys rows: alphanumeric only."""
    if not gate_id or not gate_id.isalnum():
        raise ValueError(f"gate id must be alphanumeric, got {gate_id!r}")


def record_from_row(row: tuple[Any, ...]) -> ThresholdRecord:
    """A ``ThresholdRecord`` from a row of ``RECORD_COLUMNS``."""
    language, value, source, k, n_harmful, n_harmless, set_at, note, auroc, protected = row
    return ThresholdRecord(
        language=language, value=value, source=source, k=k, n_harmful=n_harmful,
        n_harmless=n_harmless, set_at=set_at, note=note, auroc=auroc, protected=bool(protected),
    )  # fmt: skip


def record_values(record: ThresholdRecord) -> tuple[Any, ...]:
    """``record`` as a row of ``RECORD_COLUMNS``."""
    return (
        record.language, record.value, record.source, record.k, record.n_harmful,
        record.n_harmless, record.set_at, record.note, record.auroc, record.protected,
    )  # fmt: skip


def audit_values(
    language: str,
    operation: str,
    old: ThresholdRecord,
    new: ThresholdRecord,
    actor: str,
    detail: str,
) -> tuple[Any, ...]:
    """An audit row (``AUDIT_INSERT_COLUMNS``), stamped now (UTC)."""
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    return (at, language, operation, old.value, old.source, new.value, new.source, actor, detail)
