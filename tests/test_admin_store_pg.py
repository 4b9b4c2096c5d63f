"""The shared threshold store on a real PostgreSQL server: two store instances are two replicas.

A change acknowledged on one is applied by the other (by NOTIFY, or by the periodic re-read when
a notification is lost); writers are serialized and every acknowledged write is kept; a replica
cut off from the database serves on with what it read, refuses writes, reports and counts it,
and catches up when the link returns; a database stopped and started again is the same story
for every replica. Each test uses its own gate id (or database), on one server per session.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from conftest import wait_until
from pgcluster import Cluster, Link
from prometheus_client import CollectorRegistry

from babelgate.gate.estimator import ThresholdRecord
from babelgate.server.admin_store import StoreUnavailable
from babelgate.server.admin_store_pg import MIGRATIONS, PostgresThresholdStore, StoreSchemaError
from babelgate.server.metrics import ServerMetrics
from babelgate.server.store_url import connect_store, open_store


def record(language: str, value: float, note: str = "") -> ThresholdRecord:
    return ThresholdRecord(language, value, "manual", None, None, None,
                           "2026-01-01T00:00:00+00:00", note)  # fmt: skip


ZERO_SHOT = ThresholdRecord("sw", 0.25, "default", None, None, None, "2026-01-01T00:00:00+00:00")


def gate_id() -> str:
    return uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def database(postgres: Cluster) -> str:
    return postgres.create_database()


@pytest.fixture
def replicas(database: str) -> Iterator[tuple[PostgresThresholdStore, PostgresThresholdStore]]:
    gid = gate_id()
    a, b = PostgresThresholdStore(database, gid), PostgresThresholdStore(database, gid)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def link(postgres: Cluster) -> Iterator[Link]:
    proxy = Link(postgres)
    yield proxy
    proxy.close()


def test_a_change_on_one_replica_is_applied_and_audited_on_the_other(replicas) -> None:
    a, b = replicas
    seen: list[str] = []
    b.subscribe(seen.append)
    a.put(record("yo", 2.5, "tightened"), previous=ZERO_SHOT, actor="token:aaa", operation="set")
    wait_until(lambda: b.get("yo") == record("yo", 2.5, "tightened"), "b applies a's override")
    assert seen == ["yo"] and b.revision == a.revision == 1
    entry = b.audit()[0]  # one audit table, the SQLite store's fields
    assert (entry.language, entry.operation, entry.actor) == ("yo", "set", "token:aaa")
    assert (entry.old_value, entry.old_source, entry.new_value, entry.new_source) == (
        0.25, "default", 2.5, "manual"
    )

    assert b.delete("yo", previous=b.get("yo"), after=ZERO_SHOT, actor="token:bbb")
    wait_until(lambda: a.get("yo") is None, "a applies b's delete")
    assert not a.delete("yo", previous=ZERO_SHOT, after=ZERO_SHOT, actor="token:aaa")
    assert [e.operation for e in a.audit("yo")] == ["delete", "set"]  # no row for the no-op
    assert a.revision == b.revision == 2 and a.overrides() == b.overrides() == {}


def test_gates_do_not_share_overrides(database: str) -> None:
    one, other = PostgresThresholdStore(database, gate_id()), PostgresThresholdStore(
        database, gate_id()
    )
    one.put(record("sw", 1.0), previous=ZERO_SHOT, actor="token:aaa", operation="set")
    assert open_store(database, one.gate_id).get("sw") == record("sw", 1.0)
    assert other.get("sw") is None and other.audit() == [] and other.revision == 0
    one.close()
    other.close()


def test_a_lost_notification_is_caught_by_the_periodic_reread(database: str) -> None:
    gid = gate_id()
    store = PostgresThresholdStore(database, gid, refresh_s=0.2)
    with psycopg.connect(database, autocommit=True) as conn, conn.transaction():
        # What another replica commits, minus its NOTIFY.
        conn.execute("INSERT INTO babelgate_revisions VALUES (%s, 7)", (gid,))
        conn.execute(
            "INSERT INTO babelgate_thresholds (gate_id, language, value, source, set_at, set_by)"
            " VALUES (%s, 'am', 3.0, 'manual', '2026-01-01T00:00:00+00:00', 'sql')",
            (gid,),
        )
    wait_until(lambda: store.get("am") is not None, "the re-read applies an unannounced change")
    assert store.revision == 7 and store.get("am").value == 3.0
    store.close()


def test_concurrent_writers_on_two_replicas_lose_no_acknowledged_write(replicas) -> None:
    a, b = replicas
    acknowledged: list[tuple[str, float]] = []
    lock = threading.Lock()

    def writer(store: PostgresThresholdStore, base: float) -> None:
        for i in range(15):
            value = base + i
            lang = ("sw", "yo", "am")[i % 3]
            store.put(record(lang, value), previous=ZERO_SHOT, actor=f"token:{base}",
                      operation="set")  # fmt: skip
            with lock:
                acknowledged.append((lang, value))

    threads = [threading.Thread(target=writer, args=(s, base))
               for s, base in ((a, 0.0), (b, 100.0), (a, 200.0), (b, 300.0))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(acknowledged) == 60
    wait_until(lambda: a.revision == b.revision == 60, "both replicas at the last revision")
    assert a.overrides() == b.overrides()
    audited = sorted((e.language, e.new_value) for e in a.audit(limit=1000))
    assert audited == sorted(acknowledged)  # every acknowledged write is in the trail
    with psycopg.connect(a._url) as conn:  # and memory is what the database holds
        rows = conn.execute(
            "SELECT language, value FROM babelgate_thresholds WHERE gate_id = %s", (a.gate_id,)
        ).fetchall()
    assert {lang: r.value for lang, r in a.overrides().items()} == dict(rows)


def test_a_replica_cut_off_serves_on_refuses_writes_and_catches_up(
    postgres: Cluster, database: str, link: Link
) -> None:
    gid, metrics = gate_id(), ServerMetrics(CollectorRegistry())
    dbname = database.rsplit("/", 1)[1]
    cut_off = PostgresThresholdStore(link.url(dbname), gid, metrics)
    other = PostgresThresholdStore(database, gid)
    other.put(record("yo", 1.0), previous=ZERO_SHOT, actor="token:aaa", operation="set")
    wait_until(lambda: cut_off.get("yo") is not None, "the replica has the first override")

    link.cut()
    wait_until(lambda: not cut_off.status().ok, "the replica notices the database is gone")
    reason = cut_off.status().reason
    assert "unreachable" in reason and cut_off.description in reason
    assert metrics.threshold_store_up._value.get() == 0
    assert metrics.threshold_store_errors.labels("listen")._value.get() >= 1
    with pytest.raises(StoreUnavailable, match="nothing was changed"):
        cut_off.put(record("yo", 9.0), previous=ZERO_SHOT, actor="token:ccc", operation="set")
    assert metrics.threshold_store_errors.labels("write")._value.get() == 1
    with pytest.raises(StoreUnavailable):
        cut_off.audit()
    assert metrics.threshold_store_errors.labels("read")._value.get() == 1
    assert cut_off.get("yo") == record("yo", 1.0)  # serving on with what it last read

    other.put(record("yo", 2.0), previous=record("yo", 1.0), actor="token:aaa", operation="set")
    other.put(record("am", 4.0), previous=ZERO_SHOT, actor="token:aaa", operation="set")
    link.restore()
    wait_until(lambda: cut_off.status().ok, "the replica reconnects")
    wait_until(lambda: cut_off.revision == other.revision, "the replica catches up")
    assert cut_off.overrides() == other.overrides() == {"yo": record("yo", 2.0),
                                                         "am": record("am", 4.0)}  # fmt: skip
    assert metrics.threshold_store_up._value.get() == 1
    assert metrics.threshold_changes.labels("am")._value.get() == 1
    assert [e.new_value for e in cut_off.audit("yo")] == [2.0, 1.0]  # the refused write: absent
    cut_off.close()
    other.close()


def test_a_replica_starting_without_its_database_waits_for_it(database: str, link: Link) -> None:
    link.cut()
    url, gid = link.url(database.rsplit("/", 1)[1]), gate_id()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        PostgresThresholdStore(url, gid)
    waits: list[str] = []

    def waiting(message: str) -> None:
        waits.append(message)
        link.restore()  # the database comes up while the replica waits

    store = asyncio.run(connect_store(url, gid, None, waiting))
    assert waits and waits[0].startswith("waiting for the threshold store")
    assert store.status().ok and store.revision == 0
    store.close()


def test_every_replica_rides_out_a_database_restart(postgres: Cluster, replicas) -> None:
    if not postgres.owned:
        pytest.skip("the server comes from $BABELGATE_TEST_POSTGRES_URL: not ours to stop")
    a, b = replicas
    a.put(record("th", 0.5), previous=ZERO_SHOT, actor="token:aaa", operation="set")
    wait_until(lambda: b.get("th") is not None, "b has the override")
    postgres.stop()
    try:
        wait_until(lambda: not a.status().ok and not b.status().ok, "both see the database gone")
        with pytest.raises(StoreUnavailable):
            b.put(record("th", 7.0), previous=ZERO_SHOT, actor="token:bbb", operation="set")
        assert a.get("th") == b.get("th") == record("th", 0.5)
    finally:
        postgres.start()
    wait_until(lambda: a.status().ok and b.status().ok, "both reconnect")
    b.put(record("th", 0.75), previous=record("th", 0.5), actor="token:bbb", operation="set")
    wait_until(lambda: a.get("th") == record("th", 0.75), "a applies b's change after the restart")
    assert [e.new_value for e in a.audit("th")] == [0.75, 0.5]


def test_schema_is_migrated_once_and_a_newer_schema_is_refused(postgres: Cluster) -> None:
    url = postgres.create_database()
    stores = [PostgresThresholdStore(url, gate_id()) for _ in range(2)]
    with psycopg.connect(url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM babelgate_schema")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        conn.execute("INSERT INTO babelgate_schema VALUES (%s)", (len(MIGRATIONS) + 1,))
    for store in stores:
        store.close()
    with pytest.raises(StoreSchemaError, match="upgrade babelgate"):
        PostgresThresholdStore(url, gate_id())
