"""Shared fixtures: where ../shared lives, and the embedded model (converted once, cached)."""

from __future__ import annotations

from pathlib import Path

import pytest

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

    return ensure_embedded_model()
