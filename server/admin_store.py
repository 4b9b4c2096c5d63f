"""Durable per-language threshold overrides and their audit trail (SQLite, WAL, synchronous=FULL).

Runs in the API-server process. The admin API writes here before it answers, in one transaction
with its audit row, so an acknowledged change survives a crash or ``kill -9`` (WAL with
synchronous=FULL syncs the log on every commit). Overrides win over the artifact's thresholds.

Thresholds live on one gate's logit scale, so a store belongs to one artifact: the database file
is named after the artifact's tensor checksum, and another artifact starts with an empty store.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gate.estimator import ThresholdRecord

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


class ThresholdStore:
    """Threshold overrides keyed by language, in ``<state_dir>/thresholds-<gate id>.sqlite3``.

    Thread-safe (one connection behind a lock); every write is a short transaction. Reads of
    overrides come from memory (this process is the only writer), so resolving a request's
    threshold costs a dict lookup.
    """

    def __init__(self, state_dir: Path, gate_id: str) -> None:
        if not gate_id or not gate_id.isalnum():
            raise ValueError(f"gate id must be alphanumeric, got {gate_id!r}")
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / f"thresholds-{gate_id}.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._overrides = self._read_overrides()

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
                "SELECT language, value, source, k, n_harmful, n_harmless, set_at, note, auroc, "
                "protected FROM thresholds ORDER BY language"
            ).fetchall()
        return {row[0]: _record(row) for row in rows}

    def overrides(self) -> dict[str, ThresholdRecord]:
        """Every stored override, by language (a copy)."""
        return dict(self._overrides)

    def get(self, language: str) -> ThresholdRecord | None:
        return self._overrides.get(language)

    def put(
        self, record: ThresholdRecord, *, previous: ThresholdRecord, actor: str, operation: str
    ) -> None:
        """Store ``record`` as ``record.language``'s override and audit the change from
        ``previous`` (the threshold in effect before), durably, before returning."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO thresholds "
                "(language, value, source, k, n_harmful, n_harmless, set_at, note, set_by, auroc, "
                "protected) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.language, record.value, record.source, record.k, record.n_harmful,
                    record.n_harmless, record.set_at, record.note, actor, record.auroc,
                    int(record.protected),
                ),
            )  # fmt: skip
            _audit(db, record.language, operation, previous, record, actor, record.note)
        self._overrides[record.language] = record

    def delete(
        self, language: str, *, previous: ThresholdRecord, after: ThresholdRecord, actor: str
    ) -> bool:
        """Drop ``language``'s override (False if it had none); audit old -> ``after``."""
        with self._transaction() as db:
            gone = db.execute("DELETE FROM thresholds WHERE language = ?", (language,)).rowcount
            if gone:
                _audit(db, language, "delete", previous, after, actor, "override removed")
        self._overrides.pop(language, None)
        return bool(gone)

    def audit(self, language: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """Audit entries, newest first (optionally one language's)."""
        query = (
            "SELECT id, at, language, operation, old_value, old_source, new_value, new_source, "
            "actor, detail FROM audit"
        )
        args: tuple[Any, ...] = ()
        if language is not None:
            query += " WHERE language = ?"
            args = (language,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [AuditEntry(*row) for row in rows]


def _record(row: tuple[Any, ...]) -> ThresholdRecord:
    language, value, source, k, n_harmful, n_harmless, set_at, note, auroc, protected = row
    return ThresholdRecord(
        language=language, value=value, source=source, k=k, n_harmful=n_harmful,
        n_harmless=n_harmless, set_at=set_at, note=note, auroc=auroc, protected=bool(protected),
    )  # fmt: skip


def _audit(
    db: sqlite3.Connection,
    language: str,
    operation: str,
    old: ThresholdRecord,
    new: ThresholdRecord,
    actor: str,
    detail: str,
) -> None:
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    db.execute(
        "INSERT INTO audit (at, language, operation, old_value, old_source, new_value, "
        "new_source, actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (at, language, operation, old.value, old.source, new.value, new.source, actor,
         detail),
    )  # fmt: skip
