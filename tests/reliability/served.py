"""A real ``babelgate serve`` as a subprocess, for the slow reliability tests.

``python -m cli.main serve`` on 127.0.0.1 at a free port, eager (these tests are about the
server's processes and requests, not the graph; a compiled start costs minutes of compilation
on a fresh machine), logging to a file the failures quote.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
from live import free_port, health_phase, wait_for

from gate.hf.embedded import SMOLLM2

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 900  # the first use converts the model
ADMIN_TOKEN = "reliability-admin-token"
SETTLE_S = 60  # for aborted requests to be released everywhere


class Serve:
    """``python -m cli.main serve`` as a subprocess, logging to a file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None,
                 max_num_seqs: int = 4) -> None:  # fmt: skip
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        command = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1",
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

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of a metric's samples on ``/metrics`` whose labels contain ``labels``."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
        return sum(float(v) for lab, v in pattern.findall(text) if labels in lab)

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
