"""``kill -9`` of a real ``babelgate serve``'s parts (embedded SmolLM2), as a crash would do it.

- **The engine core, with requests in flight**: every in-flight request fails within seconds
  with a 503 in OpenAI's schema (``engine_dead``: in the body, or in-band for a stream whose
  headers were sent), ``/health`` says 503, and the server exits with status 1 so that its
  supervisor restarts it (``deploy/babelgate.service``: ``Restart=on-failure``). Before the fix
  it answered 503 for ever and never exited.
- **The API server, during 50 concurrent admin PUTs**: after a restart on the same state,
  every acknowledged write is there, each language's threshold is its last audited write (none
  half-written), and SQLite's integrity check passes.
- The same module first shows an injected gate failure under ``--gate-failure open``: served,
  counted (the closed case is in ``test_live_faults``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live import wait_for
from served import ADMIN_TOKEN, Serve, chat_body, fault_server, gate_failing

from babelgate.gate.hf.embedded import SMOLLM2
from babelgate.server.app import FAILED

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

IN_FLIGHT = 6  # half streamed, half not
FAIL_WITHIN_S = 10
EXIT_WITHIN_S = 30
PUTS = 50
KILL_AFTER_ACKS = 10
LANGUAGES = ("de", "fr", "es", "it", "nl", "pl", "ru", "ja", "th", "sw")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Serve]:
    with fault_server(tmp_path_factory.mktemp("kill"), "open") as serve:
        yield serve


def test_an_injected_gate_failure_follows_fail_open(server) -> None:
    with gate_failing(server):
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body("Hi"), timeout=120)
    body = answer.json()
    assert body["babelgate"]["gate_failure"] and body["babelgate"]["gate_score"] is None, body
    assert body["choices"][0]["finish_reason"] == "length", body  # served: 16 tokens
    assert server.metric("babelgate_gate_failures_total", mode="open") == 1


async def _in_flight_request(url: str, stream: bool) -> tuple[int, str, float]:
    """Status, the error code the client was given (in the body or in-band) and when."""
    body = chat_body("Write a long story about a lighthouse.", stream=stream, max_tokens=400)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        if not stream:
            answer = await client.post("/v1/chat/completions", json=body)
            return answer.status_code, answer.json()["error"]["code"], time.monotonic()
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:  # failed before its headers went out
                await response.aread()
                return response.status_code, response.json()["error"]["code"], time.monotonic()
            error = [line async for line in response.aiter_lines() if '"error"' in line]
            assert len(error) == 1, "a stream cut by the engine's death ends with one error event"
            code = json.loads(error[0].removeprefix("data: "))["error"]["code"]
            return 503 if code == "engine_dead" else 200, code, time.monotonic()


async def _kill_core_under_load(server: Serve) -> tuple[list[tuple[int, str, float]], float]:
    tasks = [asyncio.create_task(_in_flight_request(server.url, i % 2 == 0))
             for i in range(IN_FLIGHT)]  # fmt: skip

    def generating() -> bool:
        return server.metric("vllm:num_requests_running") >= 1

    await asyncio.to_thread(wait_for, generating, "requests generating", 120)
    killed_at = time.monotonic()
    server.engine_core().send_signal(signal.SIGKILL)
    return await asyncio.gather(*tasks), killed_at


def test_kill_9_of_the_engine_core_fails_requests_and_exits_1(server) -> None:
    results, killed_at = asyncio.run(_kill_core_under_load(server))
    for status, code, at in results:
        assert (status, code) == (503, "engine_dead"), results
        assert at - killed_at < FAIL_WITHIN_S, results
    assert _health_until_exit(server) <= {503}  # never "ok" again (gone, or 503)
    assert server.proc.wait(EXIT_WITHIN_S) == FAILED, server.tail()
    failed_after = max(at for _, _, at in results) - killed_at
    print(f"kill -9 engine core: {len(results)} in flight answered 503 engine_dead within "
          f"{failed_after:.2f} s; server exited {FAILED} {time.monotonic() - killed_at:.1f} s "
          "after the kill")  # fmt: skip
    assert "babelgate serve stopped: the vLLM engine died" in server.tail()


def _health_until_exit(server: Serve) -> set[int]:
    """The ``/health`` statuses answered until the server exits (bounded)."""
    seen: set[int] = set()
    deadline = time.monotonic() + EXIT_WITHIN_S
    while server.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            seen.add(httpx.get(f"{server.url}/health", timeout=5).status_code)
        time.sleep(0.1)
    return seen


async def _puts_then_kill(server: Serve) -> dict[int, tuple[str, float]]:
    """50 concurrent PUTs (language i % 10 to value 0.01 * i + 0.5); SIGKILL to the server
    once ``KILL_AFTER_ACKS`` are acknowledged. The acknowledged ones by index."""
    acknowledged: dict[int, tuple[str, float]] = {}

    async def put(client: httpx.AsyncClient, i: int) -> None:
        lang, value = LANGUAGES[i % len(LANGUAGES)], round(0.01 * i + 0.5, 6)
        try:
            answer = await client.put(f"/admin/thresholds/{lang}", json={"value": value})
        except httpx.TransportError:
            return
        if answer.status_code == 200:
            acknowledged[i] = (lang, value)
            if len(acknowledged) == KILL_AFTER_ACKS:
                server.proc.send_signal(signal.SIGKILL)

    token = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=token) as client:
        await asyncio.gather(*(put(client, i) for i in range(PUTS)))
    return acknowledged


def test_kill_9_during_50_admin_puts_loses_no_acknowledged_write(tmp_path: Path) -> None:
    first = Serve(tmp_path, "--model", SMOLLM2.id, "--admin-token", ADMIN_TOKEN)
    try:
        first.wait_phase("ok")
        acknowledged = asyncio.run(_puts_then_kill(first))
        assert first.proc.wait(EXIT_WITHIN_S) == -signal.SIGKILL
    finally:
        first.kill()
    assert len(acknowledged) >= KILL_AFTER_ACKS
    stores = list((tmp_path / "state").rglob("thresholds-*.sqlite3"))
    assert len(stores) == 1, stores
    with sqlite3.connect(stores[0]) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    second = Serve(tmp_path, "--model", SMOLLM2.id, "--admin-token", ADMIN_TOKEN)
    try:
        second.wait_phase("ok")
        with second.admin() as admin:
            audit = admin.get("/admin/audit", params={"limit": 1000}).json()["entries"]
            views = {v["language"]: v for v in admin.get("/admin/thresholds").json()["thresholds"]}
    finally:
        second.kill()
    written = [(e["language"], e["new_value"]) for e in audit if e["operation"] == "set"]
    missing = [w for w in acknowledged.values() if w not in written]
    assert not missing, f"acknowledged but lost: {missing}"
    print(f"kill -9 during {PUTS} PUTs: {len(acknowledged)} acknowledged, {len(written)} "
          f"committed, 0 lost")  # fmt: skip
    for lang in LANGUAGES:  # the audit is newest first: a language's threshold is its last write
        last = next((value for language, value in written if language == lang), None)
        if last is not None:
            assert views[lang]["value"] == last and views[lang]["origin"] == "override"
