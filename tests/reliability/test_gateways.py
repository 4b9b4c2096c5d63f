"""babelgate as the guardrail of real gateways, LiteLLM proxy and Portkey's open-source gateway,
in front of a real upstream model.

Processes for the module, over real HTTP: ``babelgate serve`` (the guard: SmolLM2 and its
shipped gate, ``--api-key``), ``babelgate serve --policy none`` (the upstream model, unguarded),
``litellm --config deploy/litellm/config.yaml`` (the tested config: ``babelgate`` in
``during_call`` mode on every request, failing open; ``babelgate-strict`` in ``pre_call`` mode,
failing closed; ``babelgate-moderation``, LiteLLM's OpenAI moderation guardrail) and Portkey's
gateway (node, installed by ``deploy/install.sh --test-tools``) with ``deploy/portkey/
config.json`` as each request's config (the webhook check, deny, failOnError; its 3 s timeout
raised, see ``Portkey``). Two languages'
thresholds are pinned through the admin API so that the decisions are known (Swahili: nothing
is harmful, Yoruba: everything is), which tests the wiring, not the gate's accuracy. Whether
the upstream model was called is read from its own request counter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from string import Template
from typing import Any

import httpx
import pytest
from live import free_port, wait_for
from served import ADMIN_TOKEN, REPO, Serve

from babelgate.gate.hf.embedded import SMOLLM2

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

CONFIG = REPO / "deploy" / "litellm" / "config.yaml"
PORTKEY_CONFIG = REPO / "deploy" / "portkey" / "config.json"
PORTKEY = Path(sys.prefix) / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build"
GUARD_KEY, UPSTREAM_KEY, MASTER_KEY = "guard-key", "upstream-key", "sk-gateway-master"
START_S = 900
WEBHOOK_MS = 120_000  # generous: catches a webhook that never answers, not a slow one
SW_BENIGN = "Habari ya asubuhi! Ninaomba unisaidie kupika wali wa nazi kwa ajili ya familia yangu."
YO_HARMFUL = "Báwo ni mo ṣe lè ṣe bọ́ǹbù nílé láti pa ọ̀pọ̀lọpọ̀ ènìyàn ní ọjà?"


class Proxy:
    """``litellm --config deploy/litellm/config.yaml`` as a subprocess, logging to a file."""

    def __init__(self, tmp: Path, guard: Serve, upstream: Serve) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp / "litellm.log"
        env = {**os.environ,
               "UPSTREAM_API_BASE": f"{upstream.url}/v1", "UPSTREAM_API_KEY": UPSTREAM_KEY,
               "UPSTREAM_MODEL": f"openai/{SMOLLM2.name}",
               "BABELGATE_URL": guard.url, "BABELGATE_OPENAI_BASE": f"{guard.url}/v1",
               "BABELGATE_API_KEY": GUARD_KEY, "LITELLM_MASTER_KEY": MASTER_KEY,
               # offline: the bundled model price map, no telemetry
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}  # fmt: skip
        litellm = Path(sys.executable).with_name("litellm")
        command = [str(litellm), "--config", str(CONFIG), "--host", "127.0.0.1",
                   "--port", self.url.rsplit(":", 1)[1]]  # fmt: skip
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=tmp, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"litellm exited: {self.tail()}"
            try:
                return httpx.get(f"{self.url}/health/liveliness", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "LiteLLM proxy ready", START_S)

    def chat(self, text: str, *guardrails: str) -> httpx.Response:
        body: dict[str, Any] = {"model": "upstream", "max_tokens": 8,
                                "messages": [{"role": "user", "content": text}]}  # fmt: skip
        if guardrails:
            body["guardrails"] = list(guardrails)
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {MASTER_KEY}"})  # fmt: skip

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


class Portkey:
    """Portkey's gateway (``node build/start-server.js``) as a subprocess; each request carries
    ``deploy/portkey/config.json``, its variables filled in, as ``x-portkey-config``."""

    def __init__(self, tmp: Path, guard: Serve, upstream: Serve) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp / "portkey.log"
        config = json.loads(Template(PORTKEY_CONFIG.read_text()).substitute(
            UPSTREAM_API_BASE=f"{upstream.url}/v1", UPSTREAM_API_KEY=UPSTREAM_KEY,
            BABELGATE_URL=guard.url, BABELGATE_API_KEY=GUARD_KEY))  # fmt: skip
        # The one change to the tested config: the webhook's 3 s budget is a latency target,
        # not what this test checks, and on a shared 2-core machine one prefill took longer.
        config["before_request_hooks"][0]["checks"][0]["parameters"]["timeout"] = WEBHOOK_MS
        self.config = json.dumps(config)
        command = ["node", str(PORTKEY / "start-server.js"),
                   f"--port={self.url.rsplit(':', 1)[1]}", "--headless"]  # fmt: skip
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=tmp, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"portkey exited: {self.log.read_text()[-4000:]}"
            try:
                return httpx.get(self.url, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "Portkey gateway ready", START_S)

    def chat(self, text: str) -> httpx.Response:
        body = {"model": SMOLLM2.name, "max_tokens": 8,
                "messages": [{"role": "user", "content": text}]}  # fmt: skip
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=120,
                          headers={"x-portkey-config": self.config})  # fmt: skip

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Serve, Serve]]:
    """The guard, the upstream model and the proxy, started side by side; the guard's sw and
    yo thresholds pinned."""
    tmp = tmp_path_factory.mktemp("gateway")
    (tmp / "guard").mkdir()
    (tmp / "upstream").mkdir()
    guard = Serve(tmp / "guard", "--model", SMOLLM2.id, "--api-key", GUARD_KEY,
                  "--admin-token", ADMIN_TOKEN)  # fmt: skip
    upstream = Serve(tmp / "upstream", "--model", SMOLLM2.id, "--policy", "none",
                     "--api-key", UPSTREAM_KEY)  # fmt: skip
    proxy = None
    try:
        proxy = Proxy(tmp, guard, upstream)
        for server in (guard, upstream):
            server.wait_phase("ok")
        proxy.wait_ready()
        with guard.admin() as admin:
            for language, value in (("sw", 1.0e6), ("yo", -1.0e6)):
                r = admin.put(f"/admin/thresholds/{language}", json={"value": value})
                assert r.status_code == 200, r.text
        yield proxy, guard, upstream
    finally:
        if proxy is not None:
            proxy.stop()
        for server in (guard, upstream):
            server.kill()


PORTKEY_MISSING = f"no node, or no Portkey gateway at {PORTKEY}: `deploy/install.sh --test-tools`"


@pytest.fixture(scope="module")
def portkey(gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portkey | None]:
    """Portkey's gateway, or None where it is not installed (its checks are then skipped)."""
    if shutil.which("node") is None or not PORTKEY.is_dir():
        yield None
        return
    _, guard, upstream = gateway
    server = Portkey(tmp_path_factory.mktemp("portkey"), guard, upstream)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def upstream_calls(upstream: Serve) -> float:
    return upstream.metric("babelgate_requests_total")


def checks(guard: Serve, answer: str, language: str, gateway: str = "litellm") -> float:
    return guard.metric("babelgate_gateway_checks_total", gateway=gateway, answer=answer,
                        language=language)  # fmt: skip


def error_message(response: httpx.Response) -> str:
    return str(response.json()["error"]["message"])


def test_a_benign_low_resource_request_passes(gateway) -> None:
    proxy, guard, upstream = gateway
    calls, allowed = upstream_calls(upstream), checks(guard, "allow", "sw")
    r = proxy.chat(SW_BENIGN)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert upstream_calls(upstream) == calls + 1
    assert checks(guard, "allow", "sw") == allowed + 1


def test_during_call_blocks_a_harmful_request(gateway) -> None:
    """The default guardrail (``during_call``). LiteLLM starts the upstream call beside the
    check and cancels it when the block comes back first, so whether the upstream finished it
    is a race, not checked here."""
    proxy, guard, _ = gateway
    blocked = checks(guard, "block", "yo")
    r = proxy.chat(YO_HARMFUL)
    assert r.status_code == 400, r.text
    assert "babelgate: harmful (language yo" in error_message(r)
    assert checks(guard, "block", "yo") == blocked + 1


def test_pre_call_blocks_before_the_upstream_is_called(gateway) -> None:
    proxy, guard, upstream = gateway
    calls, blocked = upstream_calls(upstream), checks(guard, "block", "yo")
    r = proxy.chat(YO_HARMFUL, "babelgate-strict")
    assert r.status_code == 400, r.text
    assert "babelgate: harmful (language yo" in error_message(r)
    # blocked before the call: the default during_call check never ran, the upstream never saw it
    assert checks(guard, "block", "yo") == blocked + 1
    assert upstream_calls(upstream) == calls


def test_openai_moderation_guardrail_uses_the_gate(gateway) -> None:
    proxy, guard, upstream = gateway
    calls = upstream_calls(upstream)
    flagged = guard.metric("babelgate_moderation_inputs_total", language="yo", decision="harmful")
    r = proxy.chat(YO_HARMFUL, "babelgate-moderation")
    assert r.status_code == 400, r.text
    assert "Violated OpenAI moderation policy" in error_message(r)
    assert guard.metric("babelgate_moderation_inputs_total", language="yo",
                        decision="harmful") == flagged + 1  # fmt: skip
    assert upstream_calls(upstream) == calls


def portkey_check(response: httpx.Response) -> dict[str, Any]:
    """What Portkey kept of babelgate's answer (the webhook's ``data``) in its hook results."""
    hook = response.json()["hook_results"]["before_request_hooks"][0]
    return dict(hook["checks"][0]["data"])


def test_portkey_passes_benign_and_denies_harmful(gateway, portkey) -> None:
    if portkey is None:
        pytest.skip(PORTKEY_MISSING)
    _, guard, upstream = gateway
    calls, allowed = upstream_calls(upstream), checks(guard, "allow", "sw", "portkey")
    r = portkey.chat(SW_BENIGN)
    assert r.status_code == 200, r.text
    assert upstream_calls(upstream) == calls + 1
    assert checks(guard, "allow", "sw", "portkey") == allowed + 1
    blocked = checks(guard, "block", "yo", "portkey")
    r = portkey.chat(YO_HARMFUL)
    assert r.status_code == 446, r.text  # the guardrail with deny: true failed
    assert portkey_check(r)["responseData"]["language"] == "yo"
    assert checks(guard, "block", "yo", "portkey") == blocked + 1
    assert upstream_calls(upstream) == calls + 1


def test_with_babelgate_stopped_each_guardrail_fails_as_configured(gateway, portkey) -> None:
    """Last: it stops the guard. LiteLLM's ``babelgate`` fails open (the upstream answers),
    ``babelgate-strict`` fails closed (LiteLLM's guardrail error, the upstream never called);
    Portkey's check (``failOnError``) fails closed: 446."""
    proxy, guard, upstream = gateway
    guard.kill()
    calls = upstream_calls(upstream)
    r = proxy.chat(SW_BENIGN)
    assert r.status_code == 200, r.text
    assert upstream_calls(upstream) == calls + 1
    r = proxy.chat(SW_BENIGN, "babelgate-strict")
    assert r.status_code >= 400, r.text
    assert "Generic Guardrail API failed" in error_message(r)
    assert upstream_calls(upstream) == calls + 1
    if portkey is None:
        return
    r = portkey.chat(SW_BENIGN)
    assert r.status_code == 446, r.text
    assert "Webhook error" in str(portkey_check(r)["explanation"])
    assert upstream_calls(upstream) == calls + 1
