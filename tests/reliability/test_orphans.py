"""A real ``babelgate serve`` on ``embedded:smollm2-135m``: no vLLM process outlives a server
killed with SIGKILL, and SIGTERM during a first-use calibration exits within 10 s.

Before the fixes, after ``kill -9`` of the server vLLM's EngineCore and Worker processes lived
on (5.3 GB RSS, using CPU), and a SIGTERM during calibration logged "Finished server process"
while the process went on calibrating. The first test needs the ``vllm.general_plugins`` entry
point installed (``pip install -e .``, as ``deploy/install.sh`` does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import psutil
import pytest
from conftest import polyrefuse_or_skip
from live import free_port, health_phase, wait_for

from gate.hf.embedded import SMOLLM2

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 900  # the first use converts the model
GONE_WAIT_S = 30
EXIT_WITHIN_S = 10


class Serve:
    """``python -m cli.main serve`` as a subprocess, logging to a file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "serve.log"
        command = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--state-dir", str(tmp / "state"),
                   "--max-model-len", "1024", "--max-num-seqs", "4", "--enforce-eager",
                   "--kv-cache-memory-bytes", str(1 << 30), *args]  # fmt: skip
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

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def stopped_after() -> Iterator[list[Serve]]:
    """Servers to kill, with everything they started, whatever the test did."""
    servers: list[Serve] = []
    yield servers
    for server in servers:
        leftovers = server.descendants() if server.proc.poll() is None else []
        server.proc.kill()
        for proc in leftovers:
            proc.kill()


def alive(procs: list[psutil.Process]) -> list[str]:
    """Which of ``procs`` are still running after waiting for them (name and pid)."""
    _, left = psutil.wait_procs(procs, timeout=GONE_WAIT_S)
    running = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return [f"{p.name()} ({p.pid})" for p in running]


def test_no_engine_process_outlives_a_killed_server(tmp_path, stopped_after) -> None:
    plugins = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "server.engine.parent_watch:register" in plugins, (
        "the vllm.general_plugins entry point is not installed: run `pip install -e .` "
        "(deploy/install.sh)"
    )
    server = Serve(tmp_path, "--model", SMOLLM2.id)
    stopped_after.append(server)
    server.wait_phase("ok")
    engine = server.descendants()
    names = sorted(p.name() for p in engine)
    assert any("EngineCore" in n for n in names), names  # vLLM's engine core, and its worker
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    left = alive(engine)
    assert left == [], f"{len(left)} of {len(engine)} processes ({names}) outlived it: {left}"


def test_sigterm_during_first_use_calibration_exits_within_10_s(
    tmp_path, stopped_after, embedded_model_dir
) -> None:
    """A model folder (no shipped calibration) in an empty cache: the server calibrates first."""
    polyrefuse_or_skip()
    cache = tmp_path / "cache"
    server = Serve(tmp_path, "--model", str(embedded_model_dir),
                   env={"BABELGATE_CACHE": str(cache)})  # fmt: skip
    stopped_after.append(server)
    server.wait_phase("calibrating")
    wait_for(lambda: any((cache / "activations").rglob("*.npy")), "activations being computed",
             START_TIMEOUT_S)  # fmt: skip
    started = server.descendants()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(EXIT_WITHIN_S)
    assert code == 128 + signal.SIGTERM, server.tail()
    assert "stopped during start-up (calibrating" in server.tail()
    assert alive(started) == []
    assert not list((cache / "artifacts").rglob("manifest.json")), "a partial artifact was kept"
