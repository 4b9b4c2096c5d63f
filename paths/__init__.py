"""Where babelgate keeps its caches and finds its data: the one place every caller asks.

A leaf package below everything else: it imports nothing of babelgate, so each layer may use it.
It lives here, not in ``gate/``, because finding data is a product concern, not the method's:
``gate/`` itself never imports it except ``gate/hf/``, the model-loading part of the library,
which converts the embedded model into ``cache_root()`` on first use (threading a cache root
through every model loader instead would change the signature of every backend). The data
locations are for ``server`` (the default calibration made on first use), ``evaluation``,
``cli``, the tests and the benchmarks.

- ``cache_root()``: ``$BABELGATE_CACHE``, else ``$XDG_CACHE_HOME/babelgate``, else
  ``~/.cache/babelgate`` (embedded models, default calibrations, activations, admin state).
- ``data_dir()``: PolyRefuse, ``$BABELGATE_DATA``, else ``shared/data/polyrefuse`` beside this
  checkout (the layout of the project's machines and CI: ``../shared`` next to the repository).
- ``style_prompts_dir()``: the question and narrative prompts written for this project,
  shipped as package data of ``evaluation`` (``evaluation/data/styles``; located, not imported).
- ``default_data_sources()``: what the default calibration trains on (the two above).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CACHE_ENV = "BABELGATE_CACHE"
DATA_ENV = "BABELGATE_DATA"
SHARED_POLYREFUSE = Path("shared") / "data" / "polyrefuse"


def cache_root() -> Path:
    """Root of babelgate's caches (embedded models, default calibrations, activations)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "babelgate"


def data_dir() -> Path | None:
    """PolyRefuse: ``$BABELGATE_DATA``, else ``shared/data/polyrefuse`` beside this checkout
    (searched upwards from this file), else None."""
    if env := os.environ.get(DATA_ENV):
        return Path(env).expanduser()
    for parent in Path(__file__).resolve().parents:
        candidate = parent / SHARED_POLYREFUSE
        if candidate.is_dir():
            return candidate
    return None


def style_prompts_dir() -> Path | None:
    """The question and narrative prompts written for this project (14 languages), shipped as
    package data of ``evaluation``: the second prompt family of the default calibration."""
    spec = importlib.util.find_spec("babelgate.evaluation")  # locates it without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "styles"
    return path if path.is_dir() else None


def default_data_sources() -> list[Path]:
    """The default calibration data: PolyRefuse and the project's style prompts."""
    polyrefuse = data_dir()
    if polyrefuse is None:
        raise FileNotFoundError(
            f"no calibration data: set {DATA_ENV} to a PolyRefuse folder, or pass --data "
            "(and --artifact A to serve an artifact made elsewhere)"
        )
    styles = style_prompts_dir()
    return [polyrefuse] + ([styles] if styles is not None else [])
