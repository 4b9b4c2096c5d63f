"""The gate calibrations shipped with babelgate for its embedded models.

Runs in the API-server / CLI process. ``babelgate serve`` (and ``eval``) on an embedded model
without ``--artifact`` use the shipped calibration at once instead of calibrating on first use
(15 minutes and more on 2 CPU cores). Each was made by ``babelgate calibrate``; the command that
rebuilds it is in ``server/artifacts/README.md`` and in its ``calibration_report.json``. Loading
checks it against the model's fingerprint (``HarmfulnessGate.load(expect_model=...)``) and the
engine's start-up self-check runs on it like on any artifact.
"""

from __future__ import annotations

import os
from pathlib import Path

from babelgate.gate.hf.embedded import embedded_model

SHIPPED_DIR = Path(__file__).resolve().parent / "artifacts"
# The shipped calibrations' folder names, in the order a model's default is chosen:
# "crossdata" (the configuration chosen on a held-out dataset, scripts/gate_search.py; shipped
# where that was measured), "robust" (layers chosen by held-out prompt family), "paper"
# (METHOD.md's reproduction).
SHIPPED_PRESETS: tuple[str, ...] = ("crossdata", "robust", "paper")


def shipped_artifact(
    model: str | os.PathLike[str] | None, preset: str | None = None
) -> Path | None:
    """The shipped calibration of ``model`` named ``preset`` (None: the model's default, the
    first of ``SHIPPED_PRESETS`` shipped for it), or None when ``model`` is not an embedded
    model or nothing is shipped for it."""
    if preset is not None and preset not in SHIPPED_PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(SHIPPED_PRESETS)}")
    spec = embedded_model(model)
    if spec is None:
        return None
    for name in SHIPPED_PRESETS if preset is None else (preset,):
        path = SHIPPED_DIR / spec.slug / name
        if (path / "manifest.json").is_file():
            return path
    return None
