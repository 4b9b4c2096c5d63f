"""``VLLMBackend``: the activation backend at vLLM speed (``babelgate calibrate --backend vllm``).

Runs in the CLI process; vLLM's engine core and worker run in their own. Each prompt is sent as
a one-token generation (prefill only) carrying a capture id in ``extra_args``; the worker's
``ResidualCapture`` copies ``hidden + residual`` (the residual stream at the block output, Hugging
Face ``hidden_states[L + 1]``) at the last prompt token for every requested layer, and the
backend pops the vectors by id. Prompts are the chat template with one user turn and the
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

from gate.activations import check_finite, check_layers
from gate.artifact import ModelInfo
from gate.prompt import chat_prompt_ids
from server.engine.interventions import CAPTURE_KEY
from server.engine.rpc import WorkerClient
from server.engine.startup import prepare

# Enough KV cache for a calibration batch, small enough for an 8 GiB NUMA node.
DEFAULT_KV_CACHE_BYTES = 1 << 30
# Requests submitted to vLLM at once (it batches them itself); also the progress-bar step.
SUBMIT_CHUNK = 256


class VLLMBackend:
    """Last-prompt-token residuals through vLLM (see ``gate.activations.ActivationBackend``).

    ``model``: None/"embedded", a local folder or a hub id. ``llm``: reuse a running
    ``vllm.LLM`` started with babelgate's worker extension instead of starting one.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        dtype: str = "float32",
        llm: Any | None = None,
        **engine_kwargs: Any,
    ) -> None:
        options = {"kv_cache_memory_bytes": DEFAULT_KV_CACHE_BYTES, **engine_kwargs, "dtype": dtype}
        plan = prepare(model, None, options, start=llm is None)
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

        Installs capture hooks on the chosen layers (replacing any installed gate hook: a
        backend engine is for reading, not for serving). ``batch_size`` only bounds how many
        requests are submitted at once from below; vLLM schedules them itself.
        """
        from vllm import SamplingParams

        chosen = check_layers(layers, self.num_layers)
        out = np.empty((len(prompts), len(chosen), self.hidden_size), dtype=np.float32)
        if not prompts:
            return out
        self.worker.install(None, chosen)
        order = sorted(set(chosen))
        reorder = [order.index(layer) for layer in chosen]
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
                    f"{texts[missing[0]][:60]!r}): the capture hook did not fire"
                )
            for i, cid in enumerate(ids):
                block = np.frombuffer(captured[cid], dtype=np.float32)
                out[start + i] = block.reshape(len(order), self.hidden_size)[reorder]
            bar.update(len(texts))
        bar.close()
        return check_finite(out)

    def shutdown(self) -> None:
        """Stop the engine processes."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
