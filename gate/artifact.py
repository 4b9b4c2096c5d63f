"""Gate artifacts on disk: which model a gate belongs to, and crash-safe writes.

Runs in any process: the calibration CLI writes artifacts, the API server and vLLM workers read
them, ``babelgate recalibrate`` rewrites thresholds. A gate is only meaningful for the model whose
activations trained it, so artifacts carry a fingerprint of the model's architecture config, and
every write is atomic so a crash or a concurrent reader never sees a half-written artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1

# Config keys that define the network's shapes and numerics. Everything else in a config
# (transformers_version, dtype, generation settings, token ids) may change without changing
# which activations the model produces, so it stays out of the fingerprint.
FINGERPRINT_KEYS: tuple[str, ...] = (
    "architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "rms_norm_eps",
    "rope_theta", "rope_parameters", "max_position_embeddings", "tie_word_embeddings",
    "hidden_act",
)


class ArtifactError(ValueError):
    """A gate artifact cannot be written or used; the message says what to do about it."""


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model a gate was calibrated on (or is about to be served with)."""

    id: str
    fingerprint: str
    architecture: str
    num_layers: int
    hidden_size: int

    def describe(self) -> str:
        """One-line human description used in error messages."""
        return (
            f"{self.id} ({self.architecture}, {self.num_layers} layers, hidden size "
            f"{self.hidden_size}, fingerprint {self.fingerprint})"
        )


def _canonical_rope(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """rope_theta and the rope scaling in one form, whether the config spells them the
    transformers<5 way (``rope_theta`` + ``rope_scaling``) or the >=5 way (``rope_parameters``)."""
    params = cfg.get("rope_parameters")
    out: dict[str, Any] = {}
    per_layer_type = isinstance(params, Mapping) and bool(params) and all(
        isinstance(v, Mapping) for v in params.values()
    )
    if per_layer_type:  # {"full_attention": {...}, "sliding_attention": {...}} (Gemma-3 style)
        out["rope_parameters"] = dict(params)
        return out
    params = dict(params) if isinstance(params, Mapping) else {}
    theta_in_params = params.pop("rope_theta", None)
    theta = cfg.get("rope_theta") if cfg.get("rope_theta") is not None else theta_in_params
    if theta is not None:
        out["rope_theta"] = float(theta)
    if not params and isinstance(cfg.get("rope_scaling"), Mapping):
        params = dict(cfg["rope_scaling"])
    if params.get("rope_type", params.get("type", "default")) != "default":
        out["rope_parameters"] = params
    return out


def model_info_from_config(model_id: str, config: Mapping[str, Any]) -> ModelInfo:
    """ModelInfo from a Hugging Face config dict (config.json or ``PretrainedConfig.to_dict()``).

    Multimodal configs that nest the language model under ``text_config`` (Gemma-3 style) are
    read from there when the top level has no ``hidden_size``. Derived defaults (head_dim,
    num_key_value_heads) are filled in so an explicit and an implied value fingerprint the same.
    """
    text = config
    if "hidden_size" not in config and isinstance(config.get("text_config"), Mapping):
        text = config["text_config"]
    for key in ("hidden_size", "num_hidden_layers"):
        if key not in text:
            raise ArtifactError(
                f"model config of {model_id!r} has no {key!r}: babelgate needs a decoder-only "
                "transformer config (config.json of a Hugging Face causal LM)"
            )
    fields: dict[str, Any] = {k: config[k] for k in ("architectures", "model_type") if k in config}
    fields.update({k: text[k] for k in FINGERPRINT_KEYS if k in text and not k.startswith("rope")})
    heads = fields.get("num_attention_heads")
    if heads:
        fields.setdefault("num_key_value_heads", heads)
        fields.setdefault("head_dim", fields["hidden_size"] // heads)
    fields.update(_canonical_rope(text))
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    archs = config.get("architectures") or text.get("architectures") or []
    architecture = archs[0] if archs else str(text.get("model_type", "unknown"))
    return ModelInfo(
        id=model_id,
        fingerprint=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        architecture=architecture,
        num_layers=int(text["num_hidden_layers"]),
        hidden_size=int(text["hidden_size"]),
    )


def babelgate_version() -> str:
    """The installed babelgate version, recorded in artifacts for forensics."""
    try:
        return version("babelgate")
    except PackageNotFoundError:
        return "unknown (running from a source tree that is not pip-installed)"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_directory_atomic(path: Path, files: Mapping[str, bytes], *, force: bool = False) -> Path:
    """Create directory ``path`` holding ``files`` (name -> bytes) so it appears complete or not
    at all: files go to a temporary sibling, are fsynced, and the directory is renamed into place.

    An existing ``path`` is refused unless ``force``; then it is replaced only if it is empty or
    an artifact (has a manifest.json), never an unrelated directory. The old artifact is first
    renamed aside and deleted after the new one is in place, so ``path`` never holds a mix.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not force:
            raise ArtifactError(
                f"{path} already exists: choose another output directory or pass --force to "
                "replace it"
            )
        if not path.is_dir():
            raise ArtifactError(
                f"{path} exists and is not a directory: remove it or pick another path"
            )
        if any(path.iterdir()) and not (path / MANIFEST_NAME).is_file():
            raise ArtifactError(
                f"{path} is a non-empty directory that is not a gate artifact (it has no "
                f"{MANIFEST_NAME}); refusing to replace it even with --force: pick another "
                "output directory"
            )
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    try:
        for name, data in files.items():
            _write_file_synced(tmp / name, data)
        _fsync_dir(tmp)
        if path.exists():
            old = parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            _fsync_dir(parent)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
            _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_json_atomic(path: Path, obj: Any) -> None:
    """Rewrite JSON file ``path`` atomically: temp file beside it, fsync, rename, fsync the dir."""
    path = Path(path)
    data = (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write_file_synced(tmp, data)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse ``path/manifest.json`` of a gate artifact and check its format version."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(
            f"no gate artifact at {path}: run `babelgate calibrate --model <model>` to create one, "
            "or pass the directory it wrote"
        )
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{path} is not a complete gate artifact ({MANIFEST_NAME} is missing): pass the "
            "directory `babelgate calibrate` wrote, or calibrate again"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(
            f"{manifest_path} is not valid JSON ({err}): the file is truncated or was edited by "
            "hand; restore it or run `babelgate calibrate` again"
        ) from err
    if not isinstance(manifest, dict):
        raise ArtifactError(
            f"{manifest_path} must hold a JSON object: run `babelgate calibrate` again"
        )
    found = manifest.get("format_version")
    if found != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path} has format_version {found!r} but this babelgate reads version "
            f"{FORMAT_VERSION}: use the babelgate version that wrote it, or calibrate again"
        )
    return manifest


def check_model(path: Path, recorded: ModelInfo | None, expect: ModelInfo) -> None:
    """Refuse a gate calibrated on another model than the one about to use it."""
    if recorded is None:
        raise ArtifactError(
            f"gate artifact {path} records no model, so it cannot be checked against "
            f"{expect.describe()}: run `babelgate calibrate --model {expect.id}` to make a gate "
            "for this model"
        )
    if recorded.fingerprint != expect.fingerprint:
        raise ArtifactError(
            f"gate artifact {path} was calibrated for {recorded.describe()}, but the model in use "
            f"is {expect.describe()}: run `babelgate calibrate --model {expect.id}` or pass the "
            "artifact made for this model"
        )
