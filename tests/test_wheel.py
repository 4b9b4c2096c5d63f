"""The distribution installs one import name, ``babelgate``, with its data, script and plugin.

Builds the wheel from this checkout (pip, no build isolation: the venv's setuptools, nothing
downloaded) and installs it without dependencies into a new, empty virtual environment, then
compares what that environment's site-packages holds with what it held before. The folders
``gate/``, ``server/``, ... of the checkout must arrive as ``babelgate.gate``, ``babelgate.server``:
a generic top-level ``server`` or ``paths`` would shadow, or be shadowed by, other packages.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def checkout_files() -> list[str]:
    """The files of the checkout git would commit (tracked, or new and not ignored)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    return [name for name in listed.splitlines() if (REPO / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the checkout's files: setuptools builds in the source tree, and a
    stale ``build/`` there could carry files the checkout no longer has."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(out), str(source)], check=True, capture_output=True)
    (built,) = out.glob("babelgate-*.whl")
    return built


def site_packages(env: Path) -> Path:
    (found,) = env.glob("lib/python3*/site-packages")
    return found


def test_a_clean_install_adds_only_babelgate(wheel: Path, tmp_path: Path) -> None:
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    before = {p.name for p in site_packages(env).iterdir()}
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)  # fmt: skip
    added = {p.name for p in site_packages(env).iterdir()} - before
    assert {a for a in added if not a.endswith(".dist-info")} == {"babelgate"}, sorted(added)
    assert (env / "bin" / "babelgate").exists()


def test_the_wheel_carries_every_subpackage_data_and_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        parsed = configparser.ConfigParser()
        parsed.read_string(zf.read(entry_points).decode())
    packages = {str(Path(name).parent) for name in checkout_files()
                if name.endswith("/__init__.py") and not name.startswith("tests/")}  # fmt: skip
    assert {"babelgate", "gate/hf", "server/engine", "evaluation/baselines"} <= packages
    for package in packages:  # gate/hf -> babelgate/gate/hf/__init__.py
        path = package if package == "babelgate" else f"babelgate/{package}"
        assert f"{path}/__init__.py" in names, package
    assert "babelgate/refusal/markers.json" in names
    shipped = "babelgate/server/artifacts/qwen2.5-coder-0.5b/crossdata/"
    assert any(n.startswith(shipped) for n in names)
    assert any(n.startswith("babelgate/evaluation/data/styles/") for n in names)
    assert parsed["console_scripts"]["babelgate"] == "babelgate.cli.main:main"
    plugin = parsed["vllm.general_plugins"]["babelgate_parent_watch"]
    assert plugin == "babelgate.server.engine.parent_watch:register"
