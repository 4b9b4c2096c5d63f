"""Shared fixtures: where ../shared lives, and the embedded model (converted once, cached)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gate.hf.embedded import SMOLLM2  # the fast model the mechanism tests run on

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
POLYREFUSE = SHARED / "data" / "polyrefuse"


@pytest.fixture(scope="session")
def polyrefuse_dir() -> Path:
    if not POLYREFUSE.is_dir():
        pytest.fail(f"PolyRefuse not found at {POLYREFUSE}: tests read it from ../shared")
    return POLYREFUSE


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from gate.hf.embedded import ensure_embedded_model

    return ensure_embedded_model(SMOLLM2.id)


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory, polyrefuse_dir, embedded_model_dir) -> Path:
    """The embedded model calibrated on a small PolyRefuse subset through the real CLI.

    One per test session (about a minute on 2 cores); tests that change it work on a copy.
    """
    from server.cli import main

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
