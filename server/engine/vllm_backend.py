"""``VLLMBackend``: the activation backend at vLLM speed (``babelgate calibrate --backend vllm``).

Runs in the CLI process; vLLM's engine core and worker run in their own. Each prompt is sent as
a one-token generation (prefill only) carrying a capture id in ``extra_args``; the engine is
built with a guard that captures every layer (``GuardSpec.capture_layers``): inside the forward
it copies ``hidden + residual`` (the residual stream at the block output, Hugging Face
``hidden_states[L + 1]``) at the last prompt token into the request's slot, and the backend pops
the vectors by id. Prompts are the chat template with one user turn and the
generation prompt, rendered by the same function as the transformers backend, so both see the
same token ids; they agree to float32 rounding of a different kernel order (see
``tests/test_vllm_engine.py`` for the measured tolerance).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from babelgate.gate.activations import check_finite, check_layers
from babelgate.gate.artifact import ModelInfo
from babelgate.gate.prompt import chat_prompt_ids
from babelgate.server.engine.rpc import WorkerClient
from babelgate.server.engine.runtime import CAPTURE_KEY
from babelgate.server.engine.startup import prepare

# Enough KV cache for a calibration batch, small enough for an 8 GiB NUMA node.
DEFAULT_KV_CACHE_BYTES = 1 << 30
# Requests submitted to vLLM at once (it batches them itself); also the progress-bar step.
SUBMIT_CHUNK = 256


class VLLMBackend:
    """Last-prompt-token residuals through vLLM (see ``gate.activations.ActivationBackend``).

    ``model``: None/"embedded", a local folder or a hub id. ``llm``: reuse a running
    ``vllm.LLM`` started by another ``VLLMBackend`` instead of starting one. ``read_layers``:
    the engine can also serve gates reading these layers (deciding at the last), so one engine
    can first read activations, then serve the gate fitted on them (``GuardedLLM(llm=...)``).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        dtype: str = "float32",
        llm: Any | None = None,
        read_layers: tuple[int, ...] = (),
        **engine_kwargs: Any,
    ) -> None:
        options = {"kv_cache_memory_bytes": DEFAULT_KV_CACHE_BYTES, **engine_kwargs, "dtype": dtype}
        plan = prepare(
            model, None, options, start=llm is None, read_layers=read_layers,
            capture_all_layers=True,
        )  # fmt: skip
        self.model_info: ModelInfo = plan.model_info
        self.num_layers = self.model_info.num_layers
        self.hidden_size = self.model_info.hidden_size
        if llm is None:
            from vllm import LLM

            llm = LLM(model=plan.load_path, **plan.engine_kwargs)
        self.llm = llm
        self.worker = WorkerClient(llm)
        self.tokenizer = llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{plan.model_id} has no chat template: the post-instruction position is undefined"
            )

    def activations(
        self,
        prompts: Sequence[str],
        layers: Sequence[int] | None = None,
        *,
        batch_size: int = 16,
        progress: bool = True,
    ) -> np.ndarray:
        """Residuals ``(n, n_layers, d)`` float32 at each prompt's last token.

        The engine captures every layer (its guard's capture buffers, filled inside the
        forward); the chosen ones are picked here. ``batch_size`` only bounds how many requests
        are submitted at once from below; vLLM schedules them itself.
        """
        # lazy: vllm is imported only where an engine runs
        from vllm import SamplingParams

        chosen = check_layers(layers, self.num_layers)
        out = np.empty((len(prompts), len(chosen), self.hidden_size), dtype=np.float32)
        if not prompts:
            return out
        chunk = max(batch_size, SUBMIT_CHUNK)
        bar = tqdm(
            total=len(prompts), desc="activations (vllm)", unit="prompt", disable=not progress
        )
        for start in range(0, len(prompts), chunk):
            texts = prompts[start : start + chunk]
            ids = [uuid.uuid4().hex for _ in texts]
            requests = [{"prompt_token_ids": chat_prompt_ids(self.tokenizer, t)} for t in texts]
            params = [SamplingParams(max_tokens=1, extra_args={CAPTURE_KEY: cid}) for cid in ids]
            self.llm.generate(requests, params, use_tqdm=False)
            captured = self.worker.pop_captures(ids)
            missing = [i for i, cid in enumerate(ids) if cid not in captured]
            if missing:
                raise RuntimeError(
                    f"vLLM returned no residuals for {len(missing)} prompts (first: "
                    f"{texts[missing[0]][:60]!r}): the guard's capture did not run"
                )
            for i, cid in enumerate(ids):
                block = np.frombuffer(captured[cid], dtype=np.float32)
                out[start + i] = block.reshape(self.num_layers, self.hidden_size)[chosen]
            bar.update(len(texts))
        bar.close()
        return check_finite(out)

    def shutdown(self) -> None:
        """Stop the engine processes."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
