"""AdaSteer and CAST as per-request ``Intervention`` strategies, and the worker extension that
installs them beside routing (``babelgate eval`` compares every policy in one serving mechanism).

Runs in the vLLM worker. Requests opt in through ``extra_args[BASELINE_KEY] = {"id", "method",
"language"}`` and an optional ``"scale"`` (no ``"babelgate"`` key, so routing leaves them alone);
the fitted parameters per language (``evaluation.baselines.fitting``) are installed once by RPC.
``scale`` multiplies the fitted strength of that one request (AdaSteer's ``alpha_max`` and
``beta_max``, CAST's ``strength``): the strength sweep that routing's lambda gets, without a
refit or a second install. Both strategies keep per-request state keyed by the baseline id and
decide inside the request's own prefill, like routing:

- ``AdaSteerIntervention`` hooks every layer. At the alpha and beta layers it reads the last
  prompt token's residual and freezes alpha and beta; from then on it adds
  ``(alpha + beta) * RD[l]`` (RD = HD in the adapted method) at every layer on generated tokens,
  and at the last prompt token on the layers after both coefficients are known (the earlier
  layers of that row have already run when they become known).
- ``CastIntervention`` hooks the condition and behaviour layers. At the condition layer it sums
  the residuals of the request's prompt rows over its prefill steps (chunked prefill included);
  at the last prompt row it scores the mean and freezes the decision; when it fires it adds
  ``strength * behaviour[l]`` at the behaviour layers on every row of the request from then on
  (all prompt rows of the deciding step, since behaviour layers follow the condition layer, and
  every generated token). The mean needs every prompt row computed: baseline requests carry a
  cache salt unique to the request, so no prefix-cache hit skips rows (``prompt_rows_seen`` in the
  record shows it).
- ``PromptCapture`` records, for fitting, the last-prompt-token residual and the mean of the
  prompt's residuals at every layer (``extra_args[BASELINE_CAPTURE_KEY] = id``).

They run as eager Python hooks (``evaluation.baselines.hooks``): their per-request state
(sums over chunks, coefficients) and row indexing are data-dependent, unlike routing's
fixed-shape maths inside the model. The per-step ``RowSpan`` (rows, first position, prompt
length) is enough to find a request's prompt rows across chunks. ``BaselineWorkerExtension``
below is the evaluation engine's ``worker_extension_cls``, mixed into babelgate's worker (the
eval starts ``vllm.LLM`` eagerly with it and attaches ``GuardedLLM`` to it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from babelgate.evaluation.baselines.hooks import BaselineHooks, Intervention, RowSpan
from babelgate.evaluation.policies import valid_scale

BASELINE_KEY = "babelgate_baseline"
BASELINE_CAPTURE_KEY = "babelgate_baseline_capture"
BASELINE_WORKER_EXTENSION = "babelgate.evaluation.baselines.interventions.BaselineWorkerExtension"
MAX_FINISHED_RECORDS = 65536


@dataclass
class BaselineRecord:
    """What a baseline did for one request (read back by id after generation)."""

    id: str
    method: str
    language: str
    scale: float = 1.0  # multiplies the fitted strength (``request_scale``)
    alpha: float | None = None
    beta: float | None = None
    score: float | None = None
    fired: bool | None = None
    prompt_rows_seen: int = 0
    positions: int = 0
    runner_ids: set[str] = field(default_factory=set)
    _sum: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "language": self.language,
            "scale": self.scale,
            "alpha": self.alpha,
            "beta": self.beta,
            "score": self.score,
            "fired": self.fired,
            "prompt_rows_seen": self.prompt_rows_seen,
            "intervened_positions": self.positions,
        }


def request_scale(params: dict[str, Any]) -> float:
    """A request's strength multiplier: ``params["scale"]``, 1 when absent; a finite number > 0.
    A bad one raises in the worker's hook, which fails that step loudly rather than steering a
    request at a strength nobody asked for."""
    return valid_scale(float(params.get("scale", 1.0)))


def _prompt_rows(span: RowSpan) -> range:
    """Rows of ``span`` that hold prompt positions."""
    n_prompt_rows = max(0, min(span.stop - span.start, span.num_prompt - span.first_pos))
    return range(span.start, span.start + n_prompt_rows)


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64, device=device)


class _PerRequest:
    """Per-request records keyed by baseline id, for requests of one ``method``."""

    method = ""

    def __init__(self) -> None:
        self.active: dict[str, BaselineRecord] = {}
        self.by_runner_id: dict[str, str] = {}
        self.finished: OrderedDict[str, BaselineRecord] = OrderedDict()

    def _owned(self, step: list[RowSpan]) -> list[tuple[RowSpan, BaselineRecord]]:
        out = []
        for span in step:
            bid = self.by_runner_id.get(span.req_id)
            if bid is None:
                params = span.extra.get(BASELINE_KEY)
                if params is None or params.get("method") != self.method:
                    continue
                bid = str(params["id"])
                if bid not in self.active:
                    self.active[bid] = BaselineRecord(
                        bid, self.method, str(params["language"]), request_scale(params)
                    )
                self.by_runner_id[span.req_id] = bid
                self.active[bid].runner_ids.add(span.req_id)
            out.append((span, self.active[bid]))
        return out

    def on_requests_gone(self, req_ids: set[str]) -> None:
        for req_id in req_ids:
            bid = self.by_runner_id.pop(req_id, None)
            if bid is None:
                continue
            record = self.active[bid]
            record.runner_ids.discard(req_id)
            if record.runner_ids:
                continue
            del self.active[bid]
            record._sum = None
            self.finished[bid] = record
            while len(self.finished) > MAX_FINISHED_RECORDS:
                self.finished.popitem(last=False)

    def records(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Records of the given ids (finished ones are forgotten once read)."""
        out: dict[str, dict[str, Any]] = {}
        for bid in ids:
            record = self.finished.pop(bid, None) or self.active.get(bid)
            if record is not None:
                out[bid] = record.to_dict()
        return out


@dataclass(frozen=True)
class _AdaSteerLanguage:
    directions: torch.Tensor  # (n_layers, d)
    alpha_layer: int
    alpha_unit: torch.Tensor
    alpha_offset: float
    alpha_span: float
    beta_layer: int
    beta_unit: torch.Tensor
    beta_offset: float
    beta_span: float
    alpha_max: float
    beta_max: float


class AdaSteerIntervention(_PerRequest):
    """Adapted AdaSteer (``evaluation.baselines.fitting.AdaSteerParams``) per request, at every
    layer."""

    name = "adasteer"
    method = "adasteer"

    def __init__(
        self, wire: list[dict[str, Any]], num_layers: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.dtype = dtype
        self.params: dict[str, _AdaSteerLanguage] = {}
        for w in wire:
            directions = torch.tensor(w["directions"], dtype=torch.float32, device=device)
            if directions.shape[0] != num_layers:
                raise ValueError(
                    f"AdaSteer for {w['language']} has {directions.shape[0]} layers of "
                    f"directions, the model has {num_layers}: refit it for this model"
                )
            a, b = w["alpha"], w["beta"]
            self.params[w["language"]] = _AdaSteerLanguage(
                directions=directions.to(dtype),
                alpha_layer=int(a["layer"]),
                alpha_unit=torch.tensor(a["unit"], dtype=torch.float64, device=device),
                alpha_offset=float(a["offset"]),
                alpha_span=float(a["span"]),
                beta_layer=int(b["layer"]),
                beta_unit=torch.tensor(b["unit"], dtype=torch.float64, device=device),
                beta_offset=float(b["offset"]),
                beta_span=float(b["span"]),
                alpha_max=float(w["alpha_max"]),
                beta_max=float(w["beta_max"]),
            )

    def layers(self) -> tuple[int, ...]:
        return tuple(range(self.num_layers))

    def on_layer(
        self, layer: int, hidden: torch.Tensor, residual: torch.Tensor, step: list[RowSpan]
    ) -> None:
        rows: list[int] = []
        coefs: list[float] = []
        langs: list[str] = []
        for span, rec in self._owned(step):
            p = self.params.get(rec.language)
            if p is None:
                continue
            row = span.last_prompt_row
            if row is not None and layer in (p.alpha_layer, p.beta_layer):
                h = hidden[row].double() + residual[row].double()
                if layer == p.alpha_layer and rec.alpha is None:
                    x = (float(h @ p.alpha_unit) - p.alpha_offset) / p.alpha_span
                    a_max = p.alpha_max * rec.scale
                    rec.alpha = min(max(a_max * x, 0.0), a_max)
                if layer == p.beta_layer and rec.beta is None:
                    x = (float(h @ p.beta_unit) - p.beta_offset) / p.beta_span
                    b_max = p.beta_max * rec.scale
                    rec.beta = min(max(-b_max * (1.0 - x), -b_max), 0.0)
            if rec.alpha is None or rec.beta is None:
                continue
            # The last prompt row only on layers after both coefficients became known.
            with_last_prompt = row is None or layer > max(p.alpha_layer, p.beta_layer)
            steered = span.rows_from_position(span.num_prompt - (1 if with_last_prompt else 0))
            rows.extend(steered)
            coefs.extend([rec.alpha + rec.beta] * len(steered))
            langs.extend([rec.language] * len(steered))
            rec.positions += len(steered)
        if not rows:
            return
        vectors = torch.stack([self.params[lang].directions[layer] for lang in langs])
        coef = torch.tensor(coefs, dtype=vectors.dtype, device=hidden.device)
        delta = (coef[:, None] * vectors).to(hidden.dtype)
        hidden.index_add_(0, _index(rows, hidden.device), delta)


@dataclass(frozen=True)
class _CastLanguage:
    condition_layer: int
    condition: torch.Tensor  # float64 (d,)
    threshold: float
    comparator: str
    behaviour: dict[int, torch.Tensor]  # layer -> strength * vector


class CastIntervention(_PerRequest):
    """Adapted CAST (``evaluation.baselines.fitting.CastParams``) per request."""

    name = "cast"
    method = "cast"

    def __init__(
        self, wire: list[dict[str, Any]], device: torch.device, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.params: dict[str, _CastLanguage] = {}
        for w in wire:
            if w["comparator"] not in ("above", "below"):
                raise ValueError(f"CAST comparator {w['comparator']!r} is not above/below")
            strength = float(w["strength"])
            vectors = torch.tensor(w["behaviour_vectors"], dtype=torch.float32, device=device)
            self.params[w["language"]] = _CastLanguage(
                condition_layer=int(w["condition_layer"]),
                condition=torch.tensor(w["condition"], dtype=torch.float64, device=device),
                threshold=float(w["threshold"]),
                comparator=str(w["comparator"]),
                behaviour={
                    int(layer): (strength * vectors[i]).to(dtype)
                    for i, layer in enumerate(w["behaviour_layers"])
                },
            )
        self._layers = tuple(
            sorted({p.condition_layer for p in self.params.values()}
                   | {layer for p in self.params.values() for layer in p.behaviour})
        )

    def layers(self) -> tuple[int, ...]:
        return self._layers

    def _score(self, p: _CastLanguage, mean: torch.Tensor) -> float:
        c = p.condition
        t = torch.tanh((mean @ c) / (c @ c) * c)
        denom = float(torch.linalg.vector_norm(mean) * torch.linalg.vector_norm(t))
        return float(mean @ t) / denom if denom > 0 else 0.0

    def on_layer(
        self, layer: int, hidden: torch.Tensor, residual: torch.Tensor, step: list[RowSpan]
    ) -> None:
        rows: list[int] = []
        vectors: list[torch.Tensor] = []
        for span, rec in self._owned(step):
            p = self.params.get(rec.language)
            if p is None:
                continue
            if layer == p.condition_layer and rec.fired is None:
                prompt = _prompt_rows(span)
                if span.first_pos == 0:  # first chunk, or recomputed from 0 after preemption
                    rec._sum, rec.prompt_rows_seen = None, 0
                if len(prompt):
                    part = (hidden[prompt.start : prompt.stop].double()
                            + residual[prompt.start : prompt.stop].double()).sum(dim=0)
                    rec._sum = part if rec._sum is None else rec._sum + part
                    rec.prompt_rows_seen += len(prompt)
                if span.last_prompt_row is not None and rec._sum is not None:
                    rec.score = self._score(p, rec._sum / rec.prompt_rows_seen)
                    if p.comparator == "above":
                        rec.fired = rec.score >= p.threshold
                    else:
                        rec.fired = rec.score <= p.threshold
                    rec._sum = None
            vector = p.behaviour.get(layer)
            if vector is None or not rec.fired or layer <= p.condition_layer:
                continue
            span_rows = range(span.start, span.stop)
            rows.extend(span_rows)
            vectors.extend([vector * rec.scale] * len(span_rows))
            rec.positions += len(span_rows)
        if rows:
            hidden.index_add_(0, _index(rows, hidden.device), torch.stack(vectors))


class PromptCapture:
    """For fitting: last-prompt-token residual and prompt-mean residual at every layer."""

    name = "prompt-capture"

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self._sums: dict[str, dict[int, torch.Tensor]] = {}
        self._counts: dict[str, dict[int, int]] = {}
        self._last: dict[str, dict[int, np.ndarray]] = {}
        self.captured: dict[str, np.ndarray] = {}

    def layers(self) -> tuple[int, ...]:
        return tuple(range(self.num_layers))

    def on_layer(
        self, layer: int, hidden: torch.Tensor, residual: torch.Tensor, step: list[RowSpan]
    ) -> None:
        for span in step:
            cid = span.extra.get(BASELINE_CAPTURE_KEY)
            if cid is None or str(cid) in self.captured:
                continue
            cid = str(cid)
            prompt = _prompt_rows(span)
            sums = self._sums.setdefault(cid, {})
            counts = self._counts.setdefault(cid, {})
            if span.first_pos == 0:
                sums.pop(layer, None)
                counts.pop(layer, None)
            if len(prompt):
                part = (hidden[prompt.start : prompt.stop].double()
                        + residual[prompt.start : prompt.stop].double()).sum(dim=0)
                sums[layer] = part if layer not in sums else sums[layer] + part
                counts[layer] = counts.get(layer, 0) + len(prompt)
            row = span.last_prompt_row
            if row is None:
                continue
            last = self._last.setdefault(cid, {})
            last[layer] = (hidden[row].double() + residual[row].double()).float().cpu().numpy()
            if len(last) == self.num_layers:
                order = range(self.num_layers)
                means = [(sums[i] / counts[i]).float().cpu().numpy() for i in order]
                lasts = [last[i] for i in order]
                self.captured[cid] = np.stack([np.stack(lasts), np.stack(means)])
                del self._sums[cid], self._counts[cid], self._last[cid]

    def on_requests_gone(self, req_ids: set[str]) -> None:
        """Captures outlive their requests until popped."""

    def pop(self, ids: list[str]) -> dict[str, bytes]:
        """float32 bytes of shape (2, n_layers, d) per id: [last token, prompt mean]."""
        return {cid: self.captured.pop(cid).tobytes() for cid in ids if cid in self.captured}


class BaselineWorkerExtension:
    """The baselines and the fitting capture, mixed into babelgate's worker
    (``worker_extension_cls``; routing is the worker's own, inside the model)."""

    _babelgate_baselines: tuple[Intervention, ...] = ()
    _babelgate_hooks: BaselineHooks | None = None

    def babelgate_install_baselines(
        self,
        adasteer: list[dict[str, Any]] | None = None,
        cast: list[dict[str, Any]] | None = None,
        prompt_capture: bool = False,
    ) -> dict[str, Any]:
        """Install (replacing earlier ones) the baselines fitted per language, and/or the
        fitting capture, as eager forward hooks; describe them.

        The earlier hooks come off first: each set wraps the runner's ``execute_model`` and
        puts back, on removal, the one it found, so removing the old set after the new one was
        made would unwrap the new set too and leave its interventions silently idle (the
        evaluation's setup installs the capture, then the baselines)."""
        if self._babelgate_hooks is not None:
            self._babelgate_hooks.remove()
            self._babelgate_hooks = None
            self._babelgate_baselines = ()
        runner = self.model_runner  # type: ignore[attr-defined]
        model = runner.get_model()
        param = next(model.parameters())
        num_layers = int(model.config.num_hidden_layers)
        chosen: list[Intervention] = []
        if adasteer:
            chosen.append(AdaSteerIntervention(adasteer, num_layers, param.device, param.dtype))
        if cast:
            chosen.append(CastIntervention(cast, param.device, param.dtype))
        if prompt_capture:
            chosen.append(PromptCapture(num_layers))
        hooks = BaselineHooks(runner, self.vllm_config, chosen)  # type: ignore[attr-defined]
        self._babelgate_hooks = hooks
        self._babelgate_baselines = tuple(chosen)
        return {
            "layers": hooks.layers,
            "baselines": [i.name for i in chosen],
            "model": type(model).__name__,
        }

    def _babelgate_find(self, cls: type) -> Any:
        for intervention in self._babelgate_baselines:
            if isinstance(intervention, cls):
                return intervention
        raise RuntimeError(f"no {cls.__name__} installed: call babelgate_install_baselines")

    def babelgate_baseline_records(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """AdaSteer / CAST records by baseline id."""
        out: dict[str, dict[str, Any]] = {}
        for intervention in self._babelgate_baselines:
            if isinstance(intervention, _PerRequest):
                out.update(intervention.records(ids))
        return out

    def babelgate_pop_prompt_captures(self, ids: list[str]) -> dict[str, bytes]:
        """Fitting captures by id (float32 bytes, (2, n_layers, d)), removed on return."""
        return self._babelgate_find(PromptCapture).pop(ids)
