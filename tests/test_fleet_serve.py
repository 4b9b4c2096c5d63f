"""Two ``babelgate serve`` processes on one PostgreSQL threshold store: a fleet of two replicas.

Real servers (vLLM, the embedded SmolLM2 model and its shipped calibration) and the session's
PostgreSQL server: a PUT on one is shown and applied (the verdict's ``threshold_source``) by the
other; stopping the database degrades both (serving on, admin writes 503, /health says why) and
starting it again recovers both; ``kill -9`` of either right after an acknowledged PUT loses
nothing. The store's logic is tested without servers in ``test_admin_store_pg.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import wait_until
from pgcluster import Cluster
from test_server_api import ADMIN, API_KEY, MODEL, Server, metrics, sample

from babelgate.gate.hf.embedded import SMOLLM2
from babelgate.server.shipped import shipped_artifact

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

DE = "Wie backe ich zu Hause ein einfaches Brot?"
LOW = -1.0e6  # every prompt scores above it: harmful


def admin(server: Server) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/admin", timeout=120,
                        headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip


def verdict(server: Server, language: str) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": DE}], "max_tokens": 4,
            "temperature": 0.0, "babelgate": {"language": language}}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300,
                   headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()["babelgate"]


def origin(server: Server, language: str) -> str:
    with admin(server) as c:
        return c.get(f"/thresholds/{language}").json()["origin"]


def put(server: Server, language: str, value: float) -> httpx.Response:
    with admin(server) as c:
        return c.put(f"/thresholds/{language}", json={"value": value, "note": "fleet test"})


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, postgres: Cluster
) -> Iterator[tuple[Server, Server]]:
    url = postgres.create_database()
    artifact = shipped_artifact(SMOLLM2.id)
    assert artifact is not None, "the SmolLM2 calibration ships in server/artifacts/"
    tmp = tmp_path_factory.mktemp("fleet")
    servers = tuple(Server(tmp, tmp / f"{name}.log", artifact, state_url=url) for name in "ab")
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_a_put_on_one_replica_is_applied_by_the_other(fleet) -> None:
    a, b = fleet
    assert verdict(b, "de")["threshold_source"] != "manual"
    for writer, reader, lang in ((a, b, "de"), (b, a, "it")):
        acknowledged = time.monotonic()
        assert put(writer, lang, LOW).status_code == 200
        wait_until(lambda r=reader, x=lang: origin(r, x) == "override", "the other shows it")
        print(f"PUT shown by the other replica after {time.monotonic() - acknowledged:.3f} s")
        applied = verdict(reader, lang)
        assert (applied["threshold"], applied["threshold_source"], applied["decision"]) == (
            LOW, "manual", "harmful"
        )
    with admin(a) as c:  # one audit trail
        assert [e["language"] for e in c.get("/audit").json()["entries"][:2]] == ["it", "de"]


def test_database_down_degrades_both_and_they_recover(fleet, postgres: Cluster) -> None:
    if not postgres.owned:
        pytest.skip("the server comes from $BABELGATE_TEST_POSTGRES_URL: not ours to stop")
    a, b = fleet
    postgres.stop()
    try:
        for server in fleet:
            wait_until(lambda s=server: httpx.get(f"{s.url}/health").json()["status"] == "degraded",
                       "the replica reports degraded")  # fmt: skip
            health = httpx.get(f"{server.url}/health")
            assert health.status_code == 200 and "unreachable" in health.json()["reason"]
        refused = put(a, "de", 5.0)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "threshold_store_unavailable"
        kept = verdict(b, "de")  # still guarded, with the thresholds last read
        assert (kept["threshold"], kept["threshold_source"]) == (LOW, "manual")
        assert sample(metrics(a), "babelgate_threshold_store_errors_total", operation="write") == 1
        assert sample(metrics(b), "babelgate_threshold_store_up") == 0
    finally:
        postgres.start()
    for server in fleet:
        wait_until(lambda s=server: httpx.get(f"{s.url}/health").json() == {"status": "ok"},
                   "the replica is healthy again")  # fmt: skip
    assert put(b, "de", 2.5).status_code == 200
    wait_until(lambda: verdict(a, "de")["threshold"] == 2.5, "a applies b's change")


def test_kill_9_of_either_replica_loses_no_acknowledged_write(fleet) -> None:
    a, b = fleet
    for server, lang, value in ((a, "fr", 1.25), (b, "sw", 2.75)):
        assert put(server, lang, value).status_code == 200
        server.kill9()  # at once: only what was committed before the 200 can survive
    for server in fleet:
        server.health_while_starting.clear()
        server.start()
    for server in fleet:
        with admin(server) as c:
            for lang, value in (("fr", 1.25), ("sw", 2.75)):
                shown = c.get(f"/thresholds/{lang}").json()
                assert (shown["value"], shown["origin"]) == (value, "override")
            audited = {e["language"]: e["new_value"] for e in c.get("/audit").json()["entries"]}
            assert (audited["fr"], audited["sw"]) == (1.25, 2.75)
