"""The routing of METHOD §5 in plain transformers: the exact reference the vLLM hook must match.

Runs in the CLI process, tests and notebooks (no vLLM needed). One forward hook on decoder block
``L`` does everything inside the request's own forward passes, as the server must: during the
prefill it reads the block's output at the last prompt token, computes the gate logit
``h . u + c``, decides (harmful iff logit >= threshold; with an abstain band, harmless iff
logit < harmless threshold and unsure between, as the engine's guard decides: ``decide``), and
modifies that same output before
returning it, so no extra forward pass is spent. Decode steps then keep applying the chosen
intervention to each generated token. Prompts run one at a time (batch 1, no padding) and decode
greedily with a KV cache, so results are exact and independent of batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from babelgate.gate.prompt import chat_prompt_ids

# The engine's policies (``server.engine.types.POLICIES``, which this library cannot import; a
# test keeps the two equal).
POLICIES: tuple[str, ...] = ("routing", "none", "shadow", "always-steer", "always-ablate")
Action = Literal["steer", "ablate"]
# What routing does per decision (an unsure request, in the abstain band, is left alone), and
# what the other scoring policies do whatever the decision.
ROUTING_ACTIONS: dict[str, Action | None] = {
    "harmful": "steer", "harmless": "ablate", "unsure": None
}
FIXED_ACTIONS: dict[str, Action | None] = {
    "always-steer": "steer", "always-ablate": "ablate", "shadow": None
}


def decide(score: float, threshold: float, harmless_threshold: float | None) -> str:
    """harmful at or above ``threshold``; harmless below ``harmless_threshold`` (None: equal
    to ``threshold``, no band); unsure in between. The engine's rule
    (``server.engine.guard_graph``), in float64."""
    if score >= threshold:
        return "harmful"
    if harmless_threshold is not None and score >= harmless_threshold:
        return "unsure"
    return "harmless"


class GateParams(Protocol):
    """What the router needs from a gate (``gate.estimator.HarmfulnessGate`` provides it)."""

    @property
    def layer(self) -> int: ...
    @property
    def direction(self) -> Any: ...  # unit steering direction v, shape (d,)
    @property
    def alpha(self) -> float | None: ...

    def linear_form(self) -> tuple[Any, float]: ...  # (u, c): logit = h @ u + c


@dataclass(frozen=True)
class SteeringParams:
    """A stand-in gate: explicit layer, direction, alpha and linear form.

    Used where no fitted ``HarmfulnessGate`` exists (``babelgate sweep`` fitting a pooled
    direction per layer) or to re-scale a gate's alpha without touching the gate.
    """

    layer: int
    direction: np.ndarray
    alpha: float
    u: np.ndarray
    c: float = 0.0

    def linear_form(self) -> tuple[np.ndarray, float]:
        return self.u, self.c

    @classmethod
    def from_gate(cls, gate: GateParams, alpha: float | None = None) -> SteeringParams:
        """The gate's own parameters, optionally with another steering strength."""
        u, c = gate.linear_form()
        return cls(
            layer=int(gate.layer),
            direction=np.asarray(gate.direction, dtype=np.float64),
            alpha=float(gate.alpha if alpha is None else alpha),
            u=np.asarray(u, dtype=np.float64),
            c=float(c),
        )


@dataclass(frozen=True)
class ReferenceResult:
    """One greedy generation under a policy.

    ``score`` is the gate logit at layer L, last prompt token (None under policy ``none``, which
    installs no hook); ``decision`` is "harmful" / "harmless" / "unsure" (None under ``none``);
    ``intervened`` says whether the residual stream was modified; ``action`` says how ("steer",
    "ablate" or None). ``token_ids`` are the generated ids (the end-of-sequence id included when
    generation stopped on it); ``text`` is their decoding without special tokens.
    """

    text: str
    token_ids: list[int]
    score: float | None
    decision: str | None
    intervened: bool
    action: Action | None = None
    language: str | None = None


@dataclass
class _RequestState:
    """Mutable per-request state the hook reads and writes."""

    policy: str
    threshold: float | None
    harmless_threshold: float | None = None
    phase: Literal["prefill", "decode"] = "prefill"
    score: float | None = None
    partial: float = 0.0  # multi-layer gates: dot products of the earlier layers read
    decision: str | None = None
    action: Action | None = None


def _split_output(output: Any) -> tuple[torch.Tensor, tuple[Any, ...] | None]:
    """A decoder block returns a tensor (transformers 5.x) or a tuple whose first item is the
    hidden states (4.x); return the hidden states and the rest (None for a bare tensor)."""
    if isinstance(output, tuple):
        return output[0], tuple(output[1:])
    if isinstance(output, torch.Tensor):
        return output, None
    raise TypeError(
        f"decoder block returned {type(output).__name__}; expected a tensor or a tuple "
        "(unsupported transformers version or architecture)"
    )


def _join_output(hidden: torch.Tensor, rest: tuple[Any, ...] | None) -> Any:
    return hidden if rest is None else (hidden, *rest)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks (``model.model.layers`` in Llama/Qwen2/Gemma2-style causal LMs)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(model).__name__} has no model.layers: unsupported architecture "
            "(babelgate supports Llama-, Qwen2- and Gemma2-style decoders)"
        )
    return layers


def _per_prompt(value: Any, n: int, name: str) -> list[Any]:
    """Broadcast a scalar (or check a list) to one value per prompt."""
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(f"{name}: got {len(value)} values for {n} prompts")
        return list(value)
    return [value] * n


class ReferenceRouter:
    """Greedy generation with the gate and routing applied by a forward hook on block ``L``.

    ``gate_params``: anything with ``layer``, ``direction`` (unit v, (d,)), ``alpha`` and
    ``linear_form() -> (u, c)``, e.g. a ``HarmfulnessGate`` or a ``SteeringParams``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, gate_params: GateParams) -> None:
        self.model = model
        self.tokenizer = tokenizer
        blocks = decoder_layers(model)
        self.layer = int(gate_params.layer)
        if not 0 <= self.layer < len(blocks):
            raise ValueError(
                f"gate layer {self.layer} does not exist: the model has layers 0..{len(blocks) - 1}"
            )
        self.block = blocks[self.layer]
        # A multi-layer gate (``layers``) also reads earlier blocks; the decision is at ``layer``.
        reads = tuple(getattr(gate_params, "layers", (self.layer,)))
        self.read_blocks = [blocks[j] for j in reads[:-1]]
        hidden = int(model.config.hidden_size)
        direction = np.asarray(gate_params.direction, dtype=np.float64).reshape(-1)
        u, c = gate_params.linear_form()
        u = np.asarray(u, dtype=np.float64).reshape(len(reads), -1)
        if direction.size != hidden or u.shape[1] != hidden:
            raise ValueError(
                f"gate vectors have dimension {direction.size} (v) and {u.shape[1]} (u), but "
                f"the model's hidden size is {hidden}: the gate was made for another model"
            )
        if gate_params.alpha is None:
            raise ValueError("the gate has no alpha: fit it (or load a fitted artifact) first")
        device = next(model.parameters()).device
        self.alpha = float(gate_params.alpha)
        self._v = torch.tensor(direction, dtype=torch.float32, device=device)
        self._u = torch.tensor(u, dtype=torch.float64, device=device)  # (k, d)
        self._c = float(c)
        self._state: _RequestState | None = None
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @property
    def direction(self) -> torch.Tensor:
        """The unit steering direction v as the hook applies it (float32, on the model's device)."""
        return self._v

    # ------------------------------------------------------------------------------ hook

    def _steer(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.alpha * self._v

    def _ablate(self, h: torch.Tensor) -> torch.Tensor:
        return h - (h @ self._v).unsqueeze(-1) * self._v

    def _hook(self, _module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        state = self._state
        if state is None:
            return None
        hidden, rest = _split_output(output)
        h = hidden.float()  # interventions in float32, cast back to the model's dtype
        if state.phase == "prefill":
            last = h[0, -1].double()
            state.score = state.partial + float(last @ self._u[-1] + self._c)
            if state.threshold is not None:
                state.decision = decide(state.score, state.threshold, state.harmless_threshold)
            if state.policy == "routing":
                state.action = ROUTING_ACTIONS[state.decision or ""]
            else:
                state.action = FIXED_ACTIONS[state.policy]
            if state.action == "steer":  # the last prompt token only
                h = torch.cat([h[:, :-1], self._steer(h[:, -1:])], dim=1)
            elif state.action == "ablate":  # every prompt position
                h = self._ablate(h)
            else:
                return None
        elif state.action == "steer":
            h = self._steer(h)
        elif state.action == "ablate":
            h = self._ablate(h)
        else:
            return None
        return _join_output(h.to(hidden.dtype), rest)

    def _read_hook(self, j: int) -> Any:
        """Forward hook for the j-th earlier layer a multi-layer gate reads (prefill only)."""

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            state = self._state
            if state is not None and state.phase == "prefill":
                hidden, _ = _split_output(output)
                state.partial += float(hidden[0, -1].double() @ self._u[j])

        return hook

    # ------------------------------------------------------------------------------ generation

    def prompt_ids(self, text: str) -> list[int]:
        """One user turn in the chat template with the generation prompt (``gate.prompt``)."""
        return chat_prompt_ids(self.tokenizer, text)

    @torch.inference_mode()
    def _generate_one(self, ids: list[int], state: _RequestState, max_new_tokens: int) -> list[int]:
        # lazy: transformers takes about 2.5 s to import; only generating needs its cache
        from transformers import DynamicCache

        device = self._v.device
        cache = DynamicCache(config=self.model.config)
        self._state = state
        handles = []
        if state.policy != "none":
            handles = [b.register_forward_hook(self._read_hook(j)) for j, b in
                       enumerate(self.read_blocks)]
            handles.append(self.block.register_forward_hook(self._hook))
        try:
            out = self.model(
                input_ids=torch.tensor([ids], device=device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            state.phase = "decode"
            generated: list[int] = []
            for _ in range(max_new_tokens):
                token = int(torch.argmax(out.logits[0, -1]))
                generated.append(token)
                if token in self.eos_ids or len(generated) == max_new_tokens:
                    break
                out = self.model(
                    input_ids=torch.tensor([[token]], device=device),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
        finally:
            for handle in handles:
                handle.remove()
            self._state = None
        return generated

    def generate(
        self,
        prompts: Sequence[str],
        *,
        language: str | Sequence[str],
        policy: str,
        threshold: float | Sequence[float] | None = None,
        max_new_tokens: int = 32,
        harmless_threshold: float | Sequence[float | None] | None = None,
    ) -> list[ReferenceResult]:
        """Greedy generation, one prompt at a time, under ``policy`` (see ``POLICIES``).

        ``threshold`` (one value or one per prompt) is the language's threshold the server would
        send; ``routing`` and ``shadow`` need it, the ``always-*`` policies use it only to report
        the decision, ``none`` ignores it. ``harmless_threshold`` (one value or one per prompt,
        at most the threshold; None: no band) opens the abstain band ``decide`` describes.
        """
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        n = len(prompts)
        languages = _per_prompt(language, n, "language")
        thresholds = _per_prompt(threshold, n, "threshold")
        bands = _per_prompt(harmless_threshold, n, "harmless_threshold")
        if policy in ("routing", "shadow") and any(t is None for t in thresholds):
            raise ValueError(f"policy {policy!r} needs a threshold per prompt (the gate decides)")
        pairs = zip(thresholds, bands, strict=True)
        if any(b is not None and (t is None or b > t) for t, b in pairs):
            raise ValueError("harmless_threshold must be at most the threshold it goes with")
        results = []
        for text, lang, thr, band in zip(prompts, languages, thresholds, bands, strict=True):
            state = _RequestState(
                policy=policy,
                threshold=None if thr is None else float(thr),
                harmless_threshold=None if band is None else float(band),
            )
            tokens = self._generate_one(self.prompt_ids(text), state, max_new_tokens)
            results.append(
                ReferenceResult(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    token_ids=tokens,
                    score=state.score,
                    decision=state.decision,
                    intervened=state.action is not None,
                    action=state.action,
                    language=lang,
                )
            )
        return results
