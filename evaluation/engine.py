"""The evaluation's engine: one vLLM engine with babelgate's guard and the baselines beside it.

Runs in the CLI process (vLLM's engine core and worker run in their own). The engine is started
like every guarded engine (``server.engine.startup.prepare``), eagerly and with
``BaselineWorkerExtension`` (AdaSteer, CAST and the fitting capture as Python hooks), and
``GuardedLLM`` attaches to it, so routing requests go through exactly the serving path (checks,
the guard in the model, self-check, per-request ``extra_args``, cache salts) while the baselines
run beside it. Every request kind the evaluation needs is a method: gate scores (shadow prefill),
fitting captures, guarded and baseline generations, MMLU letters.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from babelgate.evaluation.baselines.interventions import (
    BASELINE_CAPTURE_KEY,
    BASELINE_KEY,
    BASELINE_WORKER_EXTENSION,
)
from babelgate.server.engine.rpc import WorkerClient
from babelgate.server.engine.types import GuardParams

DEFAULT_KV_CACHE_BYTES = 1 << 30


class BaselineWorkerClient(WorkerClient):
    """The worker calls plus those ``BaselineWorkerExtension`` adds."""

    def install_baselines(
        self,
        adasteer: Sequence[dict[str, Any]] = (),
        cast: Sequence[dict[str, Any]] = (),
        prompt_capture: bool = False,
    ) -> dict[str, Any]:
        """Install fitted baselines (wire dicts of ``evaluation.baselines``) and/or the capture."""
        return self._call("install_baselines", (list(adasteer), list(cast), prompt_capture))

    def baseline_records(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """AdaSteer / CAST records by baseline id."""
        return self._call("baseline_records", (list(ids),))

    def pop_prompt_captures(self, ids: Sequence[str]) -> dict[str, bytes]:
        """Fitting captures by id (float32 bytes, (2, n_layers, d)), removed on return."""
        return self._call("pop_prompt_captures", (list(ids),))


@dataclass(frozen=True)
class Generation:
    """One finished request: output text and token ids, and what the guard did."""

    text: str
    token_ids: list[int]
    info: dict[str, Any]


class EvalEngine:
    """``vllm.LLM`` + ``GuardedLLM`` + baselines for one model and one gate artifact."""

    def __init__(
        self,
        model: str | Path | None,
        artifact: str | Path,
        *,
        dtype: str = "float32",
        kv_cache_memory_bytes: int | None = DEFAULT_KV_CACHE_BYTES,
        seed: int = 0,
    ) -> None:
        from vllm import LLM

        from babelgate.server.engine.offline import GuardedLLM
        from babelgate.server.engine.startup import prepare

        options = {
            "dtype": dtype,
            "kv_cache_memory_bytes": kv_cache_memory_bytes,  # None: the guard's CPU default
            "worker_extension_cls": BASELINE_WORKER_EXTENSION,
            "enforce_eager": True,  # the baselines are Python hooks (evaluation.baselines.hooks)
            "seed": seed,
        }
        plan = prepare(model, artifact, options)
        self.model_id = plan.model_id
        self.model_info = plan.model_info
        self.gate = plan.estimator
        self.num_layers = self.model_info.num_layers
        llm = LLM(model=plan.load_path, **plan.engine_kwargs)
        try:
            self.guarded = GuardedLLM(model, plan.gate, llm=llm)
        except BaseException:
            llm.llm_engine.engine_core.shutdown()
            raise
        self.llm = llm
        self.worker = BaselineWorkerClient(llm)
        self.tokenizer = llm.get_tokenizer()

    # ------------------------------------------------------------------ requests

    def _sampling(self, max_tokens: int, **extra: Any) -> Any:
        from vllm import SamplingParams

        return SamplingParams(temperature=0.0, max_tokens=max_tokens, **extra)

    def gate_scores(self, prompts: Sequence[str], language: str) -> np.ndarray:
        """Gate logits at the last prompt token (shadow policy: prefill only, nothing changed)."""
        if not prompts:
            return np.empty(0)
        return np.asarray(self.guarded.gate_scores(list(prompts), language), dtype=np.float64)

    def capture(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, 2, n_layers, d) float32: [last prompt token, mean over prompt] at every layer.

        Needs ``worker.install_baselines(prompt_capture=True)``. Each request gets its own cache
        salt so every prompt row is computed (a prefix-cache hit would leave rows out of the mean).
        """
        ids = [uuid.uuid4().hex for _ in prompts]
        requests = [
            {"prompt_token_ids": self.guarded.prompt_ids(p), "cache_salt": f"capture:{cid}"}
            for p, cid in zip(prompts, ids, strict=True)
        ]
        params = [self._sampling(1, extra_args={BASELINE_CAPTURE_KEY: cid}) for cid in ids]
        self.llm.generate(requests, params, use_tqdm=False)
        got = self.worker.pop_prompt_captures(ids)
        missing = [i for i, cid in enumerate(ids) if cid not in got]
        if missing:
            raise RuntimeError(
                f"no capture came back for {len(missing)} prompts: the fitting hook did not fire"
            )
        d = self.model_info.hidden_size
        return np.stack(
            [np.frombuffer(got[cid], np.float32).reshape(2, self.num_layers, d) for cid in ids]
        )

    def generate_guarded(
        self,
        prompts: Sequence[str],
        guards: Sequence[GuardParams],
        max_tokens: int,
        allowed_token_ids: list[int] | None = None,
    ) -> list[Generation]:
        """Greedy generations, each under its own guard setting (language, policy, threshold),
        in one engine call: a batch may mix languages and policies like live traffic does."""
        extra = {"allowed_token_ids": allowed_token_ids} if allowed_token_ids else {}
        outs = self.guarded.generate(list(prompts), self._sampling(max_tokens, **extra), guards)
        return [
            Generation(
                o.text,
                list(o.token_ids),
                o.verdict.to_dict() if o.verdict is not None else {"verdict": None},
            )
            for o in outs
        ]

    def generate_baseline(
        self,
        prompts: Sequence[str],
        languages: Sequence[str],
        method: str,
        max_tokens: int,
        allowed_token_ids: list[int] | None = None,
        scale: float = 1.0,
    ) -> list[Generation]:
        """Greedy generations under AdaSteer or CAST, each prompt with the fit installed for
        its own language, at ``scale`` times the fitted strength."""
        ids = [uuid.uuid4().hex for _ in prompts]
        requests = [
            # The intervention changes this request's KV: never share it through the cache.
            {"prompt_token_ids": self.guarded.prompt_ids(p), "cache_salt": f"{method}:{bid}"}
            for p, bid in zip(prompts, ids, strict=True)
        ]
        extra = {"allowed_token_ids": allowed_token_ids} if allowed_token_ids else {}
        params = [
            self._sampling(
                max_tokens,
                extra_args={
                    BASELINE_KEY: {"id": bid, "method": method, "language": lang, "scale": scale}
                },
                **extra,
            )
            for bid, lang in zip(ids, languages, strict=True)
        ]
        outs = self.llm.generate(requests, params, use_tqdm=False)
        records = self.worker.baseline_records(ids)
        unseen = sum(1 for bid in ids if bid not in records)
        if unseen:
            raise RuntimeError(
                f"{method}: {unseen} of {len(ids)} requests never reached the worker's hooks, "
                "so their rows would be the unsteered model's: the baselines are not installed "
                "or their hooks do not fire (install_baselines; an eager engine)"
            )
        return [
            Generation(o.outputs[0].text, list(o.outputs[0].token_ids), records.get(bid, {}))
            for o, bid in zip(outs, ids, strict=True)
        ]

    def shutdown(self) -> None:
        self.guarded.shutdown()
