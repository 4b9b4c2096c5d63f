"""vLLM's engine processes die with the process that started them (a vLLM general plugin).

Runs in every process vLLM loads its general plugins in (entry point ``vllm.general_plugins`` in
pyproject.toml): the API-server or CLI process that starts an engine, the engine-core process and
its workers. Killed with SIGKILL, ``babelgate serve`` leaves vLLM's EngineCore and Worker
processes behind (measured: 5.3 GB RSS, still using CPU), so a supervisor that restarts it piles
up engines. With this plugin loaded, every child that a process forks (vLLM's default start
method: ``register_at_fork``) or spawns (``multiprocessing``; the plugin runs again in the new
interpreter) asks Linux to SIGKILL it when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then
exits at once if the parent is already gone, since it may have died between the fork and the
``prctl``. The engine core dies with the API server and the workers with the engine core.

The top process (the one without a ``multiprocessing`` parent) is left alone: it belongs to its
own supervisor, and ``nohup babelgate serve`` must outlive its shell. Linux only (``prctl``);
elsewhere the plugin does nothing.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_GONE_EXIT = 1

_prctl: ctypes._CFuncPtr | None = None  # libc's prctl, bound before any fork
_forking_pid: int | None = None  # the pid of the process forking now (set in the parent)


def register() -> None:
    """The plugin entry point: vLLM calls it once in each process it loads plugins in."""
    global _prctl
    if not sys.platform.startswith("linux") or _prctl is not None:
        return
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    os.register_at_fork(before=_remember_forking_pid, after_in_child=_die_with_forking_parent)
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:  # spawned: a fresh interpreter
        die_with_parent(parent.pid)


def _remember_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _die_with_forking_parent() -> None:
    if _forking_pid is not None:
        die_with_parent(_forking_pid)


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent (``parent_pid``) dies; exit now if it has already
    (then this process has been re-parented and ``getppid`` names another one)."""
    assert _prctl is not None, "register() binds prctl first"
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        print(f"babelgate parent_watch: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}; "
              "this process will not die with its parent", file=sys.stderr)  # fmt: skip
        return
    if os.getppid() != parent_pid:
        os._exit(PARENT_GONE_EXIT)
