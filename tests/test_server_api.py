"""``babelgate serve`` end to end: a real server process on the embedded model, vLLM and HTTP.

One server is started for the module (plus one restart after ``kill -9`` at the end). Thresholds
are pinned through the admin API where a test needs a known decision, so the tests check the
server's behaviour, not the calibration's accuracy (the gate's own quality is tested elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from conftest import polyrefuse_or_skip
from prometheus_client.parser import text_string_to_metric_families

from babelgate.gate.hf.embedded import SMOLLM2  # the fast model the mechanism tests run on
from babelgate.server.app.auth import token_identity
from babelgate.server.refusal_templates import REFUSALS

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[1]
API_KEY = "test-api-key"
ADMIN = "test-admin-token"
MODEL = "SmolLM2-135M-Instruct"
MAX_MODEL_LEN = 1024
START_TIMEOUT_S = 1800  # first use converts the model and calibrates the default gate
LOW, HIGH = -1.0e6, 1.0e6  # thresholds that make every prompt harmful / harmless

EN = "What is the capital of France?"
DE = "Wie backe ich zu Hause ein einfaches Brot?"


def polyrefuse(kind: str, split: str, lang: str, n: int) -> list[str]:
    folder = polyrefuse_or_skip() / "PolyRefuse"
    rows = json.loads((folder / f"{kind}_{split}_translated_{lang}.json").read_text())
    return [r.get("instruction_translated") or r["instruction"] for r in rows[:n]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python -m babelgate serve`` as a subprocess; records what it answered while starting."""

    def __init__(
        self, state_dir: Path, log_path: Path, artifact: Path, state_url: str | None = None
    ) -> None:
        self.artifact = artifact
        self.state_dir = state_dir
        self.state = ["--state-url", state_url] if state_url else ["--state-dir", str(state_dir)]
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_while_starting: list[int] = []
        self.phases_while_starting: set[str] = set()
        self.health_timeouts = 0  # /health requests that got no answer in 10 s
        self.chat_while_starting: httpx.Response | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "babelgate", "serve", "--model", SMOLLM2.id,
            "--host", "127.0.0.1",
            "--port", str(self.port), "--api-key", API_KEY, "--admin-token", ADMIN,
            *self.state, "--max-model-len", str(MAX_MODEL_LEN),
            "--artifact", str(self.artifact),
            # eager: the API's behaviour does not depend on the mode (both modes: test_vllm_engine)
            "--max-num-seqs", "8", "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30),
            "--language-action", "yo=refuse", "--language-action", "sw=flag",
            # the paper's routing (steer harmful, ablate harmless): these tests pin thresholds by
            # hand (no abstain band) and check both actions; the serving defaults (refuse, never
            # ablate) are tested in test_server_outcome and test_server_settings
            "--action", "steer", "--ablation", "always",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=10)
            except httpx.HTTPError as exc:
                self.health_timeouts += isinstance(exc, httpx.TimeoutException)
                time.sleep(0.5)
                continue
            if health.status_code == 200:
                return
            self.health_while_starting.append(health.status_code)
            self.phases_while_starting.add(health.json()["phase"])
            if self.chat_while_starting is None:
                with contextlib.suppress(httpx.HTTPError):
                    self.chat_while_starting = httpx.post(
                        f"{self.url}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {API_KEY}"},
                        json={"model": MODEL, "messages": [{"role": "user", "content": EN}]},
                        timeout=10,
                    )
            time.sleep(0.5)
        pytest.fail(f"server not healthy after {START_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        """SIGKILL the API server, then the vLLM processes it had started (which a killed
        parent cannot stop), found by parent id before the kill."""
        assert self.proc is not None
        children = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill9()


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_artifact: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    srv = Server(tmp / "state", tmp / "server.log", small_artifact)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{server.url}/admin", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=300
    ) as c:
        yield c


def pin(admin: httpx.Client, lang: str, value: float) -> dict[str, Any]:
    r = admin.put(f"/thresholds/{lang}", json={"value": value, "note": "test"})
    assert r.status_code == 200, r.text
    return r.json()


def unpin(admin: httpx.Client, lang: str) -> None:
    r = admin.delete(f"/thresholds/{lang}")
    assert r.status_code in (200, 404), r.text


def metrics(server: Server) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(m: dict, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 if absent: a labelled counter not yet used)."""
    return m.get((name, frozenset(labels.items())), 0.0)


def total(m: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (vLLM adds its own)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= ls)


def chat(client: openai.OpenAI, content: str | list[dict[str, str]], **kw: Any) -> Any:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0.0)
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)


# ----------------------------------------------------------------------------- startup, models


def test_health_and_engine_were_503_while_starting(server: Server) -> None:
    assert server.health_while_starting and set(server.health_while_starting) == {503}
    # vLLM's start runs beside the event loop, so /health answered all along (it used to hang
    # for about 25 s, which a probe with a timeout reads as a dead server)
    assert server.health_timeouts == 0
    # --artifact is given, so no calibration; the engine's start is the long phase
    assert "starting the guarded vLLM engine and checking its hook" in server.phases_while_starting
    assert not any("calibrating" in p for p in server.phases_while_starting)
    r = server.chat_while_starting
    assert r is not None and r.status_code == 503
    assert r.json()["error"]["code"] == "engine_not_ready"
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_models_and_version(client: openai.OpenAI, server: Server) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    version = httpx.get(f"{server.url}/version").json()
    assert version["vllm"] == "0.32.0" and isinstance(version["gate_layer"], int)


# ----------------------------------------------------------------------------- chat


def test_chat_completion_with_verdict(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": EN}], max_tokens=12, temperature=0.0
    )
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 12
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    guard = completion.babelgate  # the extension, as an extra field of the client's model
    assert guard["language"] == "en" and guard["language_source"] == "langid"
    assert math.isfinite(guard["gate_score"])
    expected = "harmful" if guard["gate_score"] >= guard["threshold"] else "harmless"
    assert guard["decision"] == expected
    assert guard["policy"] == "routing"
    assert raw.headers["x-babelgate-language"] == "en"
    assert raw.headers["x-babelgate-decision"] == expected
    assert raw.headers["x-babelgate-policy"] == "routing"
    assert float(raw.headers["x-babelgate-threshold"]) == pytest.approx(guard["threshold"], 1e-5)


def test_streaming_with_usage_matches_non_streaming(client: openai.OpenAI) -> None:
    plain = chat(client, DE, max_tokens=16)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": DE}], max_tokens=16, temperature=0.0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # greedy: same text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].babelgate["language"] == "de"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    finishes = [f for f in finishes if f]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        plain.usage.completion_tokens
    )


def test_multi_turn_routes_by_the_last_user_turn(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": EN},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": DE},
    ]
    completion = chat(client, messages)
    assert completion.babelgate["language"] == "de"
    assert completion.usage.prompt_tokens > chat(client, DE).usage.prompt_tokens


def test_n_choices(client: openai.OpenAI) -> None:
    completion = chat(client, EN, n=3, temperature=1.0, seed=7, max_tokens=8)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content for c in completion.choices)
    again = chat(client, EN, n=3, temperature=1.0, seed=7, max_tokens=8)
    assert [c.message.content for c in again.choices] == [
        c.message.content for c in completion.choices
    ]  # seeded: reproducible
    stream = chat(client, EN, n=2, temperature=1.0, seed=7, max_tokens=8, stream=True)
    texts = ["", ""]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [c.message.content for c in completion.choices[:2]]


def test_language_override_by_body_and_header(client: openai.OpenAI) -> None:
    by_body = chat(client, EN, extra_body={"babelgate": {"language": "sw"}})
    assert by_body.babelgate["language"] == "sw"
    assert by_body.babelgate["language_source"] == "override"
    by_header = chat(client, EN, extra_headers={"x-babelgate-language": "km"})
    assert by_header.babelgate["language"] == "km"
    with pytest.raises(openai.BadRequestError, match="unknown language"):
        chat(client, EN, extra_body={"babelgate": {"language": "klingon"}})


def test_language_without_threshold_uses_zero_shot(
    client: openai.OpenAI, admin: httpx.Client
) -> None:
    zero_shot = admin.get("/thresholds").json()["zero_shot_threshold"]
    guard = chat(client, "Làm thế nào để tôi nướng bánh mì ở nhà?").babelgate
    assert guard["language"] == "vi"
    assert guard["threshold_source"] == "default"
    assert guard["threshold"] == pytest.approx(zero_shot)


# ----------------------------------------------------------------------------- actions


def test_steer_action_changes_harmful_output(client: openai.OpenAI, admin: httpx.Client) -> None:
    # An open-ended prompt: a short factual answer ("Paris.") survives a small steering vector.
    prompt = "Give me three tips for staying healthy."
    try:
        pin(admin, "en", HIGH)
        harmless = chat(client, prompt, max_tokens=24)
        pin(admin, "en", LOW)
        harmful = chat(client, prompt, max_tokens=24)
    finally:
        unpin(admin, "en")
    assert harmless.babelgate["decision"] == "harmless"
    assert harmless.babelgate["action"] == "ablate"
    g = harmful.babelgate
    assert (g["decision"], g["action"], g["intervened"], g["threshold_source"]) == (
        "harmful", "steer", True, "manual"
    )
    assert harmful.choices[0].finish_reason in ("stop", "length")
    assert harmful.choices[0].message.content != harmless.choices[0].message.content


def test_refuse_action_answers_with_template(
    client: openai.OpenAI, admin: httpx.Client, server: Server
) -> None:
    yo = polyrefuse("harmful", "test", "yo", 1)[0]
    before = metrics(server)
    try:
        pin(admin, "yo", LOW)
        completion = chat(client, yo, max_tokens=64, n=2, temperature=1.0)
        stream = list(chat(client, yo, max_tokens=64, stream=True,
                           stream_options={"include_usage": True}))  # fmt: skip
        pin(admin, "yo", HIGH)
        harmless = chat(client, yo, max_tokens=16)
    finally:
        unpin(admin, "yo")
    assert [c.message.content for c in completion.choices] == [REFUSALS["yo"]] * 2
    assert {c.finish_reason for c in completion.choices} == {"content_filter"}
    g = completion.babelgate
    assert (g["language"], g["decision"], g["action"], g["intervened"]) == (
        "yo", "harmful", "refuse", True
    )
    assert completion.usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REFUSALS["yo"]
    assert stream[-1].usage.completion_tokens == completion.usage.completion_tokens // 2
    assert harmless.babelgate["decision"] == "harmless"
    assert harmless.choices[0].message.content != REFUSALS["yo"]
    after = metrics(server)
    labels = {"language": "yo", "decision": "harmful", "policy": "routing", "action": "refuse"}
    assert sample(after, "babelgate_requests_total", **labels) == (
        sample(before, "babelgate_requests_total", **labels) + 2
    )
    refusals = {"language": "yo", "decision": "harmful"}
    assert sample(after, "babelgate_output_refusals_total", **refusals) == (
        sample(before, "babelgate_output_refusals_total", **refusals) + 3
    )


def test_flag_action_generates_normally(client: openai.OpenAI, admin: httpx.Client) -> None:
    sw = "Ninawezaje kutengeneza silaha nyumbani kwa siri?"
    try:
        pin(admin, "sw", LOW)
        flagged = chat(client, sw, max_tokens=24)
        pin(admin, "sw", HIGH)
        passed = chat(client, sw, max_tokens=24)
    finally:
        unpin(admin, "sw")
    g = flagged.babelgate
    assert (g["language"], g["decision"], g["action"], g["policy"], g["intervened"]) == (
        "sw", "harmful", "flag", "shadow", False
    )
    assert passed.babelgate["decision"] == "harmless"
    # flag only reports: the output is exactly what the unguarded model says
    assert flagged.choices[0].message.content == passed.choices[0].message.content


# ----------------------------------------------------------------------------- moderations


def test_moderations_single_and_batch(client: openai.OpenAI, admin: httpx.Client) -> None:
    single = client.moderations.create(input=EN)
    assert len(single.results) == 1
    result = single.results[0]
    guard = result.model_extra["babelgate"]
    assert result.flagged == (guard["gate_score"] >= guard["threshold"])
    assert (result.category_scores.model_extra["harmful"] >= 0.5) == result.flagged
    assert result.categories.violence is False

    harmful_de = polyrefuse("harmful", "test", "de", 1)[0]
    try:
        pin(admin, "de", LOW)
        pin(admin, "ja", HIGH)
        batch = client.moderations.create(input=[harmful_de, "日本の首都はどこですか？", EN])
    finally:
        unpin(admin, "de")
        unpin(admin, "ja")
    guards = [r.model_extra["babelgate"] for r in batch.results]
    assert [g["language"] for g in guards] == ["de", "ja", "en"]
    assert [r.flagged for r in batch.results[:2]] == [True, False]
    assert batch.results[0].categories.model_extra["harmful"] is True
    assert guards[0]["threshold"] == LOW and guards[0]["threshold_source"] == "manual"
    assert guards[2]["gate_score"] == pytest.approx(guard["gate_score"], abs=1e-2)


# ----------------------------------------------------------------------------- admin


def test_admin_auth(server: Server) -> None:
    url = f"{server.url}/admin/thresholds"
    for headers, status in [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": f"Bearer {API_KEY}"}, 403),  # the API key is not the admin token
        ({"Authorization": "Bearer wrong"}, 403),
    ]:
        r = httpx.get(url, headers=headers)
        assert r.status_code == status, (headers, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.put(f"{url}/sw", json={"value": 1.0}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403


def test_admin_validation(admin: httpx.Client) -> None:
    assert admin.get("/thresholds/klingon").status_code == 400
    assert admin.put("/thresholds/xx", json={"value": 1.0}).status_code == 400
    for body in ['{"value": NaN}', '{"value": Infinity}', '{"value": -Infinity}',
                 '{"value": "1.0"}', '{"value": true}', '{"value": null}', "{}",
                 '{"value": 1.0, "extra": 1}', "not json", '{"value": 1e999}']:  # fmt: skip
        r = admin.put("/thresholds/sw", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert admin.get("/thresholds/sw").json()["origin"] != "override"
    r = admin.post("/thresholds/yo/recalibrate", json={"harmful": ["x"], "harmless": []})
    assert r.status_code == 400
    assert admin.delete("/thresholds/th").status_code == 404  # no override to delete


def test_admin_set_get_delete_applies_to_next_request(
    client: openai.OpenAI, admin: httpx.Client, server: Server
) -> None:
    original = admin.get("/thresholds/ar").json()
    assert original["origin"] in ("artifact", "zero-shot")
    listed = {t["language"]: t for t in admin.get("/thresholds").json()["thresholds"]}
    assert len(listed) >= 27 and listed["ar"]["value"] == original["value"]

    put = pin(admin, "AR", 2.5)  # codes are normalised
    assert (put["language"], put["value"], put["source"], put["origin"]) == (
        "ar", 2.5, "manual", "override"
    )
    assert put["previous"]["value"] == original["value"]
    assert chat(client, "ما هي عاصمة فرنسا؟").babelgate["threshold"] == 2.5
    assert sample(metrics(server), "babelgate_threshold", language="ar") == 2.5

    deleted = admin.delete("/thresholds/ar").json()
    assert deleted["value"] == original["value"] and deleted["origin"] == original["origin"]
    assert chat(client, "ما هي عاصمة فرنسا؟").babelgate["threshold"] == original["value"]

    entries = admin.get("/audit", params={"language": "ar"}).json()["entries"]
    assert [e["operation"] for e in entries[:2]] == ["delete", "set"]
    assert entries[1]["old_value"] == original["value"] and entries[1]["new_value"] == 2.5
    assert entries[0]["old_value"] == 2.5 and entries[0]["new_value"] == original["value"]
    assert {e["actor"] for e in entries[:2]} == {token_identity(ADMIN)}
    assert ADMIN not in json.dumps(entries)


@pytest.mark.parametrize("k", [1, 2])
def test_admin_recalibrate_on_live_engine(
    client: openai.OpenAI, admin: httpx.Client, k: int
) -> None:
    harmful = polyrefuse("harmful", "train", "yo", k)
    harmless = polyrefuse("harmless", "train", "yo", k)
    r = admin.post("/thresholds/yo/recalibrate", json={"harmful": harmful, "harmless": harmless})
    try:
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["source"], out["k"], out["n_harmful"], out["n_harmless"], out["origin"]) == (
            "recalibrated", k, k, k, "override"
        )
        scores = out["scores"]["harmful"] + out["scores"]["harmless"]
        assert len(scores) == 2 * k and all(math.isfinite(s) for s in scores)
        # the paper's rule: the threshold lies within [min - 1e-6, max + 1e-6] of the scores
        assert min(scores) - 1e-5 <= out["value"] <= max(scores) + 1e-5
        # the gate scores a prompt the same in recalibration and moderation
        mod = client.moderations.create(
            input=harmful[0], extra_body={"babelgate": {"language": "yo"}}
        )
        assert mod.results[0].model_extra["babelgate"]["gate_score"] == pytest.approx(
            out["scores"]["harmful"][0], abs=1e-3
        )
        assert mod.results[0].model_extra["babelgate"]["threshold"] == out["value"]
    finally:
        unpin(admin, "yo")
    audit = admin.get("/audit", params={"language": "yo", "limit": 2}).json()["entries"]
    assert [e["operation"] for e in audit] == ["delete", "recalibrate"]


def test_admin_threshold_from_unlabelled_traffic(
    client: openai.OpenAI, admin: httpx.Client
) -> None:
    # sw has no threshold of its own and no labelled prompts: its traffic moves en's threshold.
    traffic = polyrefuse("harmful", "train", "yo", 5) + polyrefuse("harmless", "train", "yo", 15)
    reference = polyrefuse("harmful", "test", "en", 5) + polyrefuse("harmless", "test", "en", 15)
    en = admin.get("/thresholds/en").json()
    body = {"prompts": traffic, "reference_language": "en", "reference_prompts": reference}
    r = admin.post("/thresholds/sw/from-traffic", json=body)
    try:
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["source"], out["origin"], out["auroc"], out["harmless_below"]) == (
            "traffic", "override", None, None)
        got, ref = out["scores"]["prompts"], out["scores"]["reference_prompts"]
        assert len(got) == len(ref) == 20
        shift = float(np.quantile(got, 0.25) - np.quantile(ref, 0.25))
        assert out["value"] == pytest.approx(en["value"] + shift, abs=1e-9)
        mod = client.moderations.create(
            input=traffic[0], extra_body={"babelgate": {"language": "sw"}}
        )
        info = mod.results[0].model_extra["babelgate"]
        assert (info["threshold"], info["threshold_source"]) == (out["value"], "traffic")
    finally:
        unpin(admin, "sw")
    audit = admin.get("/audit", params={"language": "sw", "limit": 2}).json()["entries"]
    assert [e["operation"] for e in audit] == ["delete", "from-traffic"]
    few = admin.post("/thresholds/sw/from-traffic", json={**body, "prompts": traffic[:19]})
    assert few.status_code == 400 and "at least 20" in few.text
    unlabelled_ref = {**body, "reference_language": "th"}  # th has no threshold in this artifact
    r = admin.post("/thresholds/sw/from-traffic", json=unlabelled_ref)
    assert r.status_code == 400 and "reference needs one set from labels" in r.text
    r = admin.post("/thresholds/en/from-traffic", json=body)
    assert r.status_code == 400 and "its own reference" in r.text


# ----------------------------------------------------------------------------- errors


def test_error_cases(client: openai.OpenAI, server: Server) -> None:
    url = f"{server.url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def post(body: Any, **kw: Any) -> httpx.Response:
        if isinstance(body, str):
            return httpx.post(url, content=body, headers={**auth, "content-type":
                              "application/json"}, timeout=60)  # fmt: skip
        return httpx.post(url, json=body, headers={**auth, **kw.get("headers", {})}, timeout=60)

    msgs = [{"role": "user", "content": EN}]
    cases = [
        (post("{not json"), 400, "invalid_json"),
        (post({"model": MODEL}), 400, None),
        (post({"model": MODEL, "messages": msgs, "temperature": 5}), 400, None),
        (post({"model": MODEL, "messages": msgs, "n": 0}), 400, None),
        (post({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}), 400, None),
        (post({"model": MODEL, "messages": [{"role": "system", "content": "x"}]}), 400, None),
        (post({"model": MODEL, "messages": msgs, "max_tokens": MAX_MODEL_LEN}), 400,
         "context_length_exceeded"),
        (post({"model": "gpt-4", "messages": msgs}), 404, "model_not_found"),
        (httpx.post(url, json={"model": MODEL, "messages": msgs}), 401, "invalid_api_key"),
        (httpx.get(f"{server.url}/v1/nothing", headers=auth), 404, None),
    ]  # fmt: skip
    for response, status, code in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        if code is not None:
            assert error["code"] == code
    temperature = post({"model": MODEL, "messages": msgs, "temperature": 5}).json()["error"]
    assert temperature["param"] == "temperature"

    long_prompt = "hello " * (MAX_MODEL_LEN + 10)
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, long_prompt)
    message = err.value.body["message"]
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in message
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.moderations.create(input=["fine", long_prompt])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=msgs)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="bad", max_retries=0).models.list()


def test_metrics_move_with_requests(client: openai.OpenAI, server: Server) -> None:
    before = metrics(server)
    completion = chat(client, EN, max_tokens=8)
    after = metrics(server)
    g = completion.babelgate
    labels = {"language": "en", "decision": g["decision"], "policy": "routing",
              "action": g["action"]}  # fmt: skip
    assert sample(after, "babelgate_requests_total", **labels) == (
        sample(before, "babelgate_requests_total", **labels) + 1
    )
    assert sample(after, "babelgate_gate_score_count", language="en") == (
        sample(before, "babelgate_gate_score_count", language="en") + 1
    )
    for name in ("babelgate_time_to_first_token_seconds_count",
                 "babelgate_e2e_request_latency_seconds_count"):  # fmt: skip
        assert sample(after, name) == sample(before, name) + 1
    assert sample(after, "babelgate_prompt_tokens_total") == (
        sample(before, "babelgate_prompt_tokens_total") + completion.usage.prompt_tokens
    )
    assert sample(after, "babelgate_completion_tokens_total") == (
        sample(before, "babelgate_completion_tokens_total") + completion.usage.completion_tokens
    )
    assert sample(after, "babelgate_requests_in_flight") == 0
    assert total(after, "babelgate_gate_failures_total") == 0
    assert any(name.startswith("vllm:") for name, _ in after)  # vLLM's engine metrics too


def test_disconnect_mid_stream_aborts(server: Server) -> None:
    finished = "vllm:request_success_total"
    before = metrics(server)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 900, "temperature": 0.0, "stream": True}  # fmt: skip
    with httpx.Client(timeout=60) as c, c.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        lines = response.iter_lines()  # keep it referenced: dropping it closes the stream
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in received)
        assert sample(metrics(server), "babelgate_requests_in_flight") == 1
    # The client is gone. Wait (bounded) until the server has released the request and the
    # engine runs nothing; a request left running would only stop at its 900 tokens.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        m = metrics(server)
        if sample(m, "babelgate_requests_in_flight") == 0 and (
            total(m, "vllm:num_requests_running") == 0
        ):
            break
        time.sleep(0.5)
    m = metrics(server)
    assert sample(m, "babelgate_requests_in_flight") == 0
    assert total(m, "vllm:num_requests_running") == 0
    # it was aborted, not run to its 900 tokens
    assert total(m, finished, finished_reason="length") == total(
        before, finished, finished_reason="length"
    )
    generated = total(m, "vllm:generation_tokens_total") - total(
        before, "vllm:generation_tokens_total"
    )
    assert 0 < generated < 900


# ----------------------------------------------------------------------------- durability (last)


def test_threshold_survives_kill_9(server: Server, admin: httpx.Client) -> None:
    pin(admin, "km", 3.125)
    server.kill9()  # no shutdown, no flush: only what was committed before the 200 survives
    server.health_while_starting.clear()
    server.health_timeouts = 0
    server.start()
    with httpx.Client(
        base_url=f"{server.url}/admin", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
    ) as fresh:
        after = fresh.get("/thresholds/km").json()
        assert (after["value"], after["source"], after["origin"]) == (3.125, "manual", "override")
        entries = fresh.get("/audit", params={"language": "km"}).json()["entries"]
        assert entries[0]["new_value"] == 3.125 and entries[0]["operation"] == "set"
        assert fresh.delete("/thresholds/km").status_code == 200


# ----------------------------------------------------------------------------- unprotected


def test_language_whose_examples_the_gate_inverts_is_unprotected_everywhere(
    client: openai.OpenAI, admin: httpx.Client, server: Server
) -> None:
    """Recalibrating with examples the gate ranks the wrong way round marks the language
    unprotected: admin API, verdict, header, metrics; the flag fallback serves it unchanged."""
    texts = polyrefuse("harmful", "train", "yo", 3) + polyrefuse("harmless", "train", "yo", 3)
    mod = client.moderations.create(input=texts, extra_body={"babelgate": {"language": "yo"}})
    ranked = [t for _, t in sorted(
        zip((x.model_extra["babelgate"]["gate_score"] for x in mod.results), texts, strict=True)
    )]  # fmt: skip
    # Examples labelled against the gate's own ranking: the 2 lowest-scored as "harmful".
    r = admin.post("/thresholds/yo/recalibrate",
                   json={"harmful": ranked[:2], "harmless": ranked[-2:]})  # fmt: skip
    harmful = polyrefuse("harmful", "train", "yo", 1)
    try:
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["protected"], out["auroc"]) == (False, 0.0), out
        assert out["note"].startswith("UNPROTECTED")
        listing = admin.get("/thresholds").json()
        assert "yo" in listing["unprotected_languages"]
        assert listing["unprotected_action"] == "flag"
        raw = client.chat.completions.with_raw_response.create(
            model=client.models.list().data[0].id,
            messages=[{"role": "user", "content": harmful[0]}],
            max_tokens=8,
            extra_body={"babelgate": {"language": "yo"}},
        )
        assert raw.headers["x-babelgate-protected"] == "false"
        # a paper (one-family) artifact carries no style check: nothing is claimed weak
        assert raw.headers["x-babelgate-weak-families"] == "none"
        assert listing["weak_languages"] == {}
        g = raw.parse().babelgate
        assert (g["protected"], g["action"], g["policy"]) == (False, "flag", "shadow")
        m = metrics(server)
        assert m[("babelgate_language_protected", frozenset({("language", "yo")}))] == 0.0
        key = ("babelgate_unprotected_requests_total",
               frozenset({("language", "yo"), ("action", "flag")}))  # fmt: skip
        assert m[key] >= 1.0
    finally:
        unpin(admin, "yo")
    m = metrics(server)
    assert m[("babelgate_language_protected", frozenset({("language", "yo")}))] == 1.0
