"""A real ``babelgate serve`` on ``embedded:smollm2-135m``: no vLLM process outlives a server
killed with SIGKILL, SIGTERM during a first-use calibration exits within 10 s, and SIGTERM once
started exits 0 without a traceback and without leaving a vLLM process.

Before the fixes, after ``kill -9`` of the server vLLM's EngineCore and Worker processes lived
on (5.3 GB RSS, using CPU), a SIGTERM during calibration logged "Finished server process"
while the process went on calibrating, and a SIGTERM once started exited 143 after printing
``AsyncLLM.__del__`` ... ``TypeError: 'NoneType' object is not callable`` (the engine was
finalized only at interpreter teardown). The first test needs the ``vllm.general_plugins``
entry point installed (``pip install -e .``, as ``deploy/install.sh`` does).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from importlib.metadata import entry_points

import psutil
import pytest
from conftest import polyrefuse_or_skip
from live import wait_for
from served import START_TIMEOUT_S, Serve

from babelgate.gate.hf.embedded import SMOLLM2

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

GONE_WAIT_S = 30
EXIT_WITHIN_S = 10


@pytest.fixture
def stopped_after() -> Iterator[list[Serve]]:
    """Servers to kill, with everything they started, whatever the test did."""
    servers: list[Serve] = []
    yield servers
    for server in servers:
        server.kill()


def alive(procs: list[psutil.Process]) -> list[str]:
    """Which of ``procs`` are still running after waiting for them (name and pid)."""
    _, left = psutil.wait_procs(procs, timeout=GONE_WAIT_S)
    running = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return [f"{p.name()} ({p.pid})" for p in running]


def test_no_engine_process_outlives_a_killed_server(tmp_path, stopped_after) -> None:
    plugins = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "babelgate.server.engine.parent_watch:register" in plugins, (
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


def test_sigterm_once_started_exits_0_without_a_traceback_or_engine_process(
    tmp_path, stopped_after
) -> None:
    server = Serve(tmp_path, "--model", SMOLLM2.id)
    stopped_after.append(server)
    server.wait_phase("ok")
    engine = server.descendants()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(GONE_WAIT_S)
    log = server.log.read_text(errors="replace")
    assert code == 0, server.tail()
    assert "Traceback" not in log, server.tail()
    assert alive(engine) == []


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
    assert code == 0, server.tail()
    assert "stopped during start-up (calibrating" in server.tail()
    assert alive(started) == []
    assert not list((cache / "artifacts").rglob("manifest.json")), "a partial artifact was kept"
