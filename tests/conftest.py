"""Shared fixtures: PolyRefuse (``paths.data_dir()``: $BABELGATE_DATA or ../shared), and the
embedded model (converted once, cached)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gate.hf.embedded import SMOLLM2  # the fast model the mechanism tests run on
from paths import DATA_ENV, data_dir


def polyrefuse_or_skip() -> Path:
    """PolyRefuse, or skip the calling test saying where it was looked for."""
    found = data_dir()
    if found is None or not found.is_dir():
        where = f"at {found}" if found else f"(${DATA_ENV} unset, no ../shared/data/polyrefuse)"
        pytest.skip(f"PolyRefuse not found {where}: set ${DATA_ENV} to a PolyRefuse folder")
    return found


@pytest.fixture(scope="session")
def polyrefuse_dir() -> Path:
    return polyrefuse_or_skip()


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from gate.hf.embedded import ensure_embedded_model

    return ensure_embedded_model(SMOLLM2.id)


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory, polyrefuse_dir, embedded_model_dir) -> Path:
    """The embedded model calibrated on a small PolyRefuse subset through the real CLI.

    One per test session (about a minute on 2 cores); tests that change it work on a copy.
    """
    from cli.main import main

    out = tmp_path_factory.mktemp("cal") / "artifact"
    code = main(
        [
            "calibrate",
            "--model", SMOLLM2.id,
            "--data", str(polyrefuse_dir),
            "--out", str(out),
            "--languages", "en,de,yo",
            "--max-per-class", "24",
            "--seed", "0",
            "--no-progress",
        ]
    )
    assert code == 0, "calibrating the embedded model failed"
    return out
