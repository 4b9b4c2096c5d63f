"""Calibration as the product runs it: ``babelgate calibrate`` and ``recalibrate``, and the default
calibration ``babelgate serve`` uses when no artifact is given (made on first use and cached).

Runs in the CLI / API-server process. The method (``gate.calibration``, ``HarmfulnessGate``)
fits and recalibrates a gate on whatever activations it is given; choosing the data by default
(``paths.default_data_sources``), the activation backend (transformers or vLLM), the caches
(``paths.cache_root``) and the files read and written is the product's, so it lives here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from babelgate.gate.activation_cache import CachedBackend
from babelgate.gate.activations import ActivationBackend
from babelgate.gate.calibration import (
    DEFAULT_ARTIFACT_REVISION,
    CalibrationOptions,
    calibrate,
    resolve_preset,
)
from babelgate.gate.data import DataError, check_both_classes, load_dataset, load_file
from babelgate.gate.estimator import HarmfulnessGate, ThresholdRecord
from babelgate.gate.hf.backend import TransformersBackend
from babelgate.gate.hf.model_source import model_info
from babelgate.gate.kshot import kshot_indices, kshot_rng
from babelgate.gate.languages import validate_language
from babelgate.paths import cache_root, default_data_sources
from babelgate.server.engine.vllm_backend import VLLMBackend


def ensure_default_artifact(
    model: str | Path | None = None,
    *,
    progress: bool = True,
    on_calibrate: Callable[[Path], None] | None = None,
) -> Path:
    """The cached calibration of the embedded (or given) model, made on first use.

    Cached under ``<cache>/artifacts/<model fingerprint>-default-<preset>-r<revision>``; a
    finished artifact is reused, an interrupted calibration leaves nothing behind (artifacts
    are written atomically, activations are cached as they are computed). The data are
    ``default_data_sources()``, so ``auto`` resolves to the robust preset when the style
    prompts are installed. ``on_calibrate(target)`` is called when no cached artifact exists,
    before the calibration (minutes) starts, so a caller can say why it waits.
    """
    sources = default_data_sources()
    prompts = [p for src in sources for p in load_dataset(src)]
    options = CalibrationOptions(
        eval_max_per_class=32,
        progress=progress,
        data_name=" + ".join(str(src) for src in sources),
    )
    preset, _ = resolve_preset(prompts, options)
    info = model_info(model)
    name = f"{info.fingerprint}-default-{preset}-r{DEFAULT_ARTIFACT_REVISION}"
    target = cache_root() / "artifacts" / name
    if (target / "manifest.json").is_file():
        return target
    if on_calibrate is not None:
        on_calibrate(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    backend = CachedBackend(TransformersBackend(model), cache_root() / "activations")
    calibrate(backend, prompts, target, options, force=False)
    return target


def make_backend(
    model: str | Path | None, backend: str = "transformers", dtype: str = "float32"
) -> ActivationBackend:
    """The activation backend asked for: ``transformers`` (in process) or ``vllm``."""
    if backend == "vllm":
        return VLLMBackend(model, dtype=dtype)
    return TransformersBackend(model, dtype=getattr(torch, dtype))


def calibrate_artifact(
    out: str | Path | None,
    options: CalibrationOptions,
    *,
    model: str | Path | None = None,
    data: Sequence[str | Path] | None = None,
    backend: str = "transformers",
    dtype: str = "float32",
    activation_cache: bool = True,
    force: bool = False,
) -> tuple[Path, dict[str, Any] | None]:
    """``babelgate calibrate``: fit the gate for ``model`` on ``data`` (default: the default
    calibration data) and write the artifact to ``out``; returns it with its report. Without
    ``out``: the model's cached default calibration (made on first use), with no report."""
    if out is None:
        return ensure_default_artifact(model, progress=options.progress), None
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists: choose another --out or pass --force to replace it")
    sources = list(data or default_data_sources())
    prompts = [p for src in sources for p in load_dataset(src)]  # validated before the model
    options = dataclasses.replace(options, data_name=" + ".join(str(src) for src in sources))
    resolve_preset(prompts, options)  # a robust preset the data cannot serve fails here
    acts = make_backend(model, backend, dtype)
    if activation_cache:
        acts = CachedBackend(acts, cache_root() / "activations")
    _, report = calibrate(acts, prompts, out, options, force=force)
    return out, report


def recalibrate_language(
    artifact: str | Path,
    language: str,
    examples_path: str | Path,
    *,
    k: int | None = None,
    seed: int = 0,
    model: str | None = None,
) -> tuple[ThresholdRecord, ThresholdRecord]:
    """``babelgate recalibrate``: set ``language``'s threshold in ``artifact`` from the labelled
    examples in ``examples_path`` (k per class, drawn with ``seed``, or all), scored with the
    artifact's model (or ``model``); rewrites the manifest. Returns (old, new) threshold."""
    language = validate_language(language)
    examples = load_file(examples_path, language=language)
    examples = [e for e in examples if e.language == language] or examples
    check_both_classes(examples, str(examples_path))
    if k is not None:
        if k < 1:
            raise DataError("--k must be at least 1")
        labels = [e.label for e in examples]
        for label in (1, 0):
            if labels.count(label) < k:
                raise DataError(
                    f"--k {k} but only {labels.count(label)} examples with label {label}"
                )
        draw = kshot_indices(labels, k, kshot_rng(seed, language, k))
        examples = [examples[i] for i in draw]
    gate, scores = _scored(artifact, [e.text for e in examples], model)
    labels = np.array([e.label for e in examples])
    old = gate.threshold(language)
    record = gate.recalibrate_from_scores(language, scores, labels)
    record.note = f"{record.note} babelgate recalibrate from {examples_path}".strip()
    gate.save_thresholds(artifact)
    return old, record


def _scored(
    artifact: str | Path, texts: Sequence[str], model: str | None
) -> tuple[HarmfulnessGate, np.ndarray]:
    """The artifact's gate (checked against the model) and its scores of ``texts``.

    Through the activation cache ``babelgate calibrate`` fills: the texts of a recalibration or
    band measurement are usually the calibration data itself, already read once."""
    gate = HarmfulnessGate.load(artifact)
    backend = CachedBackend(TransformersBackend(model or gate.model.id),
                            cache_root() / "activations")  # fmt: skip
    gate = HarmfulnessGate.load(artifact, expect_model=backend.model_info)
    acts = gate.inputs(backend.activations(list(texts), list(gate.layers), progress=False))
    return gate, gate.score(acts)


def band_languages(
    artifact: str | Path,
    languages: Sequence[str],
    examples_path: str | Path,
    *,
    model: str | None = None,
) -> list[tuple[ThresholdRecord, ThresholdRecord]]:
    """``babelgate recalibrate --band-only``: measure each language's abstain band in
    ``artifact`` from the harmful train rows of ``examples_path`` (a file, or any dataset
    ``load_dataset`` reads, e.g. the PolyRefuse folder the artifact was calibrated on), keeping
    its threshold; rewrites the manifest once. Returns (old, new) record per language."""
    wanted = [validate_language(x) for x in languages]
    rows = [e for e in load_dataset(examples_path, languages=wanted, splits=("train",))
            if e.label == 1]  # fmt: skip
    by_language = {lang: [e.text for e in rows if e.language == lang] for lang in wanted}
    empty = [lang for lang, texts in by_language.items() if not texts]
    if empty:
        raise DataError(f"{examples_path}: no harmful train examples for {', '.join(empty)}")
    gate, scores = _scored(artifact, [t for texts in by_language.values() for t in texts], model)
    out, start = [], 0
    for lang, texts in by_language.items():
        old = gate.threshold(lang)
        record = gate.set_band(lang, scores[start : start + len(texts)])
        start += len(texts)
        record.note = "; ".join(filter(None, [record.note, "babelgate recalibrate --band-only: "
                                             f"abstain band from {len(texts)} harmful train "
                                             "examples"]))  # fmt: skip
        out.append((old, record))
    gate.save_thresholds(artifact)
    return out
