"""The default calibration: the gate artifact ``babelgate serve`` and ``calibrate`` use when none
is given, made on first use and cached.

Runs in the CLI / API-server process. The method (``gate.calibration``) fits a gate on whatever
prompts it is given; deciding *which* data that is by default (``paths.default_data_sources``)
and where the result is kept (``paths.cache_root``) is the product's, so it lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gate.calibration import (
    DEFAULT_ARTIFACT_REVISION,
    CalibrationOptions,
    calibrate,
    resolve_preset,
)
from gate.data import load_dataset
from paths import cache_root, default_data_sources


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
    # Lazy: transformers and torch, only when a model is loaded.
    from gate.activation_cache import CachedBackend
    from gate.hf.backend import TransformersBackend
    from gate.hf.model_source import model_info

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
