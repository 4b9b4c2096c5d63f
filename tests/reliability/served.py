"""A real ``babelgate serve`` as a subprocess, for the slow reliability tests.

``python -m babelgate serve`` on 127.0.0.1 at a free port, eager (these tests are about the
server's processes and requests, not the graph; a compiled start costs minutes of compilation
on a fresh machine), logging to a file the failures quote.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
from live import free_port, health_phase, wait_for
from prometheus_client.parser import text_string_to_metric_families

from babelgate.gate.hf.embedded import SMOLLM2
from babelgate.server.engine.types import TEST_FAULTS_ENV

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 900  # the first use converts the model
ADMIN_TOKEN = "reliability-admin-token"
SETTLE_S = 60  # for aborted requests to be released everywhere


class Serve:
    """``python -m babelgate serve`` as a subprocess, logging to a file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None,
                 max_num_seqs: int = 4) -> None:  # fmt: skip
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        command = [sys.executable, "-m", "babelgate", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--state-dir", str(tmp / "state"),
                   "--max-model-len", "1024", "--max-num-seqs", str(max_num_seqs),
                   "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30),
                   *args]  # fmt: skip
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})},
                                         stdout=out, stderr=subprocess.STDOUT)  # fmt: skip

    def wait_phase(self, done: str) -> None:
        def reached() -> bool:
            assert self.proc.poll() is None, f"serve exited: {self.tail()}"
            return (health_phase(self.url) or "").startswith(done)

        wait_for(reached, f"phase {done!r}", START_TIMEOUT_S)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def engine_core(self) -> psutil.Process:
        """vLLM's engine core process (the one that runs the scheduler and owns the worker)."""
        cores = [p for p in self.descendants() if "EngineCore" in p.name()]
        assert len(cores) == 1, [p.name() for p in self.descendants()]
        return cores[0]

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` on ``/metrics`` that carry ``labels``."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def kill(self) -> None:
        """Kill the server and everything it started."""
        leftovers = self.descendants() if self.proc.poll() is None else []
        self.proc.kill()
        for proc in leftovers:
            proc.kill()
        self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def chat_body(text: str, *, stream: bool = False, max_tokens: int = 16) -> dict[str, Any]:
    """A chat completion for the embedded SmolLM2 (``ignore_eos``: it runs ``max_tokens``)."""
    return {"model": SMOLLM2.name, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens, "stream": stream, "ignore_eos": True}  # fmt: skip


def settled(server: Serve) -> dict[str, float]:
    """What is still held once traffic has stopped, waited for (bounded) until all are 0:
    the server's in-flight gauge, vLLM's unfinished requests, the guard's records and slots in
    the worker (``GET /admin/engine``). Returns the last reading (all 0 unless it timed out)."""
    reading: dict[str, float] = {}

    def all_zero() -> bool:
        with server.admin() as admin:
            state = admin.get("/admin/engine").json()
        reading.clear()
        reading.update(
            in_flight=server.metric("babelgate_requests_in_flight"),
            engine_unfinished=state["engine_unfinished_requests"],
            **{k: state["worker"][k] for k in ("active", "finished_unfetched", "slots_in_use")},
        )
        return not any(reading.values())

    with contextlib.suppress(AssertionError):  # the caller asserts on the reading
        wait_for(all_zero, "everything released", SETTLE_S)
    return reading


@contextlib.contextmanager
def fault_server(tmp: Path, gate_failure: str) -> Iterator[Serve]:
    """A ready server on SmolLM2 with ``--gate-failure gate_failure``, the admin token, the
    fault switch allowed and 8 sequences a batch; killed on exit."""
    serve = Serve(tmp, "--model", SMOLLM2.id, "--admin-token", ADMIN_TOKEN,
                  "--gate-failure", gate_failure, env={TEST_FAULTS_ENV: "1"},
                  max_num_seqs=8)  # fmt: skip
    try:
        serve.wait_phase("ok")
        yield serve
    finally:
        serve.kill()


@contextlib.contextmanager
def gate_failing(server: Serve) -> Iterator[None]:
    """The injected gate failure on (``PUT /admin/faults/gate-failure``) for the block."""
    with server.admin() as admin:
        assert admin.put("/admin/faults/gate-failure", json={"on": True}).status_code == 200
        try:
            yield
        finally:
            assert admin.put("/admin/faults/gate-failure", json={"on": False}).status_code == 200
