"""The admin surface: constant-time token checks, tokens never logged or stored, the admin API
out of the public OpenAPI document unless enabled, its own listener (``--admin-port``), and
warnings for what the bind addresses expose. Real app over HTTP (``live``).
"""

from __future__ import annotations

import hmac
import logging

import pytest
from live import ADMIN_TOKEN, API_KEY, MODEL, LiveServer, ScoringEngine, guarded_app
from pydantic import SecretStr, ValidationError

from babelgate.server.app import auth
from babelgate.server.app.listeners import exposure_warnings
from babelgate.server.engine.types import TEST_FAULTS_ENV
from babelgate.server.settings import ServeSettings

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 4}


def test_tokens_are_compared_as_digests_of_one_length(monkeypatch) -> None:
    """``hmac.compare_digest`` of two SHA-256 digests: the time taken does not depend on where
    a guess first differs, nor on its length."""
    compared: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    secret = SecretStr(ADMIN_TOKEN)
    assert auth.tokens_match(ADMIN_TOKEN, secret)
    for guess in ("", "f", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ADMIN_TOKEN.upper(), "x" * 4096):
        assert not auth.tokens_match(guess, secret)
    assert set(compared) == {(32, 32)}


def test_tokens_never_reach_the_log_the_store_or_a_response(tmp_path, caplog, monkeypatch) -> None:
    wrong = ADMIN_TOKEN + "-wrong"
    app = guarded_app(ScoringEngine(), tmp_path, api_key=API_KEY, admin_token=ADMIN_TOKEN)
    texts: list[str] = []
    live = LiveServer(app)  # configures uvicorn's loggers; then every record, at every level:
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.DEBUG)
    with live as server:
        with server.client() as http, server.client(ADMIN_TOKEN) as admin:
            texts += [http.post("/v1/chat/completions", json=CHAT).text,
                      http.post("/v1/chat/completions", content=b"{").text,
                      admin.put("/admin/thresholds/de", json={"value": 0.5}).text,
                      admin.post("/admin/thresholds/de/recalibrate",
                                 json={"harmful": ["a b"], "harmless": ["c d"]}).text,
                      admin.delete("/admin/thresholds/de").text,
                      admin.get("/admin/audit").text]  # fmt: skip
        for token in (wrong, API_KEY):
            with server.client(token) as other:
                response = other.get("/admin/thresholds")
                texts += [response.text, str(response.headers)]
        with server.client(wrong) as other:
            texts.append(other.post("/v1/chat/completions", json=CHAT).text)
    texts += [caplog.text, repr(app.state.service.settings)]
    texts.append(app.state.service.settings.model_dump_json())
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert '"operation":"recalibrate"' in texts[5].replace(" ", "")  # the audit was written
    assert '"PUT /admin/thresholds/de HTTP/1.1" 200' in caplog.text  # and the access log
    for token in (ADMIN_TOKEN, API_KEY, wrong):
        assert not any(token in text for text in texts), token
        assert token.encode() not in stored, token


def paths(document: dict) -> set[str]:
    return set(document["paths"])


def test_admin_routes_are_in_the_public_document_only_when_enabled(tmp_path) -> None:
    for token, listed in ((None, False), (ADMIN_TOKEN, True)):
        app = guarded_app(ScoringEngine(), tmp_path / str(listed), admin_token=token)
        with LiveServer(app) as server, server.client(None) as http:
            admin_paths = {p for p in paths(http.get("/openapi.json").json()) if "/admin" in p}
            assert bool(admin_paths) == listed, admin_paths
            # Not listed, still there, saying how to enable it:
            assert http.get("/admin/thresholds", headers={"Authorization": "Bearer x"}).json()[
                "error"
            ]["code"] == ("admin_disabled" if token is None else "invalid_admin_token")


def test_the_admin_api_on_its_own_listener(tmp_path) -> None:
    app = guarded_app(ScoringEngine(), tmp_path, admin_token=ADMIN_TOKEN, admin_port=9)
    with LiveServer(app) as server:
        assert server.admin_url != server.url
        with server.client(ADMIN_TOKEN) as public:
            assert public.get("/admin/thresholds").status_code == 404
            assert not any("/admin" in p for p in paths(public.get("/openapi.json").json()))
            assert public.post("/v1/chat/completions", json=CHAT).status_code == 200
        with server.client(ADMIN_TOKEN, server.admin_url) as admin:
            assert admin.get("/admin/thresholds").status_code == 200
            assert admin.put("/admin/thresholds/de", json={"value": 0.25}).status_code == 200
            assert all(p.startswith("/admin/") for p in paths(admin.get("/openapi.json").json()))
            assert admin.post("/v1/chat/completions", json=CHAT).status_code == 404
        with server.client(None, server.admin_url) as anonymous:
            assert anonymous.get("/admin/thresholds").status_code == 401
        # The threshold set on the admin listener is the one the API's requests carry.
        with server.client() as public:
            body = {**CHAT, "babelgate": {"language": "de"}}
            assert (
                public.post("/v1/chat/completions", json=body).json()["babelgate"]["threshold"]
                == 0.25
            )


def test_admin_port_must_differ_from_the_api_port() -> None:
    with pytest.raises(ValidationError, match="port of its own"):
        ServeSettings(port=8000, admin_port=8000)


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({}, ["without --api-key"]),
        ({"api_key": "k"}, []),
        ({"api_key": "k", "admin_token": "t"}, ["admin API is served on every interface"]),
        ({"api_key": "k", "admin_token": "t", "admin_port": 8001}, []),
        ({"api_key": "k", "admin_port": 8001, "admin_host": "0.0.0.0"}, ["admin listener"]),
        ({"host": "127.0.0.1", "admin_token": "t"}, []),
    ],
)
def test_exposure_warnings(settings, warned) -> None:
    warnings = exposure_warnings(ServeSettings(**settings))
    assert len(warnings) == len(warned)
    for warning, words in zip(warnings, warned, strict=True):
        assert words in warning


@pytest.mark.parametrize("enabled", [False, True])
def test_the_fault_switch_exists_only_when_the_environment_allows_it(
    tmp_path, monkeypatch, enabled
) -> None:
    """``PUT /admin/faults/gate-failure`` (test-only): absent (404) unless
    ``BABELGATE_TEST_FAULTS=1``, never in the OpenAPI document, behind the admin token, and it
    reaches the worker call."""
    if enabled:
        monkeypatch.setenv(TEST_FAULTS_ENV, "1")
    engine = ScoringEngine()
    app = guarded_app(engine, tmp_path, admin_token=ADMIN_TOKEN)
    with LiveServer(app) as server, server.client(ADMIN_TOKEN) as admin:
        answer = admin.put("/admin/faults/gate-failure", json={"on": True})
        assert answer.status_code == (200 if enabled else 404), answer.text
        assert engine.worker.gate_failure == ([True] if enabled else [])
        assert not any("faults" in p for p in paths(admin.get("/openapi.json").json()))
        with server.client(None) as anonymous:
            denied = anonymous.put("/admin/faults/gate-failure", json={"on": False})
            assert denied.status_code == (401 if enabled else 404)


def test_the_engine_state_endpoint_reports_what_the_worker_holds(tmp_path) -> None:
    app = guarded_app(ScoringEngine(), tmp_path, admin_token=ADMIN_TOKEN)
    with LiveServer(app) as server, server.client(ADMIN_TOKEN) as admin:
        state = admin.get("/admin/engine").json()
    assert state == {
        "worker": {"installed": True, "active": 0, "finished_unfetched": 0, "slots_in_use": 0},
        "engine_unfinished_requests": 0,
    }
