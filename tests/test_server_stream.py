"""Chat completions through the real FastAPI app on a fake engine: streamed chunks, the
``[DONE]`` terminator, the verdict in chunks and headers, refusals and a failed gate.

No vLLM and no model. ``FakeEngine`` satisfies ``server.app.service.Engine``: it streams canned
DELTA outputs and reports the verdict the worker would (the worker's own ``GuardRecord`` turns
a score and the request's guard parameters into it). ``sampling_params`` is replaced because the
real one builds vLLM objects (importing vLLM takes seconds) that the fake engine never reads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from babelgate.gate.estimator import ThresholdRecord
from babelgate.server.admin_store import ThresholdStore
from babelgate.server.app import chat, create_app, generation
from babelgate.server.app.generation import ChatRun
from babelgate.server.app.outcome import decide_outcome, request_verdict
from babelgate.server.app.service import Engine
from babelgate.server.engine.runtime import GuardRecord
from babelgate.server.engine.types import GuardParams, Verdict
from babelgate.server.langid import Detection
from babelgate.server.metrics import ServerMetrics
from babelgate.server.plan import plan_request
from babelgate.server.refusal_templates import refusal_text
from babelgate.server.settings import ServeSettings

PIECES = ("Hal", "lo", " Welt")
MODEL = "tiny"


class FakeTokenizer:
    """One token per character: enough for the chat template, lengths and refusal counts."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return [ord(c) % 97 for m in messages for c in m["content"]] + [1]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


class FakeEngine:
    """Streams ``PIECES`` per request; the verdict comes with every output. ``score=None``
    makes the worker report no score, ``verdicts=False`` report no verdict at all; a list gives
    one value per engine request, in the order they are made (choice 0, 1, ...). Like
    ``GuardedEngine``, it releases a guard id in the worker when its request reaches its last
    output, and on ``verdict(id, release=True)``; ``released`` lists the ids in that order."""

    engine = None
    dead = False

    def __init__(
        self,
        score: float | list[float | None] | None,
        verdicts: bool | list[bool] = True,
    ) -> None:
        self.tokenizer = FakeTokenizer()
        self.scores = score if isinstance(score, list) else None
        self.score = score
        self.verdicts = verdicts
        self.guards: list[GuardParams] = []
        self.aborted: list[str] = []
        self.released: list[str] = []

    def _verdict(self, guard: GuardParams, prompt: Sequence[int]) -> Verdict | None:
        i = len(self.guards) - 1
        verdicts = self.verdicts[i] if isinstance(self.verdicts, list) else self.verdicts
        score = self.scores[i] if self.scores is not None else self.score
        if not verdicts:
            return None
        rec = GuardRecord(guard.id, guard.language, guard.policy, guard.threshold,
                          guard.threshold_source)  # fmt: skip
        if score is not None and guard.policy != "none":
            rec.score = score
            rec.decision = "harmful" if score >= guard.threshold else "harmless"
        rec.positions = len(prompt) if rec.action in ("steer", "ablate") else 0
        return rec.verdict()

    async def generate(
        self, prompt: Sequence[int], sampling_params: Any, guard: GuardParams, request_id: str
    ) -> AsyncIterator[tuple[Any, Verdict | None]]:
        self.guards.append(guard)
        verdict = self._verdict(guard, prompt)
        for i, text in enumerate(PIECES):
            last = i == len(PIECES) - 1
            out = SimpleNamespace(text=text, token_ids=[i], finish_reason="stop" if last else None)
            if last:
                self.released.append(guard.id)
            yield SimpleNamespace(outputs=[out], finished=last), verdict

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def verdict(self, guard_id: str, *, release: bool = False) -> Verdict | None:
        if release:
            self.released.append(guard_id)
        return None

    async def gate_scores(self, prompts: Sequence[str], language: str) -> list[float]:
        raise AssertionError("chat completions never call gate_scores")

    def shutdown(self) -> None:
        pass


class StubGate:
    """The gate members ``GuardrailService.plan`` reads: thresholds, zero-shot, weak families."""

    zero_shot_threshold = 0.0

    def threshold(self, language: str) -> ThresholdRecord:
        return ThresholdRecord(language, 0.5, "recalibrated", 8, 4, 4, "2024-01-01T00:00:00Z")

    def weak_families(self, language: str) -> list[str]:
        return []


def make_client(tmp_path, monkeypatch, engine: Engine, **settings) -> TestClient:
    monkeypatch.setattr(chat, "sampling_params", lambda body, max_tokens: [None] * body.n)
    app = create_app(ServeSettings(**settings), ServerMetrics(CollectorRegistry()))
    svc = app.state.service
    svc.engine, svc.tokenizer, svc.max_model_len = engine, engine.tokenizer, 256
    svc.served_names, svc._gate = (MODEL,), StubGate()
    svc.store = ThresholdStore(tmp_path, "abc")
    return TestClient(app)  # not entered: the lifespan (which starts a real engine) never runs


def post(client: TestClient, **body: Any):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hallo"}],
            "babelgate": {"language": "de"}, **body}  # fmt: skip
    return client.post("/v1/chat/completions", json=body)


def events(response) -> list[Any]:
    """The SSE ``data:`` payloads, decoded (``[DONE]`` kept as the string)."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "", "every event ends with a blank line"
    out = []
    for block in blocks[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def requests_counted(client: TestClient, *labels: str) -> float:
    svc = client.app.state.service
    return svc.metrics.requests.labels(*labels)._value.get()


def test_stream_sends_chunks_verdict_usage_and_done(tmp_path, monkeypatch):
    engine = FakeEngine(score=-1.0)  # below the 0.5 threshold: harmless, ablated
    client = make_client(tmp_path, monkeypatch, engine, action="steer")
    r = post(client, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["x-babelgate-decision"] == "harmless"
    assert r.headers["x-babelgate-action"] == "ablate"
    assert r.headers["x-babelgate-intervened"] == "true"
    assert r.headers["x-babelgate-language"] == "de"
    assert r.headers["cache-control"] == "no-cache"
    got = events(r)
    assert got[-1] == "[DONE]" and got.count("[DONE]") == 1
    chunks, usage = got[:-2], got[-2]
    request_id = r.headers["x-request-id"]
    assert all(c["id"] == request_id and c["object"] == "chat.completion.chunk" for c in got[:-1])
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == list(PIECES)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "role" not in chunks[1]["choices"][0]["delta"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    guard = chunks[0]["babelgate"]
    assert (guard["decision"], guard["action"], guard["gate_score"]) == ("harmless", "ablate", -1.0)
    assert all("babelgate" not in c for c in chunks[1:])
    assert usage["choices"] == [] and usage["babelgate"] == guard
    assert usage["usage"]["completion_tokens"] == len(PIECES)
    assert [g.policy for g in engine.guards] == ["routing"]
    assert engine.guards[0].threshold == 0.5 and engine.guards[0].language == "de"
    assert engine.aborted == []  # ran to the end: nothing to abort
    assert requests_counted(client, "de", "harmless", "routing", "ablate") == 1.0


def test_stream_of_two_choices_interleaves_both_and_ends_once(tmp_path, monkeypatch):
    client = make_client(tmp_path, monkeypatch, FakeEngine(score=2.0), action="steer")
    r = post(client, stream=True, n=2)
    assert r.headers["x-babelgate-action"] == "steer"
    got = events(r)
    assert got[-1] == "[DONE]" and got.count("[DONE]") == 1
    for index in (0, 1):
        mine = [c for c in got[:-1] if c["choices"][0]["index"] == index]
        assert "".join(c["choices"][0]["delta"]["content"] for c in mine) == "".join(PIECES)
        assert mine[0]["choices"][0]["delta"]["role"] == "assistant" and "babelgate" in mine[0]
        assert mine[-1]["choices"][0]["finish_reason"] == "stop"


def test_harmful_under_refuse_streams_the_templated_refusal(tmp_path, monkeypatch):
    engine = FakeEngine(score=2.0)
    client = make_client(tmp_path, monkeypatch, engine, action="refuse")
    r = post(client, stream=True)
    assert r.headers["x-babelgate-action"] == "refuse"
    assert r.headers["x-babelgate-decision"] == "harmful"
    got = events(r)
    assert got[-1] == "[DONE]" and len(got) == 2
    choice = got[0]["choices"][0]
    assert choice["delta"] == {"content": refusal_text("de"), "role": "assistant"}
    assert choice["finish_reason"] == "content_filter"
    assert engine.aborted == [f"{r.headers['x-request-id']}-0"]  # generation was stopped


@pytest.mark.parametrize("verdicts", [True, False])  # a verdict without a score, or none
def test_failed_gate_fails_closed_with_a_refusal(tmp_path, monkeypatch, verdicts):
    engine = FakeEngine(score=None, verdicts=verdicts)
    client = make_client(tmp_path, monkeypatch, engine, gate_failure="closed")
    r = post(client, stream=True)
    assert (r.headers["x-babelgate-action"], r.headers["x-babelgate-decision"]) == (
        "refuse", "none"
    )
    got = events(r)
    assert got[0]["choices"][0]["delta"]["content"] == refusal_text("de")
    assert got[0]["babelgate"]["gate_failure"] is True
    assert got[-1] == "[DONE]"
    assert engine.aborted == [f"{r.headers['x-request-id']}-0"]
    svc = client.app.state.service
    assert svc.metrics.gate_failures.labels("closed")._value.get() == 1.0
    assert requests_counted(client, "de", "error", "routing", "refuse") == 1.0


def test_failed_gate_fails_open_and_generation_goes_on(tmp_path, monkeypatch):
    engine = FakeEngine(score=None)
    client = make_client(tmp_path, monkeypatch, engine, gate_failure="open")
    r = post(client, stream=True)
    assert r.headers["x-babelgate-action"] == "none"
    got = events(r)
    assert "".join(c["choices"][0]["delta"]["content"] for c in got[:-1]) == "".join(PIECES)
    assert got[0]["babelgate"]["gate_failure"] is True and engine.aborted == []
    assert client.app.state.service.metrics.gate_failures.labels("open")._value.get() == 1.0


def test_whole_response_carries_the_same_outcome(tmp_path, monkeypatch):
    client = make_client(tmp_path, monkeypatch, FakeEngine(score=2.0), action="flag")
    r = post(client)
    assert r.status_code == 200 and r.headers["x-babelgate-action"] == "flag"
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "".join(PIECES)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["babelgate"]["policy"] == "shadow" and body["babelgate"]["intervened"] is False
    assert requests_counted(client, "de", "harmful", "shadow", "flag") == 1.0


def gate_scores_observed(client: TestClient, language: str) -> float:
    """How many gate scores the histogram observed for ``language``."""
    samples = client.app.state.service.metrics.gate_score.collect()[0].samples
    return next(s.value for s in samples
                if s.name.endswith("_count") and s.labels == {"language": language})  # fmt: skip


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("engine", "settings"),
    [
        (lambda: FakeEngine(score=-1.0), {"action": "steer"}),  # runs to its end
        (lambda: FakeEngine(score=2.0), {"action": "refuse"}),  # refused: aborted
        (lambda: FakeEngine(score=None), {"gate_failure": "closed"}),  # failed closed: aborted
        (lambda: FakeEngine(score=[2.0, -1.0], verdicts=[True, False]), {}),  # one has no verdict
    ],
)  # fmt: skip
def test_every_request_path_releases_every_guard_id(tmp_path, monkeypatch, engine, settings,
                                                    stream):  # fmt: skip
    fake = engine()
    client = make_client(tmp_path, monkeypatch, fake, **settings)
    n = 2 if isinstance(fake.scores, list) else 1
    r = post(client, stream=stream, n=n)
    assert r.status_code == 200
    ids = [f"{r.headers['x-request-id']}-{i}" for i in range(n)]
    assert [g.id for g in fake.guards] == ids
    assert sorted(set(fake.released)) == ids  # by the last output, or by close after the abort
    assert set(fake.aborted) <= set(fake.released)


def test_a_client_gone_mid_generation_releases_its_guard_ids(monkeypatch):
    """What both disconnect paths (the streaming response's cleanup, the whole response's
    cancelled task) call: ``ChatRun.close`` before the choices finished."""
    engine = FakeEngine(score=-1.0)

    async def scenario() -> ChatRun:
        plan = plan_request(Detection("de", "override", 1.0), StubGate().threshold("de"), "steer",
                            policy="routing", unprotected_action="flag",
                            zero_shot_threshold=0.0)  # fmt: skip
        run = ChatRun(engine, plan, [1, 2, 3], [None, None], "chatcmpl-x", 0.0)
        run.apply(decide_outcome(plan, request_verdict(await run.open()), "closed"))
        pieces = run.pieces()
        await anext(pieces)  # the client read one piece, then went away
        run.close()
        await asyncio.gather(*generation._CLEANUPS)
        return run

    run = asyncio.run(scenario())
    assert not run.finished
    assert engine.aborted == run.ids
    assert engine.released == run.ids


def test_choices_that_disagree_share_the_harmful_verdict(tmp_path, monkeypatch):
    """Choice 0 scores below the threshold, choice 1 above: one outcome (refuse) for both,
    and the verdict reported is the harmful one, whichever choice came first."""
    engine = FakeEngine(score=[-1.0, 2.0])
    client = make_client(tmp_path, monkeypatch, engine, action="refuse")
    r = post(client, n=2)
    assert r.headers["x-babelgate-decision"] == "harmful"
    assert r.headers["x-babelgate-action"] == "refuse"
    body = r.json()
    assert [c["message"]["content"] for c in body["choices"]] == [refusal_text("de")] * 2
    assert [c["finish_reason"] for c in body["choices"]] == ["content_filter"] * 2
    assert body["babelgate"]["gate_score"] == 2.0
    assert sorted(engine.aborted) == [f"{r.headers['x-request-id']}-{i}" for i in range(2)]


def test_a_choice_without_a_verdict_fails_the_completion_closed(tmp_path, monkeypatch):
    engine = FakeEngine(score=[-1.0, -1.0], verdicts=[True, False])
    client = make_client(tmp_path, monkeypatch, engine, gate_failure="closed")
    r = post(client, n=2)
    body = r.json()
    assert body["babelgate"]["gate_failure"] is True and body["babelgate"]["action"] == "refuse"
    assert [c["finish_reason"] for c in body["choices"]] == ["content_filter"] * 2


def test_n_choices_are_counted_as_one_request(tmp_path, monkeypatch):
    """Two choices, one completion: one request, one gate score and one gate failure counted."""
    client = make_client(tmp_path, monkeypatch, FakeEngine(score=[2.0, 1.0]), action="steer")
    r = post(client, n=2)
    assert requests_counted(client, "de", "harmful", "routing", "steer") == 1.0
    assert gate_scores_observed(client, "de") == 1.0
    assert r.json()["babelgate"]["gate_score"] == 2.0
    failing = FakeEngine(score=[None, None])
    client = make_client(tmp_path, monkeypatch, failing, gate_failure="open")
    post(client, n=2)
    assert client.app.state.service.metrics.gate_failures.labels("open")._value.get() == 1.0
    assert requests_counted(client, "de", "error", "routing", "none") == 1.0


@pytest.mark.parametrize("stream", [True, False])
def test_failed_gate_under_flag_fails_closed_by_flagging(tmp_path, monkeypatch, stream):
    """Fail-closed treats the request as harmful: under flag, a harmful request is served and
    marked, so a failed gate is too (no refusal, nothing aborted)."""
    engine = FakeEngine(score=None)
    client = make_client(tmp_path, monkeypatch, engine, action="flag", gate_failure="closed")
    r = post(client, stream=stream)
    assert r.headers["x-babelgate-action"] == "flag"
    assert r.headers["x-babelgate-policy"] == "shadow"
    if stream:
        got = events(r)
        text = "".join(c["choices"][0]["delta"]["content"] for c in got[:-1])
        guard = got[0]["babelgate"]
    else:
        text, guard = r.json()["choices"][0]["message"]["content"], r.json()["babelgate"]
    assert text == "".join(PIECES)
    assert guard["gate_failure"] is True and guard["decision"] is None
    assert engine.aborted == []
    assert client.app.state.service.metrics.gate_failures.labels("closed")._value.get() == 1.0
    assert requests_counted(client, "de", "error", "shadow", "flag") == 1.0
