"""Shared fixtures: PolyRefuse (``paths.data_dir()``: $BABELGATE_DATA or ../shared), the
embedded model (converted once, cached), a PostgreSQL server (``pgcluster``), a small fitted
gate, and polling for something another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pgcluster import Cluster, postgres_cluster

from babelgate.gate.estimator import GateConfig, HarmfulnessGate
from babelgate.gate.hf.embedded import SMOLLM2  # the fast model the mechanism tests run on
from babelgate.paths import DATA_ENV, data_dir


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
    from babelgate.gate.hf.embedded import ensure_embedded_model

    return ensure_embedded_model(SMOLLM2.id)


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory, polyrefuse_dir, embedded_model_dir) -> Path:
    """The embedded model calibrated on a small PolyRefuse subset through the real CLI.

    One per test session (about a minute on 2 cores); tests that change it work on a copy.
    """
    from babelgate.cli.main import main

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


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A PostgreSQL server for the session (a throwaway cluster unless one is named)."""
    with postgres_cluster() as cluster:
        yield cluster


def fitted_gate() -> HarmfulnessGate:
    """A real gate fitted on synthetic 8-d activations of en and de (separable along axis 0)."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(30)].astype(np.int64)
    train = {}
    for lang in ("en", "de"):
        a = rng.normal(size=(60, 8))
        a[:, 0] += 3 * y
        train[lang] = (a, y)
    return HarmfulnessGate(GateConfig(layer=3, rank=2)).fit(train)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` did not happen. The bound is
    generous on purpose: it catches a change that never arrives, not a slow one."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.01)
