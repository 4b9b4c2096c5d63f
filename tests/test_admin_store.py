"""The admin store: overrides, audit trail, WAL + synchronous=FULL, survival of SIGKILL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from babelgate.gate.estimator import ThresholdRecord
from babelgate.server.admin_store import ThresholdStore

REPO = Path(__file__).resolve().parents[1]


def record(language: str, value: float, source: str = "manual", note: str = "") -> ThresholdRecord:
    return ThresholdRecord(language, value, source, None, None, None, "2026-01-01T00:00:00+00:00",
                           note)  # fmt: skip


ZERO_SHOT = ThresholdRecord("sw", 0.25, "default", None, None, None, "2026-01-01T00:00:00+00:00")


def test_put_get_replace_delete(tmp_path: Path) -> None:
    store = ThresholdStore(tmp_path, "abc123")
    assert store.get("sw") is None
    store.put(record("sw", 1.5), previous=ZERO_SHOT, actor="token:aaa", operation="set")
    assert store.get("sw") == record("sw", 1.5)
    recal = ThresholdRecord("sw", -0.5, "recalibrated", 2, 2, 2, "2026-01-02T00:00:00+00:00", "n")
    store.put(recal, previous=record("sw", 1.5), actor="token:bbb", operation="recalibrate")
    assert store.overrides() == {"sw": recal}
    assert store.delete("sw", previous=recal, after=ZERO_SHOT, actor="token:aaa")
    assert not store.delete("sw", previous=ZERO_SHOT, after=ZERO_SHOT, actor="token:aaa")
    assert store.overrides() == {}


def test_audit_trail_newest_first_with_old_and_new(tmp_path: Path) -> None:
    store = ThresholdStore(tmp_path, "abc123")
    store.put(record("yo", 2.0), previous=ZERO_SHOT, actor="token:aaa", operation="set")
    store.put(record("am", 3.0), previous=ZERO_SHOT, actor="token:bbb", operation="set")
    store.delete("yo", previous=record("yo", 2.0), after=ZERO_SHOT, actor="token:ccc")
    entries = store.audit()
    assert [(e.language, e.operation, e.actor) for e in entries] == [
        ("yo", "delete", "token:ccc"), ("am", "set", "token:bbb"), ("yo", "set", "token:aaa"),
    ]  # fmt: skip
    first = entries[-1]
    assert (first.old_value, first.old_source, first.new_value, first.new_source) == (
        0.25, "default", 2.0, "manual"
    )
    assert [e.language for e in store.audit("yo")] == ["yo", "yo"]
    assert len(store.audit(limit=1)) == 1
    assert entries[0].to_dict()["at"].endswith("+00:00")


def test_store_is_per_gate_and_uses_wal_full_sync(tmp_path: Path) -> None:
    a = ThresholdStore(tmp_path, "gate1")
    a.put(record("sw", 1.0), previous=ZERO_SHOT, actor="token:aaa", operation="set")
    b = ThresholdStore(tmp_path, "gate2")
    assert b.overrides() == {}
    assert a.path != b.path
    assert a._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert a._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(ValueError, match="alphanumeric"):
        ThresholdStore(tmp_path, "../x")


def test_failed_write_leaves_no_trace(tmp_path: Path) -> None:
    store = ThresholdStore(tmp_path, "abc123")
    store._db.execute("DROP TABLE audit")  # the audit insert will fail inside the transaction
    with pytest.raises(sqlite3.OperationalError):
        store.put(record("sw", 1.0), previous=ZERO_SHOT, actor="token:aaa", operation="set")
    assert store.overrides() == {}
    assert ThresholdStore(tmp_path, "abc123").overrides() == {}  # nothing reached the file


def test_acknowledged_write_survives_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from babelgate.gate.estimator import ThresholdRecord
        from babelgate.server.admin_store import ThresholdStore
        store = ThresholdStore(Path({str(tmp_path)!r}), "abc123")
        zero = ThresholdRecord("km", 0.0, "default", None, None, None, "2026-01-01T00:00:00+00:00")
        rec = ThresholdRecord("km", 4.25, "manual", None, None, None, "2026-01-01T00:00:00+00:00")
        store.put(rec, previous=zero, actor="token:kill", operation="set")
        print("acknowledged", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "acknowledged"
    reopened = ThresholdStore(tmp_path, "abc123")
    assert reopened.get("km").value == 4.25
    assert reopened.audit()[0].actor == "token:kill"


def test_unprotected_status_persists_and_old_databases_are_migrated(tmp_path: Path) -> None:
    store = ThresholdStore(tmp_path, "abc123")
    weak = ThresholdRecord("yo", 0.1, "recalibrated", 1, 1, 1, "2026-01-02T00:00:00+00:00",
                           "UNPROTECTED: ...", auroc=0.0, protected=False)  # fmt: skip
    store.put(weak, previous=ZERO_SHOT, actor="token:aaa", operation="recalibrate")
    path = store.path
    store.close()
    assert ThresholdStore(tmp_path, "abc123").get("yo") == weak

    # A database from before the protection columns: rows load as protected, no AUROC.
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old = old_dir / path.name
    db = sqlite3.connect(old)
    db.executescript(
        "CREATE TABLE thresholds (language TEXT PRIMARY KEY, value REAL NOT NULL, source TEXT "
        "NOT NULL, k INTEGER, n_harmful INTEGER, n_harmless INTEGER, set_at TEXT NOT NULL, note "
        "TEXT NOT NULL DEFAULT '', set_by TEXT NOT NULL);"
        "INSERT INTO thresholds VALUES ('sw', 1.5, 'manual', NULL, NULL, NULL, "
        "'2026-01-01T00:00:00+00:00', '', 'token:aaa');"
    )
    db.commit()
    db.close()
    migrated = ThresholdStore(old_dir, "abc123").get("sw")
    assert migrated == record("sw", 1.5) and migrated.protected and migrated.auroc is None
