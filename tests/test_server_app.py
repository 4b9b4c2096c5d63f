"""The API server before its engine is up: OpenAI error schema, auth order, 503 until ready.

No engine is started here (the app's lifespan does not run under a plain TestClient), which is
exactly the state of a real server while its model loads; the full server runs in
``test_server_api.py``.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from babelgate.server.app import create_app
from babelgate.server.app.auth import token_identity
from babelgate.server.metrics import ServerMetrics
from babelgate.server.settings import ServeSettings

KEY, ADMIN = "key-1", "admin-1"
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = ServeSettings(api_key=KEY, admin_token=ADMIN)
    return TestClient(create_app(settings, ServerMetrics(CollectorRegistry())))


def error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_health_is_503_until_the_engine_is_up(client: TestClient) -> None:
    assert client.get("/health").status_code == 503


def test_chat_is_503_with_retry_after(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": MSGS},
                    headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    e = error(r)
    assert (e["type"], e["code"]) == ("service_unavailable_error", "engine_not_ready")


def test_api_key_checked_before_readiness(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": MSGS},
                        headers=headers)  # fmt: skip
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert error(r)["code"] == "invalid_api_key"
    assert client.get("/v1/models").status_code == 401


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"model": "m", "messages": ', None),
        ('{"model": "m"}', "messages"),
        ('{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0}', "top_p"),
        ('{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c",'
         '"d","e"]}', "stop"),
        ('{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
         "messages.0.content"),
        ('{"model": "m", "messages": [{"role": "user", "content": "x"}], "babelgate": {"x": 1}}',
         "babelgate.x"),
    ],
)  # fmt: skip
def test_invalid_requests_are_400_with_param(client: TestClient, body: str, param: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    r = client.post("/v1/chat/completions", content=body, headers=headers)
    assert r.status_code == 400, r.text
    e = error(r)
    assert e["type"] == "invalid_request_error"
    if param is None:
        assert e["code"] == "invalid_json"
    else:
        assert e["param"].startswith(param), e


def test_admin_auth_before_readiness(client: TestClient) -> None:
    assert client.get("/admin/thresholds").status_code == 401
    assert client.get("/admin/thresholds", headers={"Authorization": "Token x"}).status_code == 401
    r = client.get("/admin/thresholds", headers={"Authorization": "Bearer bad"})
    assert r.status_code == 403 and error(r)["code"] == "invalid_admin_token"
    r = client.get("/admin/thresholds", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 503


def test_admin_closed_without_token() -> None:
    app = create_app(ServeSettings(), ServerMetrics(CollectorRegistry()))
    r = TestClient(app).get("/admin/audit", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and error(r)["code"] == "admin_disabled"


def test_unknown_route_and_method(client: TestClient) -> None:
    assert error(client.get("/v1/nothing"))["type"] == "not_found_error"
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and error(r)["message"]


def test_token_identity_is_short_and_stable() -> None:
    assert token_identity(ADMIN) == token_identity(ADMIN)
    assert token_identity(ADMIN) != token_identity(KEY)
    assert ADMIN not in token_identity(ADMIN) and len(token_identity(ADMIN)) == 18
