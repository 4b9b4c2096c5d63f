"""Two API servers sharing one PostgreSQL threshold store, through the real FastAPI app.

No vLLM and no model: each app gets a real fitted gate, a fake engine (``test_server_stream``'s,
which reports the verdict the worker would from the guard parameters it is sent) and a
``PostgresThresholdStore`` on the session's PostgreSQL server. A PUT on one app is answered by
the other's admin API and applied to its requests (the verdict's ``threshold_source``); with
the database cut off, admin writes are 503 in OpenAI's schema, ``/health`` is degraded with the
reason, requests are still guarded with the last thresholds, and it all recovers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from conftest import fitted_gate, wait_until
from fastapi.testclient import TestClient
from pgcluster import Cluster, Link
from prometheus_client import CollectorRegistry
from test_server_stream import FakeEngine

from babelgate.server.admin_store_pg import PostgresThresholdStore
from babelgate.server.app import chat, create_app
from babelgate.server.metrics import ServerMetrics
from babelgate.server.settings import ServeSettings

ADMIN = "fleet-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


class HealthyEngine(FakeEngine):
    """The fake engine plus the vLLM health check ``/health`` calls."""

    engine = SimpleNamespace(check_health=lambda: _healthy())


async def _healthy() -> None:
    return None


def replica(url: str, gate_id: str, monkeypatch) -> TestClient:
    monkeypatch.setattr(chat, "sampling_params", lambda body, max_tokens: [None] * body.n)
    app = create_app(ServeSettings(admin_token=ADMIN), ServerMetrics(CollectorRegistry()))
    svc = app.state.service
    engine = HealthyEngine(score=0.0)
    svc.engine, svc.tokenizer, svc.max_model_len = engine, engine.tokenizer, 256
    svc.served_names, svc._gate = ("tiny",), fitted_gate()
    svc.use_store(PostgresThresholdStore(url, gate_id, svc.metrics))
    return TestClient(app)  # not entered: the lifespan (which starts a real engine) never runs


def chat_verdict(client: TestClient, language: str) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hallo"}],
            "babelgate": {"language": language}}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["babelgate"]


@pytest.fixture
def fleet(postgres: Cluster, monkeypatch) -> Iterator[tuple[TestClient, TestClient, Link]]:
    link = Link(postgres)
    url = postgres.create_database()
    gid = uuid.uuid4().hex[:16]
    a = replica(url, gid, monkeypatch)
    b = replica(link.url(url.rsplit("/", 1)[1]), gid, monkeypatch)  # b reaches it through link
    yield a, b, link
    for client in (a, b):
        client.app.state.service.store.close()
    link.close()


def test_a_put_on_one_server_is_shown_and_applied_by_the_other(fleet) -> None:
    a, b, _ = fleet
    assert chat_verdict(b, "yo")["threshold_source"] == "default"
    r = a.put("/admin/thresholds/yo", json={"value": -50.0, "note": "fleet"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["origin"] == "override"

    def b_shows_it() -> bool:
        return b.get("/admin/thresholds/yo", headers=AUTH).json()["origin"] == "override"

    wait_until(b_shows_it, "b's admin API shows a's override")
    listed = {t["language"]: t for t in b.get("/admin/thresholds", headers=AUTH).json()[
        "thresholds"]}  # fmt: skip
    assert (listed["yo"]["value"], listed["yo"]["source"], listed["yo"]["note"]) == (
        -50.0, "manual", "fleet"
    )
    verdict = chat_verdict(b, "yo")  # b's requests use it: score 0 >= -50 is harmful
    assert (verdict["threshold"], verdict["threshold_source"], verdict["decision"]) == (
        -50.0, "manual", "harmful"
    )
    b_metrics = b.app.state.service.metrics
    assert b_metrics.threshold.labels("yo")._value.get() == -50.0  # re-published remotely
    assert b_metrics.threshold_changes.labels("yo")._value.get() == 1
    audit = b.get("/admin/audit", params={"language": "yo"}, headers=AUTH).json()["entries"]
    assert [(e["operation"], e["new_value"]) for e in audit] == [("set", -50.0)]

    assert b.delete("/admin/thresholds/yo", headers=AUTH).status_code == 200
    wait_until(lambda: chat_verdict(a, "yo")["threshold_source"] == "default", "a drops it")


def test_database_cut_off_degrades_then_recovers(fleet) -> None:
    a, b, link = fleet
    assert a.put("/admin/thresholds/de", json={"value": 40.0}, headers=AUTH).status_code == 200
    wait_until(lambda: chat_verdict(b, "de")["threshold"] == 40.0, "b has de at 40")
    assert b.get("/health").json() == {"status": "ok"}

    link.cut()
    wait_until(lambda: b.get("/health").json()["status"] == "degraded", "b reports degraded")
    health = b.get("/health")
    assert health.status_code == 200 and "unreachable" in health.json()["reason"]
    r = b.put("/admin/thresholds/de", json={"value": 1.0}, headers=AUTH)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {
        "message", "type", "param", "code"}  # fmt: skip
    assert (r.json()["error"]["type"], r.json()["error"]["code"]) == (
        "service_unavailable_error", "threshold_store_unavailable"
    )
    assert b.get("/admin/audit", headers=AUTH).status_code == 503
    assert b.get("/admin/thresholds/de", headers=AUTH).json()["value"] == 40.0
    assert chat_verdict(b, "de")["threshold"] == 40.0  # still guarded, last thresholds
    errors = b.app.state.service.metrics.threshold_store_errors
    assert errors.labels("write")._value.get() == errors.labels("read")._value.get() == 1
    assert errors.labels("listen")._value.get() >= 1

    assert a.put("/admin/thresholds/de", json={"value": 41.0}, headers=AUTH).status_code == 200
    link.restore()
    wait_until(lambda: b.get("/health").json() == {"status": "ok"}, "b healthy again")
    wait_until(lambda: chat_verdict(b, "de")["threshold"] == 41.0, "b catches up")
