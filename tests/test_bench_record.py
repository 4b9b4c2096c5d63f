"""``bench/record.py``: a bench run leaves a JSON record of its command, commit, machine, load and
raw figures, without this machine's paths in it, and never over an earlier record.

The end-to-end test runs the real ``bench/langid_cost.py`` (no model; seconds) as a script.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import polyrefuse_or_skip

REPO = Path(__file__).resolve().parents[1]


def load_record_module():
    """``bench/record.py`` as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_record", REPO / "bench" / "record.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


record = load_record_module()


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


def test_a_bench_run_records_its_command_commit_machine_and_every_round(tmp_path: Path) -> None:
    polyrefuse_or_skip()
    out = tmp_path / "cost.json"
    args = ["--per-set", "20", "--rounds", "3", f"--out={out}"]
    run = subprocess.run([sys.executable, "bench/langid_cost.py", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    assert data["command"] == ["python", "bench/langid_cost.py", "--per-set", "20", "--rounds",
                               "3", "--out=cost.json"]  # fmt: skip
    changed = git("status", "--porcelain").splitlines()
    assert data["git"]["commit"] == git("rev-parse", "HEAD").strip()
    assert data["git"]["dirty"] == bool(changed)
    assert data["git"]["changed"] == [line[3:] for line in changed]  # paths, status cut off
    assert data["machine"]["cores"] == os.cpu_count()
    assert len(data["load_average_before"]) == len(data["load_average_after"]) == 3
    assert str(tmp_path) not in out.read_text()
    assert len(data["figures"]) == 3  # pure, mixed, long
    for name, figures in data["figures"].items():
        rounds = figures["us_per_call_by_round"]["now"]
        assert len(rounds) == 3
        assert data["summary"]["best_us_per_call"][name]["now"] == min(rounds)
    assert f"record: {out.name}" in run.stdout


def test_paths_are_relative_to_the_repository_or_basenames_and_url_secrets_hidden() -> None:
    assert record.portable(str(REPO / "server" / "artifacts" / "x")) == "server/artifacts/x"
    assert record.portable(str(REPO.parent / "elsewhere" / "model")) == "model"
    assert record.portable("postgresql://user:s3cret@db:5432/x") == "postgresql://user:***@db:5432/x"
    assert record.portable("postgresql://db/x") == "postgresql://db/x"
    command = record.command_line("overhead", ["--rounds", "5", f"--artifact={REPO.parent}/a"])
    assert command == ["python", "bench/overhead.py", "--rounds", "5", "--artifact=a"]


def test_spread_is_the_median_and_range_with_quartiles_from_four_rounds() -> None:
    assert record.spread([1.2, 0.9, 1.0]) == {"n": 3, "median": 1.0, "min": 0.9, "max": 1.2}
    five = record.spread([0.95, 1.05, 0.98, 1.0, 1.01])
    assert (five["median"], five["min"], five["max"]) == (1.0, 0.95, 1.05)
    assert five["q1"] == pytest.approx(0.98) and five["q3"] == pytest.approx(1.01)
    assert record.describe(five) == "1.000 (0.950-1.050, 5 rounds)"


def test_a_default_record_path_never_replaces_an_earlier_record(tmp_path: Path) -> None:
    first = record.default_path("serving", tmp_path)
    assert first.name.startswith("serving-") and first.suffix == ".json"
    first.write_text("{}")
    second = record.default_path("serving", tmp_path)
    assert second != first and second.stem == f"{first.stem}-2"
