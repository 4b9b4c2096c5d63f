"""``GuardedLLM``: the guard around ``vllm.LLM`` for offline use (tests, eval, benchmark).

Runs in the caller's process (vLLM's engine core and worker run in their own). Text prompts are
rendered with the model's chat template (one user turn, generation prompt) by the same function
the transformers backend uses, so token ids match the reference exactly. The start sequence is
the same as the server's ``GuardedEngine``: checks, loading the gate into the engine's guard, a
self-check request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from babelgate.gate.prompt import chat_prompt_ids
from babelgate.server.engine.rpc import WorkerClient
from babelgate.server.engine.startup import (
    SELF_CHECK_PROMPT,
    prepare,
    self_check_guard,
    verify_install,
    verify_self_check,
)
from babelgate.server.engine.types import EXTRA_ARGS_KEY, GateParams, GuardParams, Verdict

if TYPE_CHECKING:
    from vllm import SamplingParams

    from babelgate.gate.estimator import HarmfulnessGate


@dataclass(frozen=True)
class GuardedOutput:
    """One finished request: generated text and ids, and the guard's verdict (None for a
    request sent without guard parameters)."""

    text: str
    token_ids: list[int]
    verdict: Verdict | None


class GuardedLLM:
    """A ``vllm.LLM`` with babelgate's guard loaded and self-checked.

    ``model``: None/"embedded", a local folder or a hub id. ``gate``: a fitted
    ``HarmfulnessGate``, an artifact directory (checked against the model's config) or
    ``GateParams``. ``engine_kwargs`` go to ``vllm.LLM`` (compiled by default,
    ``enforce_eager=True`` for eager mode: the guard is the same in both). ``llm``: attach to a
    running ``vllm.LLM`` started by ``server.engine.startup.prepare`` whose guard reads the
    gate's layers (e.g. a ``VLLMBackend``'s built with ``read_layers``, so one engine can
    first read activations, then serve the gate fitted on them).
    """

    def __init__(
        self,
        model: str | Path | None,
        gate: HarmfulnessGate | GateParams | str | Path,
        *,
        llm: Any | None = None,
        **engine_kwargs: Any,
    ) -> None:
        plan = prepare(model, gate, engine_kwargs, start=llm is None)
        self.model_id = plan.model_id
        self.gate = plan.gate
        if llm is None:
            from vllm import LLM

            llm = LLM(model=plan.load_path, **plan.engine_kwargs)
        self.llm = llm
        self.worker = WorkerClient(llm)
        self.tokenizer = self.llm.get_tokenizer()
        self.install_info = self.install()
        self.self_check()

    # ------------------------------------------------------------------ worker calls

    def install(self) -> dict[str, Any]:
        info = self.worker.install(self.gate)
        verify_install(info, self.gate)
        return info

    def uninstall(self) -> None:
        self.worker.uninstall()

    def status(self) -> dict[str, Any]:
        return self.worker.status()

    def verdicts(self, ids: list[str], release: bool = True) -> dict[str, Verdict]:
        return self.worker.verdicts(ids, ids if release else []) if ids else {}

    def self_check(self) -> None:
        """Run one shadow request; refuse (GuardrailStartupError) unless it was scored."""
        from vllm import SamplingParams

        before = self.status()
        guard = self_check_guard()
        installed = before["installed"]
        verdict = None
        if installed:
            out = self.generate([SELF_CHECK_PROMPT], SamplingParams(max_tokens=1), [guard])
            verdict = out[0].verdict
        after = self.status()
        verify_self_check(verdict, before["fires"], after["fires"], installed)

    # ------------------------------------------------------------------ requests

    def prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        """Chat-template ids for text; token ids pass through unchanged."""
        if isinstance(prompt, str):
            return chat_prompt_ids(self.tokenizer, prompt)
        return [int(t) for t in prompt]

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        sampling: SamplingParams | Sequence[SamplingParams],
        guards: GuardParams | Sequence[GuardParams | None] | None,
        *,
        use_tqdm: bool = False,
    ) -> list[GuardedOutput]:
        """Generate for all prompts in one batch; ``guards`` per prompt (None = plain request
        with no guard parameters at all)."""
        n = len(prompts)
        samplings = list(sampling) if isinstance(sampling, Sequence) else [sampling] * n
        if guards is None or isinstance(guards, GuardParams):
            guards = [guards] * n
        guards = list(guards)
        if len(samplings) != n or len(guards) != n:
            raise ValueError(f"{n} prompts need as many sampling params and guards")
        ids = [g.id for g in guards if g is not None]
        if len(set(ids)) < len(ids):
            raise ValueError("guard ids must be unique per request (they key frozen decisions)")
        requests, params = [], []
        for prompt, sp, guard in zip(prompts, samplings, guards, strict=True):
            request: dict[str, Any] = {"prompt_token_ids": self.prompt_ids(prompt)}
            if guard is not None:
                extra = dict(sp.extra_args or {})
                extra[EXTRA_ARGS_KEY] = guard.to_extra_args()
                sp = sp.clone()
                sp.extra_args = extra
                salt = guard.cache_salt(self.gate.fingerprint)
                if salt is not None:
                    request["cache_salt"] = salt
            requests.append(request)
            params.append(sp)
        outputs = self.llm.generate(requests, params, use_tqdm=use_tqdm)
        verdicts = self.verdicts(ids)
        return [
            GuardedOutput(
                text=o.outputs[0].text,
                token_ids=list(o.outputs[0].token_ids),
                verdict=verdicts.get(g.id) if g is not None else None,
            )
            for o, g in zip(outputs, guards, strict=True)
        ]

    def gate_scores(self, prompts: Sequence[str], language: str) -> list[float]:
        """Gate logits of the prompts (prefill only, shadow policy: nothing is changed)."""
        from vllm import SamplingParams

        guards = [
            GuardParams(language=language, policy="shadow", threshold_source="scoring")
            for _ in prompts
        ]
        outs = self.generate(prompts, SamplingParams(max_tokens=1), guards)
        return [float(o.verdict.score) for o in outs]

    def shutdown(self) -> None:
        """Stop the engine processes."""
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()
