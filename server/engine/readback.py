"""Device values on their way to host memory, read without ever waiting inside the step loop.

Runs in the vLLM worker (``server.engine.runtime``). A ``Readback`` starts the copy of a few
device tensors into host memory (pinned on CUDA, so the copy is asynchronous) and records an
event after it. The step loop only asks ``ready`` (a poll, ``Event.query``); ``wait`` blocks on
the event and is called only by the RPCs that must return the values (a verdict, the status,
captured activations). On CPU the copy is done when the constructor returns: ``ready`` is True
and ``wait`` has nothing to wait for, but the calls are the same, so a test on CPU can count them.
"""

from __future__ import annotations

import numpy as np
import torch


class Readback:
    """A non-blocking device-to-host copy of ``tensors`` and its completion event."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        cuda = tensors[0].device.type == "cuda"
        self._host = tuple(
            torch.empty(t.shape, dtype=t.dtype, pin_memory=cuda).copy_(t, non_blocking=cuda)
            for t in tensors
        )
        self._event = torch.cuda.Event() if cuda else None
        if self._event is not None:
            self._event.record()

    def ready(self) -> bool:
        """Has the copy finished? (Never waits.)"""
        return self._event is None or bool(self._event.query())

    def wait(self) -> None:
        """Block until the copy has finished (RPC handlers only, never the step loop)."""
        if self._event is not None:
            self._event.synchronize()

    def values(self) -> tuple[np.ndarray, ...]:
        """The copied values; only after ``ready()`` returned True or ``wait()`` returned."""
        return tuple(t.numpy() for t in self._host)
