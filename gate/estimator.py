"""``HarmfulnessGate``: the method's estimator for one layer, with per-language thresholds.

Runs in any process: the calibration CLI fits and saves it, the API server loads it to resolve
thresholds, vLLM workers load it and evaluate ``linear_form()`` (one dot product per request).
The gate's readout is trained once on the training (high-resource) languages; languages differ
only in their threshold, which ``recalibrate`` re-sets from a handful of labelled examples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from babelgate.gate.artifact import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ArtifactError,
    ModelInfo,
    babelgate_version,
    check_model,
    read_manifest,
    sha256_bytes,
    write_directory_atomic,
    write_json_atomic,
)
from babelgate.gate.directions import (
    language_directions,
    pooled_direction,
    steering_alpha,
    svd_basis,
)
from babelgate.gate.languages import validate_language
from babelgate.gate.metrics import auroc
from babelgate.gate.readout import LogisticReadout
from babelgate.gate.threshold import balanced_f1_threshold, harmless_below, traffic_threshold

TENSORS_NAME = "tensors.safetensors"
THRESHOLD_SOURCES: tuple[str, ...] = ("zero-shot", "recalibrated", "traffic", "manual", "default")
# The traffic rule reads a low quantile of each language's unlabelled scores; fewer prompts than
# this per language make that quantile too noisy to move a threshold by.
MIN_TRAFFIC_PROMPTS = 20
# A language whose labelled examples the gate separates no better than this (AUROC) is not
# protected by any threshold: its record is marked unprotected instead of trusted.
MIN_PROTECTED_AUROC = 0.6
# The abstain band's lower edge leaves at most this share of a language's harmful labelled
# examples below it: only scores under it are confidently harmless (ablation may apply).
HARMLESS_BAND_SHARE = 0.02
# Below this AUROC on a prompt family (measured at calibration, ``gate.style_check``), a
# language is reported weak on that family: the project's target under style shift is 0.7.
WEAK_FAMILY_AUROC = 0.7
# What the logistic unit reads: "low-rank" (METHOD §3: the projections on the SVD basis of the
# training languages' harm directions) or "full" (the whole residual of each layer read). The
# embedded Qwen model's default gate is a full readout: chosen on held-out data, it separated
# held-out data better (docs/eval/qwen2.5-coder-0.5b/gate-search/).
READOUTS: tuple[str, ...] = ("low-rank", "full")


def utc_now() -> str:
    """Current time as ISO-8601 UTC (seconds), the timestamp format of threshold records."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class GateConfig:
    """Hyper-parameters of one gate; defaults are the paper's (METHOD §3, §5)."""

    layer: int
    rank: int = 10
    lr: float = 0.05
    weight_decay: float = 0.01
    epochs: int = 80
    seed: int = 0
    steering_lambda: float = 1.0
    # Multi-layer features: read these layers (the basis projections concatenated into one
    # low-rank logistic readout); ``layer`` must be the last of them, where the decision is
    # complete and the intervention happens. Empty: the paper's single layer.
    feature_layers: tuple[int, ...] = ()
    # "low-rank" (the paper's) or "full" (see ``READOUTS``); a full readout ignores ``rank``.
    readout: str = "low-rank"

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        feats = tuple(sorted({int(x) for x in self.feature_layers}))
        if feats and (feats[0] < 0 or feats[-1] != self.layer):
            raise ValueError(
                f"feature_layers {list(feats)} must be >= 0 and end at the gate's layer "
                f"{self.layer} (the decision is taken, and the intervention made, at the last "
                "layer read)"
            )
        object.__setattr__(self, "feature_layers", feats)
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not math.isfinite(self.steering_lambda):
            raise ValueError(f"steering_lambda must be finite, got {self.steering_lambda}")

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers the gate reads, ascending (just ``(layer,)`` for a single-layer gate)."""
        return self.feature_layers or (self.layer,)


@dataclass
class ThresholdRecord:
    """A language's threshold and where it came from.

    ``source`` is "zero-shot" (the rule on the training logits), "recalibrated" (the rule on
    k labelled examples of this language), "traffic" (a labelled language's threshold moved by
    the shift of this language's unlabelled scores, ``set_traffic_threshold``), "manual" (set by
    an operator) or "default" (the language has no threshold of its own and falls back to the
    zero-shot value).
    ``auroc`` is how well the gate separated the labelled examples behind the record (None when
    none were used); ``protected`` is False when that separation was too weak (AUROC at most
    ``MIN_PROTECTED_AUROC``): no threshold protects such a language, and serving applies its
    fallback instead of trusting the decision.
    ``harmless_below`` is the abstain band's lower edge (``gate.threshold.harmless_below``): a
    score below it is confidently harmless; between it and ``value`` the verdict is unsure and
    serving leaves the request untouched. None: no band measured (harmless means below
    ``value``).
    Fields are validated on construction; ``note`` may be edited afterwards.
    """

    language: str
    value: float
    source: str
    k: int | None
    n_harmful: int | None
    n_harmless: int | None
    set_at: str
    note: str = ""
    auroc: float | None = None
    protected: bool = True
    harmless_below: float | None = None

    def __post_init__(self) -> None:
        if validate_language(self.language) != self.language:
            raise ValueError(
                f"threshold language {self.language!r} is not canonical: use "
                f"{validate_language(self.language)!r}"
            )
        if self.source not in THRESHOLD_SOURCES:
            raise ValueError(
                f"threshold source {self.source!r} is not one of {', '.join(THRESHOLD_SOURCES)}"
            )
        if isinstance(self.value, bool) or not math.isfinite(self.value):
            raise ValueError(f"threshold value must be a finite number, got {self.value!r}")
        for name in ("k", "n_harmful", "n_harmless"):
            count = getattr(self, name)
            if count is not None and (not isinstance(count, int) or count < 0):
                raise ValueError(f"threshold {name} must be a non-negative int or None")
        if self.auroc is not None and not (0.0 <= self.auroc <= 1.0):
            raise ValueError(f"threshold auroc must be in [0, 1] or None, got {self.auroc!r}")
        if not isinstance(self.protected, bool):
            raise ValueError(f"threshold protected must be true or false, got {self.protected!r}")
        band = self.harmless_below
        if band is not None and (isinstance(band, bool) or not math.isfinite(band)
                                 or band > self.value):  # fmt: skip
            raise ValueError(
                f"threshold harmless_below must be a finite number <= the threshold "
                f"{self.value!r}, got {band!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdRecord:
        """Inverse of ``to_dict``; ValueError naming the problem for malformed input."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a threshold record must be an object, got {type(data).__name__}")
        required = ("language", "value", "source", "set_at")
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f"threshold record lacks {', '.join(missing)}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"threshold record has unknown fields {sorted(unknown)}")
        if not isinstance(data["value"], int | float):
            raise ValueError(f"threshold value must be a number, got {data['value']!r}")
        return cls(
            language=data["language"],
            value=float(data["value"]),
            source=data["source"],
            k=data.get("k"),
            n_harmful=data.get("n_harmful"),
            n_harmless=data.get("n_harmless"),
            set_at=str(data["set_at"]),
            note=str(data.get("note", "")),
            auroc=None if data.get("auroc") is None else float(data["auroc"]),
            protected=data.get("protected", True),
            harmless_below=(None if data.get("harmless_below") is None
                            else float(data["harmless_below"])),
        )


class HarmfulnessGate:
    """Harmfulness gate: logits = readout(B^T h), harmful iff logit >= tau_language.

    ``fit(train)`` with ``train = {language: (activations, labels (n,))}``, labels 1 = harmful;
    activations are ``(n, d)`` for a single-layer gate and ``(n, k, d)`` (the k
    ``config.layers``, ascending) for a multi-layer one, whose features are the per-layer basis
    projections concatenated (a ``readout="full"`` gate reads h itself: no basis ``B``).
    ``model`` (optional) ties the gate to the model whose activations trained it;
    ``load(..., expect_model=...)`` refuses a gate made for another model.
    """

    MANIFEST_KEYS: ClassVar[tuple[str, ...]] = (
        "model", "layer", "rank", "hidden_size", "alpha", "steering_lambda", "training_languages",
        "thresholds", "zero_shot_threshold", "training", "metadata", "tensors_sha256",
        "fitted_at", "created_at",
    )

    def __init__(self, config: GateConfig, model: ModelInfo | None = None) -> None:
        if model is not None and config.layers[-1] >= model.num_layers:
            raise ValueError(
                f"layer {config.layer} does not exist in {model.describe()}: choose a layer "
                f"from 0 to {model.num_layers - 1}"
            )
        self.config = config
        self.model = model
        self.metadata: dict[str, Any] = {}
        self.direction: np.ndarray | None = None
        self.basis: np.ndarray | None = None
        self.language_directions: dict[str, np.ndarray] = {}
        self.readout: LogisticReadout | None = None
        self.alpha: float | None = None
        self.zero_shot_threshold: float | None = None
        self.training_languages: list[str] = []
        self.hidden_size: int | None = None
        self.training_counts: dict[str, dict[str, int]] = {}
        self.fitted_at: str | None = None
        self._thresholds: dict[str, ThresholdRecord] = {}

    @property
    def layer(self) -> int:
        """Where the decision is complete and the intervention happens (last layer read)."""
        return self.config.layer

    @property
    def layers(self) -> tuple[int, ...]:
        return self.config.layers

    def inputs(self, acts: np.ndarray) -> np.ndarray:
        """An activation backend's ``(n, k, d)`` answer for ``self.layers`` in the layout
        ``fit``/``score``/``recalibrate`` take (``(n, d)`` for a single-layer gate)."""
        x = np.asarray(acts)
        return x[:, 0] if len(self.layers) == 1 and x.ndim == 3 else x

    def score_all_layers(self, acts: np.ndarray) -> np.ndarray:
        """Logits for ``(n, num_layers, d)`` activations of every layer (a backend's answer
        for ``layers=None``): the gate picks its own layers."""
        return self.score(self.inputs(np.asarray(acts)[:, list(self.layers)]))

    def _acts_ndim(self, *, batched: bool) -> int:
        return (2 if batched else 1) + (len(self.layers) > 1)

    def _acts_shape_text(self) -> str:
        if len(self.layers) == 1:
            return "(n, d)"
        return f"(n, {len(self.layers)}, d) for layers {list(self.layers)}"

    def _blocks(self, acts: np.ndarray) -> np.ndarray:
        """Batched activations as ``(n, k, d)`` whatever the gate's layer count."""
        return acts[:, None, :] if len(self.layers) == 1 else acts

    def _features(self, blocks: np.ndarray) -> np.ndarray:
        """Basis projections of ``(n, k, d)`` activations, concatenated: ``(n, k * r)``; for a
        full readout the activations themselves, concatenated: ``(n, k * d)``."""
        if self.config.readout == "full":
            return blocks.astype(np.float64).reshape(blocks.shape[0], -1)
        basis = self._basis3().astype(np.float64)
        z = np.einsum("nkd,kdr->nkr", blocks.astype(np.float64), basis)
        return z.reshape(z.shape[0], -1)

    def _basis3(self) -> np.ndarray:
        return self.basis if self.basis.ndim == 3 else self.basis[None]

    # ----------------------------------------------------------------------------- fitting

    def _validated_train(
        self, train: Mapping[str, tuple[np.ndarray, np.ndarray]]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not isinstance(train, Mapping) or not train:
            raise ValueError(
                "no training data: give {language: (activations (n, d), labels (n,))} for at "
                "least one language"
            )
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        dim = self.model.hidden_size if self.model is not None else None
        for code, pair in train.items():
            lang = validate_language(code)
            if lang in out:
                raise ValueError(
                    f"language {code!r} appears twice in the training data (as {lang!r})"
                )
            acts, labels = pair
            acts = np.asarray(acts)
            labels = np.asarray(labels).reshape(-1)
            k = len(self.layers)
            ndim = self._acts_ndim(batched=True)
            if acts.ndim != ndim or acts.shape[0] != labels.size or (k > 1 and acts.shape[1] != k):
                raise ValueError(
                    f"language {lang!r}: need activations {self._acts_shape_text()} and n "
                    f"labels, got {acts.shape} and {labels.shape}"
                )
            if not np.all((labels == 0) | (labels == 1)):
                raise ValueError(f"language {lang!r}: labels must be 0 (harmless) or 1 (harmful)")
            n_harmful = int((labels == 1).sum())
            if n_harmful == 0 or n_harmful == labels.size:
                which = "harmless" if n_harmful == 0 else "harmful"
                raise ValueError(
                    f"language {lang!r} has only {which} examples: every training language "
                    "needs both harmful and harmless prompts"
                )
            if not np.all(np.isfinite(acts)):
                raise ValueError(
                    f"language {lang!r}: activations contain NaN or infinity; check the model's "
                    "dtype (fp16 overflow) and the activation extraction"
                )
            if dim is None:
                dim = acts.shape[-1]
            elif acts.shape[-1] != dim:
                source = "the model's hidden size" if self.model is not None else "other languages"
                raise ValueError(
                    f"language {lang!r}: activations have dimension {acts.shape[-1]}, but "
                    f"{source} is {dim}"
                )
            out[lang] = (self._blocks(acts), labels.astype(np.int64))
        return out

    def fit(self, train: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> HarmfulnessGate:
        """Fit directions, basis, readout, alpha and the zero-shot threshold (METHOD §2-§5).

        Thresholds set on a previous fit are dropped: they belong to the old logit scale.
        """
        data = self._validated_train(train)
        k = len(self.layers)
        bases = []
        for j in range(k):  # one basis per layer read, from that layer's language directions
            per_layer = {lang: (a[:, j], y) for lang, (a, y) in data.items()}
            langs, dirs = language_directions(per_layer)
            if self.config.readout == "low-rank":
                bases.append(svd_basis(dirs, self.config.rank).astype(np.float32))
        # The intervention layer (the last read) carries the steering/ablation direction.
        last = {lang: (a[:, -1], y) for lang, (a, y) in data.items()}
        direction = pooled_direction(last).astype(np.float32)

        blocks = np.concatenate([np.asarray(a, dtype=np.float64) for a, _ in data.values()])
        labels = np.concatenate([y for _, y in data.values()])
        self.basis = None if not bases else bases[0] if k == 1 else np.stack(bases)
        readout = LogisticReadout(
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            epochs=self.config.epochs,
            seed=self.config.seed,
        ).fit(self._features(blocks), labels)

        proj = blocks[:, -1] @ direction.astype(np.float64)
        self.direction = direction
        self.language_directions = {
            lang: d.astype(np.float32) for lang, d in zip(langs, dirs, strict=True)
        }
        self.readout = readout
        self.alpha = steering_alpha(
            proj[labels == 1], proj[labels == 0], lam=self.config.steering_lambda
        )
        self.training_languages = langs
        self.hidden_size = int(blocks.shape[-1])
        self.training_counts = {
            lang: {"harmful": int((y == 1).sum()), "harmless": int((y == 0).sum())}
            for lang, (_, y) in data.items()
        }
        self.zero_shot_threshold = balanced_f1_threshold(
            readout.decision_function(self._features(blocks)), labels
        )
        self.fitted_at = utc_now()
        self._thresholds = {}
        return self

    def _require_fitted(self) -> None:
        if self.readout is None:
            raise RuntimeError(
                "this HarmfulnessGate is not fitted: call fit(train) or HarmfulnessGate.load(path)"
            )

    # ----------------------------------------------------------------------------- scoring

    def score(self, h: np.ndarray) -> np.ndarray:
        """Gate logits: one prompt -> shape (), a batch -> shape (n,).

        Single-layer gate: ``(d,)`` or ``(n, d)``; k-layer gate: ``(k, d)`` or ``(n, k, d)``.
        """
        self._require_fitted()
        x = np.asarray(h, dtype=np.float64)
        k = len(self.layers)
        one = x.ndim == self._acts_ndim(batched=False)
        ok = x.ndim in (self._acts_ndim(batched=False), self._acts_ndim(batched=True))
        if not ok or x.shape[-1] != self.hidden_size or (k > 1 and x.shape[-2] != k):
            raise ValueError(
                f"activations must be {self._acts_shape_text()} (or one such row) with "
                f"d = {self.hidden_size}, got shape {x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError("activations contain NaN or infinity")
        blocks = self._blocks(x[None] if one else x)
        scores = self.readout.decision_function(self._features(blocks))
        return scores[0] if one else scores

    def linear_form(self) -> tuple[np.ndarray, float]:
        """(u, c) with ``score(h) == sum_j h_j @ u_j + c``: basis and standardisation folded in,
        so a serving hook evaluates the gate with one dot product per layer read. ``u`` is
        ``(d,)`` for a single-layer gate, ``(k, d)`` for a k-layer one."""
        self._require_fitted()
        r = self.readout
        scale = r.coef_.astype(np.float64) / r.std_.astype(np.float64)
        if self.config.readout == "full":
            u = scale.reshape(len(self.layers), -1)
        else:
            basis = self._basis3().astype(np.float64)
            u = np.einsum("kdr,kr->kd", basis, scale.reshape(basis.shape[0], -1))
        c = r.intercept_ - float(scale @ r.mean_.astype(np.float64))
        return (u[0] if u.shape[0] == 1 else u), float(c)

    def decide(self, h: np.ndarray, language: str) -> np.ndarray:
        """True where the gate calls the activation harmful under ``language``'s threshold."""
        return np.asarray(self.score(h) >= self.threshold(language).value)

    # ----------------------------------------------------------------------------- thresholds

    def threshold(self, language: str) -> ThresholdRecord:
        """The language's own threshold, or a "default" record carrying the zero-shot value."""
        self._require_fitted()
        lang = validate_language(language)
        own = self._thresholds.get(lang)
        if own is not None:
            return own
        return ThresholdRecord(
            language=lang,
            value=self.zero_shot_threshold,
            source="default",
            k=None,
            n_harmful=None,
            n_harmless=None,
            set_at=self.fitted_at,
            note=(
                f"no threshold set for {lang!r}: using the zero-shot threshold from the training "
                f"languages; recalibrate with a few labelled {lang!r} prompts per class"
            ),
        )

    @property
    def thresholds(self) -> dict[str, ThresholdRecord]:
        """The languages' own threshold records (a copy; fallbacks are not listed)."""
        return dict(self._thresholds)

    def set_threshold(
        self, language: str, value: float, source: str = "manual", note: str = ""
    ) -> ThresholdRecord:
        """Pin a language's threshold to ``value`` (e.g. an operator's choice)."""
        self._require_fitted()
        if source == "default":
            raise ValueError(
                "source 'default' means 'no own threshold': use clear_threshold(language) instead"
            )
        record = ThresholdRecord(
            language=validate_language(language),
            value=float(value),
            source=source,
            k=None,
            n_harmful=None,
            n_harmless=None,
            set_at=utc_now(),
            note=note,
        )
        self._thresholds[record.language] = record
        return record

    def clear_threshold(self, language: str) -> ThresholdRecord | None:
        """Drop a language's own threshold (it falls back to zero-shot); return what was removed."""
        return self._thresholds.pop(validate_language(language), None)

    def recalibrate(
        self,
        language: str,
        h: np.ndarray,
        labels: np.ndarray,
        *,
        note: str = "",
        min_auroc: float = MIN_PROTECTED_AUROC,
    ) -> ThresholdRecord:
        """Re-set ``language``'s threshold from labelled activations, >= 1 per class.

        The examples also test the representation: if the gate separates them with AUROC at
        most ``min_auroc`` (with k = 1: the harmful example does not score above the harmless
        one) the record is marked unprotected (see ``ThresholdRecord``).
        """
        x = np.asarray(h)
        if x.ndim != self._acts_ndim(batched=True):
            raise ValueError(
                f"recalibrate needs activations {self._acts_shape_text()}, got shape {x.shape}"
            )
        return self.recalibrate_from_scores(
            language, self.score(x), labels, note=note, min_auroc=min_auroc
        )

    def recalibrate_from_scores(
        self,
        language: str,
        scores: np.ndarray,
        labels: np.ndarray,
        *,
        note: str = "",
        min_auroc: float = MIN_PROTECTED_AUROC,
        evidence: tuple[np.ndarray, np.ndarray] | None = None,
        groups: Sequence[str] | None = None,
    ) -> ThresholdRecord:
        """Same rule as ``recalibrate`` when the gate scores are already known (serving hook).

        ``evidence`` (scores, labels) judges protection on more examples than the k that set
        the threshold (calibration has a language's whole pool); default: the k examples.
        ``groups`` (the examples' prompt families) weighs each family equally in the threshold
        rule (``gate.threshold.balanced_f1_threshold``). The record's abstain band
        (``harmless_below``) comes from the harmful examples of ``evidence``.
        """
        self._require_fitted()
        lang = validate_language(language)
        try:
            tau = balanced_f1_threshold(scores, labels, groups)
        except ValueError as err:
            raise ValueError(f"cannot recalibrate {lang!r}: {err}") from err
        y = np.asarray(labels).reshape(-1)
        n_harmful = int((y == 1).sum())
        n_harmless = int((y == 0).sum())
        ev_scores, ev_labels = evidence if evidence is not None else (scores, y)
        ev_scores, ev_labels = np.asarray(ev_scores), np.asarray(ev_labels)
        separation = auroc(ev_scores, ev_labels)
        protected = separation > min_auroc
        if not protected:
            note = (
                f"UNPROTECTED: the gate separates {lang!r}'s labelled examples with AUROC "
                f"{separation:.2f} (<= {min_auroc}); no threshold makes its decisions "
                f"meaningful, serving applies the unprotected-language fallback. {note}"
            ).strip()
        record = ThresholdRecord(
            language=lang,
            value=tau,
            source="recalibrated",
            k=min(n_harmful, n_harmless),
            n_harmful=n_harmful,
            n_harmless=n_harmless,
            set_at=utc_now(),
            note=note,
            auroc=float(separation),
            protected=bool(protected),
            harmless_below=harmless_below(ev_scores[ev_labels == 1], tau, HARMLESS_BAND_SHARE),
        )
        self._thresholds[lang] = record
        return record

    def set_traffic_threshold(
        self,
        language: str,
        scores: np.ndarray,
        reference_scores: np.ndarray,
        reference: ThresholdRecord,
        *,
        quantile: float = 0.25,
        note: str = "",
    ) -> ThresholdRecord:
        """Set ``language``'s threshold without labels, from unlabelled prompts of it.

        ``gate.threshold.traffic_threshold``: the ``reference`` language's threshold (one set
        from labels) moved by how far ``language``'s unlabelled gate scores sit from the
        reference's unlabelled ``reference_scores`` at ``quantile``. Nothing measures how well
        the gate separates the language, so the record carries no AUROC and no abstain band.
        """
        self._require_fitted()
        lang = validate_language(language)
        if reference.language == lang:
            raise ValueError(f"{lang!r} cannot be its own reference: name a labelled language")
        if reference.source not in ("recalibrated", "manual", "zero-shot"):
            raise ValueError(
                f"reference {reference.language!r} has a {reference.source} threshold: the "
                "reference needs one set from labels (recalibrate it first)"
            )
        counts = (np.asarray(scores).size, np.asarray(reference_scores).size)
        if min(counts) < MIN_TRAFFIC_PROMPTS:
            raise ValueError(
                f"the traffic rule needs at least {MIN_TRAFFIC_PROMPTS} unlabelled prompts of "
                f"each language, got {counts[0]} of {lang!r} and {counts[1]} of "
                f"{reference.language!r}"
            )
        value = traffic_threshold(scores, reference_scores, reference.value, quantile)
        how = (
            f"traffic rule: the threshold of {reference.language!r} ({reference.value:.4f}) moved "
            f"by the shift of the {quantile:g} quantiles of unlabelled scores ({counts[0]} "
            f"{lang!r}, {counts[1]} {reference.language!r} prompts); not checked against labels"
        )
        record = ThresholdRecord(
            language=lang, value=value, source="traffic", k=None, n_harmful=None,
            n_harmless=None, set_at=utc_now(), note=f"{how}. {note}".strip(),
        )  # fmt: skip
        self._thresholds[lang] = record
        return record

    def set_band(self, language: str, harmful_scores: np.ndarray,
                 max_share: float = HARMLESS_BAND_SHARE) -> ThresholdRecord:
        """Measure ``language``'s abstain band from the gate scores of its harmful labelled
        examples, keeping its threshold (a band for an artifact calibrated before bands)."""
        self._require_fitted()
        lang = validate_language(language)
        if lang not in self._thresholds:
            raise ValueError(f"{lang!r} has no threshold of its own to put a band under")
        record = replace(self._thresholds[lang], harmless_below=harmless_below(
            harmful_scores, self._thresholds[lang].value, max_share))  # fmt: skip
        self._thresholds[lang] = record
        return record

    @property
    def unprotected_languages(self) -> list[str]:
        """Languages whose records say no threshold protects them (sorted)."""
        return sorted(lang for lang, rec in self._thresholds.items() if not rec.protected)

    def family_auroc(self, language: str) -> dict[str, float]:
        """The calibration's cross-fitted AUROC per prompt family for ``language`` (metadata
        ``family_auroc``; empty when not measured: one-family data, an artifact older than the
        check, or a language the data lacked)."""
        return dict(self.metadata.get("family_auroc", {}).get(language, {}))

    def weak_families(self, language: str) -> list[str]:
        """The prompt families on which ``language`` fell below the calibration's floor
        (metadata ``weak_family_auroc``, default ``WEAK_FAMILY_AUROC``), sorted."""
        floor = float(self.metadata.get("weak_family_auroc", WEAK_FAMILY_AUROC))
        return sorted(f for f, v in self.family_auroc(language).items() if v < floor)

    # ----------------------------------------------------------------------------- persistence

    def _tensors(self) -> dict[str, np.ndarray]:
        r = self.readout
        basis = {} if self.basis is None else {"basis": self.basis}
        return {
            "direction": self.direction,
            **basis,
            "language_directions": np.stack(
                [self.language_directions[lang] for lang in self.training_languages]
            ),
            "readout.mean": r.mean_,
            "readout.std": r.std_,
            "readout.coef": r.coef_,
            "readout.intercept": np.array([r.intercept_], dtype=np.float32),
        }

    def _tensor_bytes(self) -> bytes:
        return safetensors.numpy.save(
            {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in self._tensors().items()}
        )

    def _thresholds_json(self) -> dict[str, Any]:
        return {lang: rec.to_dict() for lang, rec in sorted(self._thresholds.items())}

    def save(
        self,
        path: str | Path,
        *,
        force: bool = False,
        extra_files: Mapping[str, bytes] | None = None,
    ) -> Path:
        """Write the gate as one directory (tensors + manifest), atomically.

        ``extra_files`` (file name -> bytes, e.g. the calibration report) are written into the
        same directory in the same atomic step; loading ignores them. An existing ``path`` is
        refused unless ``force``; then it is replaced as a whole.
        """
        self._require_fitted()
        extra = dict(extra_files or {})
        _check_extra_names(extra)
        tensor_bytes = self._tensor_bytes()
        manifest_bytes = _manifest_bytes(self._manifest(sha256_bytes(tensor_bytes)))
        files = {**extra, TENSORS_NAME: tensor_bytes, MANIFEST_NAME: manifest_bytes}
        return write_directory_atomic(Path(path), files, force=force)

    def _manifest(self, tensors_sha256: str) -> dict[str, Any]:
        """What ``save`` writes to the manifest beside tensors with checksum ``tensors_sha256``."""
        cfg = self.config
        return {
            "format_version": FORMAT_VERSION,
            "babelgate_version": babelgate_version(),
            "created_at": utc_now(),
            "fitted_at": self.fitted_at,
            "model": asdict(self.model) if self.model is not None else None,
            "layer": cfg.layer,
            "feature_layers": list(cfg.feature_layers),
            "readout": cfg.readout,
            "rank": cfg.rank,
            "hidden_size": self.hidden_size,
            "alpha": self.alpha,
            "steering_lambda": cfg.steering_lambda,
            "training_languages": self.training_languages,
            "zero_shot_threshold": self.zero_shot_threshold,
            "thresholds": self._thresholds_json(),
            "training": {
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "epochs": cfg.epochs,
                "seed": cfg.seed,
                "examples": self.training_counts,
            },
            "metadata": self.metadata,
            "tensors_sha256": tensors_sha256,
        }

    def save_thresholds(self, path: str | Path) -> None:
        """Rewrite only the thresholds in the manifest of the artifact at ``path`` (atomically).

        Refuses an artifact holding a different gate, so thresholds never land on tensors they
        were not computed for.
        """
        self._require_fitted()
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("tensors_sha256") != sha256_bytes(self._tensor_bytes()):
            raise ArtifactError(
                f"the artifact at {path} holds a different gate than this one: load it with "
                "HarmfulnessGate.load and set thresholds on that gate, or save() this gate there "
                "with force=True"
            )
        manifest["thresholds"] = self._thresholds_json()
        write_json_atomic(path / MANIFEST_NAME, manifest)

    @classmethod
    def load(cls, path: str | Path, *, expect_model: ModelInfo | None = None) -> HarmfulnessGate:
        """Read a gate written by ``save``; ``ArtifactError`` says what to do when it cannot."""
        path = Path(path)
        manifest = read_manifest(path)
        model = _manifest_model(path, manifest, cls.MANIFEST_KEYS)
        if expect_model is not None:
            check_model(path, model, expect_model)
        tensors = _read_tensors(path, manifest)
        gate, stored = cls._from_manifest(path, manifest, model)
        _check_tensors(path, tensors, gate.config, stored)
        gate._restore(tensors, stored, str(manifest["fitted_at"]))
        return gate

    @classmethod
    def _from_manifest(
        cls, path: Path, manifest: Mapping[str, Any], model: ModelInfo | None
    ) -> tuple[HarmfulnessGate, _StoredFields]:
        """An unfitted gate with the manifest's configuration, and the manifest's other
        fields parsed and checked."""
        try:
            training = manifest["training"]
            config = GateConfig(
                layer=manifest["layer"],
                rank=manifest["rank"],
                lr=training["lr"],
                weight_decay=training["weight_decay"],
                epochs=training["epochs"],
                seed=training["seed"],
                steering_lambda=manifest["steering_lambda"],
                feature_layers=tuple(manifest.get("feature_layers") or ()),
                readout=manifest.get("readout", "low-rank"),
            )
            gate = cls(config, model)
            stored = _StoredFields(
                languages=[validate_language(lang) for lang in manifest["training_languages"]],
                hidden=int(manifest["hidden_size"]),
                thresholds={
                    lang: ThresholdRecord.from_dict(rec)
                    for lang, rec in manifest["thresholds"].items()
                },
                counts={lang: dict(c) for lang, c in training["examples"].items()},
                alpha=float(manifest["alpha"]),
                zero_shot=float(manifest["zero_shot_threshold"]),
                metadata=dict(manifest["metadata"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ArtifactError(
                f"{path / MANIFEST_NAME} has invalid values ({err}): {_REDO}"
            ) from err
        for lang, rec in stored.thresholds.items():
            if rec.language != lang:
                raise ArtifactError(
                    f"{path / MANIFEST_NAME}: threshold stored under {lang!r} is for "
                    f"{rec.language!r}; fix the entry or recalibrate that language"
                )
        return gate, stored

    def _restore(self, tensors: Mapping[str, np.ndarray], stored: _StoredFields,
                 fitted_at: str) -> None:  # fmt: skip
        """Set the fitted state from checked tensors and manifest fields."""
        config = self.config
        readout = LogisticReadout(
            lr=config.lr, weight_decay=config.weight_decay, epochs=config.epochs, seed=config.seed
        )
        readout.mean_ = tensors["readout.mean"]
        readout.std_ = tensors["readout.std"]
        readout.coef_ = tensors["readout.coef"]
        readout.intercept_ = float(tensors["readout.intercept"][0])
        self.direction = tensors["direction"]
        self.basis = tensors.get("basis")
        self.language_directions = dict(
            zip(stored.languages, tensors["language_directions"], strict=True)
        )
        self.readout = readout
        self.alpha = stored.alpha
        self.zero_shot_threshold = stored.zero_shot
        self.training_languages = stored.languages
        self.hidden_size = stored.hidden
        self.training_counts = stored.counts
        self.fitted_at = fitted_at
        self.metadata = stored.metadata
        self._thresholds = stored.thresholds


_REDO = "run `babelgate calibrate` again to rebuild the artifact"


@dataclass
class _StoredFields:
    """The manifest fields ``HarmfulnessGate.load`` restores besides the configuration."""

    languages: list[str]
    hidden: int
    thresholds: dict[str, ThresholdRecord]
    counts: dict[str, dict]
    alpha: float
    zero_shot: float
    metadata: dict[str, Any]


def _check_extra_names(extra: Mapping[str, bytes]) -> None:
    """Extra artifact files must be plain names other than the tensors' and manifest's."""
    for name in extra:
        reserved = name in (TENSORS_NAME, MANIFEST_NAME)
        if reserved or not name or Path(name).name != name or name.startswith("."):
            raise ValueError(
                f"extra file name {name!r} is not allowed: use a plain file name other than "
                f"{TENSORS_NAME} and {MANIFEST_NAME}"
            )


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest as strict JSON (finite numbers only), newline-terminated."""
    try:
        manifest_text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"gate metadata must be JSON-serialisable with finite numbers: {err}"
        ) from err
    return (manifest_text + "\n").encode()


def _manifest_model(
    path: Path, manifest: Mapping[str, Any], keys: Sequence[str]
) -> ModelInfo | None:
    """The manifest's model, after checking it holds every key in ``keys``."""
    missing = [key for key in keys if key not in manifest]
    if missing:
        raise ArtifactError(f"{path / MANIFEST_NAME} lacks {', '.join(missing)}: {_REDO}")
    try:
        return ModelInfo(**manifest["model"]) if manifest["model"] is not None else None
    except TypeError as err:
        raise ArtifactError(
            f"{path / MANIFEST_NAME} has a malformed model entry: {_REDO}"
        ) from err


def _read_tensors(path: Path, manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The artifact's tensors, checked against the manifest's checksum."""
    tensors_path = path / TENSORS_NAME
    if not tensors_path.is_file():
        raise ArtifactError(f"{path} has no {TENSORS_NAME} (incomplete artifact): {_REDO}")
    data = tensors_path.read_bytes()
    if sha256_bytes(data) != manifest["tensors_sha256"]:
        raise ArtifactError(
            f"{tensors_path} does not match the checksum in its manifest: the file is "
            f"corrupt or was replaced; {_REDO}"
        )
    try:
        return safetensors.numpy.load(data)
    except SafetensorError as err:
        raise ArtifactError(f"{tensors_path} cannot be read ({err}): {_REDO}") from err


def _check_tensors(
    path: Path, tensors: Mapping[str, np.ndarray], config: GateConfig, stored: _StoredFields
) -> None:
    """The tensors have the shapes the manifest implies and are finite."""
    tensors_path = path / TENSORS_NAME
    hidden, langs = stored.hidden, stored.languages
    k = len(config.layers)
    full = config.readout == "full"
    rank = hidden if full else config.rank  # features per layer read
    expected = {
        "direction": (hidden,),
        **({} if full else {"basis": (hidden, rank) if k == 1 else (k, hidden, rank)}),
        "language_directions": (len(langs), hidden),
        "readout.mean": (k * rank,),
        "readout.std": (k * rank,),
        "readout.coef": (k * rank,),
        "readout.intercept": (1,),
    }
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if shapes != expected:
        raise ArtifactError(
            f"{tensors_path} holds tensors {shapes} but its manifest (hidden size {hidden}, "
            f"{config.readout} readout, {rank} features per layer, {len(langs)} languages) "
            f"implies {expected}: {_REDO}"
        )
    if not all(np.all(np.isfinite(t)) for t in tensors.values()):
        raise ArtifactError(f"{tensors_path} contains NaN or infinity: {_REDO}")
