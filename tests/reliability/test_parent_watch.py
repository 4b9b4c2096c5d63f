"""``server.engine.parent_watch``: processes started after the plugin is loaded die with their
parent, as vLLM's engine core and workers must when ``babelgate serve`` is killed with SIGKILL.

Real processes, real ``prctl`` and real SIGKILL, without vLLM: a "server" process loads the
plugin as vLLM would and starts a "core" process (multiprocessing, fork or spawn: vLLM forks by
default), which starts a "worker" the same way; the test kills the server with SIGKILL and
waits for the other two to be gone. The engine itself is killed in ``test_orphans.py`` (slow).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
GONE_WAIT_S = 30

# The server: loads the plugin (vLLM calls ``register`` in every process it loads plugins in),
# starts core -> worker with the given start method, prints its own PR_GET_PDEATHSIG and the
# pids of core and worker, and sleeps until killed.
TREE = """
import ctypes, multiprocessing as mp, os, sys, time
from babelgate.server.engine.parent_watch import register

def worker():
    register()  # vLLM's Worker loads the general plugins (a no-op after a fork)
    time.sleep(600)

def core(queue):
    register()  # so does its EngineCore
    child = mp.get_context(METHOD).Process(target=worker)
    child.start()
    queue.put(child.pid)
    time.sleep(600)

if __name__ == "__main__":
    register()
    signal_value = ctypes.c_int(-1)
    ctypes.CDLL(None).prctl(2, ctypes.byref(signal_value), 0, 0, 0)  # PR_GET_PDEATHSIG
    ctx = mp.get_context(METHOD)
    queue = ctx.Queue()
    parent = ctx.Process(target=core, args=(queue,))
    parent.start()
    print(signal_value.value, parent.pid, queue.get(), flush=True)
    time.sleep(600)
"""


def script(tmp_path: Path, code: str) -> list[str]:
    """The command running ``code`` as a script file (multiprocessing's spawn re-imports it)."""
    path = tmp_path / "script.py"
    path.write_text(code)
    return [sys.executable, str(path)]


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def wait_gone(pids: list[int]) -> list[int]:
    """The pids still alive after waiting for them (up to ``GONE_WAIT_S``)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=GONE_WAIT_S)
    return [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_core_and_worker_die_when_the_server_is_killed(tmp_path: Path, method: str) -> None:
    command = script(tmp_path, TREE.replace("METHOD", repr(method)))
    server = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    try:
        own_signal, core, worker = (int(x) for x in server.stdout.readline().split())
        assert own_signal == 0, "the top process must not die with its own parent"
        assert psutil.pid_exists(core) and psutil.pid_exists(worker)
        server.send_signal(signal.SIGKILL)
        server.wait()
        left = wait_gone([core, worker])
    finally:
        server.kill()
    for pid in left:  # do not leave them running when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"processes outlived the killed server: {left}"


# A child whose parent dies before the child's ``prctl`` runs (the race the plugin closes):
# the parent exits at once; the child waits until it has been re-parented, then does what the
# plugin does after a fork, naming the parent it had. It must exit instead of living on.
RACE = """
import os, sys, time
from babelgate.server.engine import parent_watch

flag, name_parent = sys.argv[1], sys.argv[2] == "parent"
top = os.getpid()
pid = os.fork()
if pid == 0:
    while os.getppid() == top:
        time.sleep(0.01)
    parent_watch.register()  # binds prctl (this child has no multiprocessing parent)
    parent_watch.die_with_parent(top if name_parent else os.getppid())
    open(flag, "w").write("alive")
    os._exit(0)
print(pid, flush=True)
"""


@pytest.mark.parametrize(("named", "survives"), [("parent", False), ("current", True)])
def test_a_child_whose_parent_died_before_prctl_exits(tmp_path, named, survives) -> None:
    flag = tmp_path / "flag"
    command = [*script(tmp_path, RACE), str(flag), named]
    proc = subprocess.run(command, env=ENV, capture_output=True, text=True, check=True)
    child = int(proc.stdout.split()[0])
    assert wait_gone([child]) == []
    # The control ("current": the parent it has now) shows the child would have lived.
    assert flag.exists() == survives


def test_the_plugin_is_declared_for_vllm() -> None:
    """pyproject.toml declares the entry point vLLM loads general plugins from, and it names
    the plugin's function (an install then puts it in the package's entry points)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    plugins = project["project"]["entry-points"]["vllm.general_plugins"]
    assert plugins == {"babelgate_parent_watch": "babelgate.server.engine.parent_watch:register"}
    module, _, function = plugins["babelgate_parent_watch"].partition(":")
    assert callable(getattr(import_module(module), function))
