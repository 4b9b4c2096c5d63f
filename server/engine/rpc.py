"""Calls into babelgate's worker (``collective_rpc``), one method per worker method.

Runs in the process that holds the engine (API server, CLI, tests, benchmark). Every worker
answers (tensor-parallel ranks hold identical guard state); the clients return rank 0's answer.
``WorkerClient`` wraps ``vllm.LLM``, ``AsyncWorkerClient`` wraps ``AsyncLLM`` (its methods return
awaitables); both send the same calls, named like the methods of ``worker.GuardWorkerMixin``
without their ``babelgate_`` prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from babelgate.server.engine.types import GateParams, Verdict

RPC_PREFIX = "babelgate_"
DEAD_ENGINE_POLL_S = 0.5  # how often a call waiting for the worker looks whether it died


def _verdicts(raw: dict[str, Any]) -> dict[str, Verdict]:
    return {bid: Verdict.from_dict(v) for bid, v in raw.items()}


class _WorkerCalls:
    """The calls; a subclass sends them (``_call``) synchronously or as awaitables."""

    def _call(
        self, method: str, args: tuple[Any, ...], parse: Callable[[Any], Any] | None = None
    ) -> Any:
        raise NotImplementedError

    def install(self, gate: GateParams) -> Any:
        """Load (or replace) the routing gate's values in the guard the engine was built with;
        where the guard sits (``dict``: runner, model, layers, capture_layers, compilation
        mode, dtype, device)."""
        return self._call("install", (gate.to_wire(),))

    def describe(self) -> Any:
        """Where the guard sits (the same ``dict`` as ``install``), without loading a gate."""
        return self._call("describe", ())

    def uninstall(self) -> Any:
        return self._call("uninstall", ())

    def status(self) -> Any:
        """Guard state (``dict``): gate loaded, layers, guarded steps, records and slots held."""
        return self._call("status", ())

    def inject_gate_failure(self, on: bool) -> Any:
        """Test-only: make every guarded request's score NaN while ``on`` (refused unless the
        engine's environment allows faults, ``types.TEST_FAULTS_ENV``)."""
        return self._call("inject_gate_failure", (on,))

    def verdicts(self, ids: Sequence[str], release: Sequence[str] = ()) -> Any:
        """``dict[str, Verdict]`` of the ids the worker has seen; ``release``: ids to forget
        after this read."""
        return self._call("verdicts", (list(ids), list(release)), _verdicts)

    def pop_captures(self, ids: Sequence[str]) -> Any:
        """Captured residuals by capture id (``dict[str, bytes]``), removed on return."""
        return self._call("pop_captures", (list(ids),))


class WorkerClient(_WorkerCalls):
    """The worker calls on a ``vllm.LLM`` (answers returned directly)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def _call(
        self, method: str, args: tuple[Any, ...], parse: Callable[[Any], Any] | None = None
    ) -> Any:
        answer = self.llm.collective_rpc(RPC_PREFIX + method, args=args)[0]
        return answer if parse is None else parse(answer)


class AsyncWorkerClient(_WorkerCalls):
    """The worker calls on an ``AsyncLLM`` (every method returns an awaitable)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def _call(
        self, method: str, args: tuple[Any, ...], parse: Callable[[Any], Any] | None = None
    ) -> Any:
        """The call's answer, or vLLM's ``EngineDeadError`` once the engine has died: vLLM
        fails the requests of a dead engine but not its utility calls in flight, which would
        wait for ever (and with them the requests waiting for a verdict, and the server's
        graceful stop that waits for those requests)."""
        call = asyncio.ensure_future(
            self.engine.collective_rpc(RPC_PREFIX + method, args=args)
        )
        while not (await asyncio.wait({call}, timeout=DEAD_ENGINE_POLL_S))[0]:
            if self.engine.errored:
                call.cancel()
                raise self.engine.dead_error
        answer = call.result()[0]
        return answer if parse is None else parse(answer)
