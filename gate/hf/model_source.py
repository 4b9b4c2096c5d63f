"""Where a model comes from: the embedded default, a local folder, or a hub id.

Runs in the CLI / API-server process. Both the transformers backend and the vLLM engine read the
model's identity through here, so an artifact's fingerprint is computed the same way on both.
"""

from __future__ import annotations

import json
from pathlib import Path

from babelgate.gate.artifact import ModelInfo, model_info_from_config
from babelgate.gate.hf.embedded import embedded_model, ensure_embedded_model


def resolve_model(model: str | Path | None) -> tuple[str, str]:
    """Return ``(model_id, load_path)``: the id recorded in artifacts and what loaders open.

    ``None``/"embedded" is the default embedded model and ``embedded:<slug>`` a named one (each
    converted on first use, see ``gate.hf.embedded``); an existing directory
    is used as is (its absolute path is the id); anything else is a hub id, which only works
    where this machine reaches the hub or its cache.
    """
    if (spec := embedded_model(model)) is not None:
        return spec.id, str(ensure_embedded_model(spec.id))
    path = Path(str(model)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
        return str(path.resolve()), str(path.resolve())
    if path.exists():
        raise ValueError(f"{path} is a file; pass the model's folder (config.json + weights)")
    return str(model), str(model)


def load_model_config(load_path: str) -> dict:
    """The raw ``config.json`` of a model folder or hub id (hub: from its cache or the network)."""
    path = Path(load_path)
    if path.is_dir():
        return json.loads((path / "config.json").read_text())
    try:
        # lazy: about 0.2 s to import, and only hub ids (not folders, not embedded models) need it
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(load_path, "config.json")).read_text())
    except Exception as exc:  # any hub failure: say what to do instead
        raise FileNotFoundError(
            f"cannot read config.json of {load_path!r} ({exc}); pass a local model folder "
            "or make the hub reachable"
        ) from exc


def model_info(model: str | Path | None) -> ModelInfo:
    """Identity (id + config fingerprint) of a model, as recorded in artifacts and checked."""
    model_id, load_path = resolve_model(model)
    return model_info_from_config(model_id, load_model_config(load_path))
