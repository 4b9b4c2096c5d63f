"""Admission control over real HTTP: beyond ``--max-queue-depth`` requests in flight, a new chat
completion or moderation is answered 429 at once, with ``Retry-After`` and OpenAI's error body,
counted, and never reaches the engine; once the queue drains, requests are served again.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from live import MODEL, HeldEngine, LiveServer, assert_openai_error, guarded_app, wait_for
from pydantic import ValidationError

from babelgate.cli import serve
from babelgate.server.settings import ServeSettings

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 4}


def test_beyond_the_queue_depth_requests_get_429_with_retry_after(tmp_path) -> None:
    engine = HeldEngine()
    app = guarded_app(engine, tmp_path, max_queue_depth=2)
    rejected = app.state.service.metrics.rejected
    with LiveServer(app) as server, ThreadPoolExecutor(2) as pool, server.client() as http:
        held = [
            pool.submit(http.post, "/v1/chat/completions", json={**CHAT, "stream": stream})
            for stream in (False, True)
        ]
        wait_for(lambda: len(engine.guards) == 2, "two requests reaching the engine")
        full = http.post("/v1/chat/completions", json=CHAT)
        assert full.status_code == 429 and full.headers["retry-after"] == "1"
        error = assert_openai_error(full)
        assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full")
        moderation = http.post("/v1/moderations", json={"input": "Hallo", "model": MODEL})
        assert moderation.status_code == 429 and moderation.headers["retry-after"] == "1"
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**CHAT)
        assert http.get("/health").status_code == 200  # probes are never turned away
        assert len(engine.guards) == 2 and engine.scored == []  # nothing more reached it
        assert rejected.labels("/v1/chat/completions")._value.get() == 2
        assert rejected.labels("/v1/moderations")._value.get() == 1

        engine.go.set()
        assert [f.result().status_code for f in held] == [200, 200]
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_queue_depth_is_a_setting_a_flag_and_an_environment_variable(monkeypatch) -> None:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--max-queue-depth", "3"])
    assert serve.settings_from_args(args).max_queue_depth == 3
    monkeypatch.setenv("BABELGATE_MAX_QUEUE_DEPTH", "5")
    assert ServeSettings().max_queue_depth == 5
    monkeypatch.setenv("BABELGATE_MAX_QUEUE_DEPTH", "0")
    with pytest.raises(ValidationError):
        ServeSettings()
