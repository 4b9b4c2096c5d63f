"""A real ``babelgate serve`` on the embedded SmolLM2, under clients that vanish and a gate that
fails: nothing is leaked, nothing passes unjudged.

- **Disconnect bursts**: 100 clients at once that close the connection before the first byte,
  during the prefill of a long prompt, or after the first streamed chunks. Afterwards every
  engine request is gone (vLLM's own count), the server's in-flight gauge is back to 0 and the
  worker holds no guard record or slot (``GET /admin/engine``), and the server still answers.
- **Injected gate failure** (``BABELGATE_TEST_FAULTS=1``, ``PUT /admin/faults/gate-failure``):
  the gate's intercept is NaN in the worker, so every request of every batch scores NaN; each
  follows ``--gate-failure`` (here closed: refused) and is counted; switched off, requests are
  scored again.

The server runs with ``--max-num-seqs 8`` (a batch holds several requests) and eager (see
``served``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
from served import Serve, chat_body, fault_server, gate_failing, settled

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

BURST = 100
SEED = 17
LONG_PROMPT = "Tell me everything about the history of bridges and tunnels. " * 60  # ~700 tokens
FAILED_AT_ONCE = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Serve]:
    with fault_server(tmp_path_factory.mktemp("live"), "closed") as serve:
        yield serve


async def _close_before_first_byte(client: httpx.AsyncClient, rng: random.Random) -> str:
    """Send the request and hang up before anything can have come back."""
    try:
        await client.post("/v1/chat/completions", json=chat_body("Hello there", max_tokens=64),
                          timeout=rng.uniform(0.001, 0.05))  # fmt: skip
    except httpx.TimeoutException:
        return "closed"
    return "answered"


async def _close_mid_prefill(client: httpx.AsyncClient, rng: random.Random) -> str:
    """A ~700-token prompt, hung up on while it is queued or prefilling (no byte sent yet:
    streamed headers go out after the prefill)."""
    try:
        await client.post("/v1/chat/completions",
                          json=chat_body(LONG_PROMPT, stream=True, max_tokens=64),
                          timeout=rng.uniform(0.2, 2.0))  # fmt: skip
    except httpx.TimeoutException:
        return "closed"
    return "answered"


async def _close_mid_stream(client: httpx.AsyncClient, rng: random.Random) -> str:
    """Read the first streamed chunks, then hang up with the generation still running."""
    chunks = rng.randint(1, 3)
    body = chat_body("Write a long story about a lighthouse.", stream=True, max_tokens=200)
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content"' in line:
                chunks -= 1
                if chunks == 0:
                    return "closed"
    return "answered"


Client = Callable[[httpx.AsyncClient, random.Random], Awaitable[str]]


async def _burst(url: str, client_of: Client) -> list[str]:
    rng = random.Random(SEED)
    async with httpx.AsyncClient(base_url=url, timeout=300,
                                 limits=httpx.Limits(max_connections=BURST)) as client:  # fmt: skip
        return await asyncio.gather(
            *(client_of(client, random.Random(rng.random())) for _ in range(BURST))
        )


@pytest.mark.parametrize(
    "client_of",
    [_close_before_first_byte, _close_mid_prefill, _close_mid_stream],
    ids=["before-first-byte", "mid-prefill", "mid-stream"],
)
def test_a_burst_of_vanishing_clients_leaks_nothing(server, client_of) -> None:
    results = asyncio.run(_burst(server.url, client_of))
    closed = results.count("closed")
    assert closed >= BURST // 2, f"only {closed} of {BURST} clients closed early: {results}"
    assert settled(server) == {"in_flight": 0, "engine_unfinished": 0, "active": 0,
                               "finished_unfetched": 0, "slots_in_use": 0}  # fmt: skip
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body("Hi"), timeout=120)
    assert answer.status_code == 200 and answer.json()["babelgate"]["gate_score"] is not None


async def _concurrent_chats(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return await asyncio.gather(*(
            client.post("/v1/chat/completions", json=chat_body(f"Question {i}: what is a bridge?"))
            for i in range(n)
        ))  # fmt: skip


def test_an_injected_gate_failure_follows_fail_closed_for_every_request(server) -> None:
    before = server.metric("babelgate_gate_failures_total", mode="closed")
    with gate_failing(server):
        answers = asyncio.run(_concurrent_chats(server.url, FAILED_AT_ONCE))
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        guard = body["babelgate"]
        assert guard["gate_failure"] and guard["gate_score"] is None, guard
        assert body["choices"][0]["finish_reason"] == "content_filter", body  # refused
    counted = server.metric("babelgate_gate_failures_total", mode="closed") - before
    assert counted == FAILED_AT_ONCE
    # Off again: scored, and not refused for a failure.
    after = asyncio.run(_concurrent_chats(server.url, 2))
    for answer in after:
        guard = answer.json()["babelgate"]
        assert not guard["gate_failure"] and guard["gate_score"] is not None, guard
    assert settled(server)["finished_unfetched"] == 0
