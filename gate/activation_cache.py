"""A disk cache of all-layer activations per prompt, in front of any activation backend.

Runs in the CLI process (calibration, the shift evaluation). Fitting gates under several
configurations (layers, regularisation, training families) needs the same prompts' residuals
again and again; a forward pass costs 50-100 ms per prompt on 2 cores, a cache read microseconds.

Layout under ``root/<key>/`` where ``key`` hashes the model id, its config fingerprint and the
backend's class (two backends agree to ~1e-3, not bit for bit, so they do not share entries):
``shard-*.npy`` arrays ``(n, num_layers, hidden)`` float32, and ``index.jsonl`` lines
``{"sha": <sha256 of the text>, "shard": <file>, "row": <i>}``. A shard is written to a temporary
name and renamed before its index lines are appended and fsynced, so a crash loses at most the
batch being written and never leaves an index entry pointing at missing data.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from babelgate.gate.activations import ActivationBackend, check_layers

INDEX_NAME = "index.jsonl"
# New activations are computed and saved in chunks of this many prompts (the crash granularity).
SAVE_EVERY = 256


def text_key(text: str) -> str:
    """The cache key of one prompt text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CachedBackend:
    """``ActivationBackend`` that answers from disk and computes only prompts it has not seen.

    It always computes all layers (the cache serves any later layer choice) and returns the
    requested ones, so it fits anywhere a backend does.
    """

    def __init__(self, backend: ActivationBackend, root: str | Path) -> None:
        self.backend = backend
        self.model_info = backend.model_info
        self.num_layers = backend.num_layers
        self.hidden_size = backend.hidden_size
        ident = f"{backend.model_info.id}|{backend.model_info.fingerprint}|{type(backend).__name__}"
        self.dir = Path(root) / hashlib.sha256(ident.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[str, int]] = {}
        self._shards: dict[str, np.ndarray] = {}
        self._read_index()

    def _read_index(self) -> None:
        path = self.dir / INDEX_NAME
        if not path.is_file():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from a crash: ignore it
                continue
            if (self.dir / entry["shard"]).is_file():
                self._index[entry["sha"]] = (entry["shard"], int(entry["row"]))

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._index

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            self._shards[name] = np.load(self.dir / name, mmap_mode="r")
        return self._shards[name]

    def _save(self, texts: list[str], acts: np.ndarray) -> None:
        name = f"shard-{uuid.uuid4().hex[:12]}.npy"
        tmp = self.dir / f".{name}.tmp"
        with tmp.open("wb") as f:
            np.save(f, acts.astype(np.float32, copy=False))
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(self.dir / name)
        with (self.dir / INDEX_NAME).open("a", encoding="utf-8") as f:
            for i, text in enumerate(texts):
                f.write(json.dumps({"sha": text_key(text), "shard": name, "row": i}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for i, text in enumerate(texts):
            self._index[text_key(text)] = (name, i)

    def activations(
        self,
        prompts: Sequence[str],
        layers: Sequence[int] | None = None,
        *,
        batch_size: int = 16,
        progress: bool = True,
    ) -> np.ndarray:
        chosen = check_layers(layers, self.num_layers)
        missing = sorted({t for t in prompts if text_key(t) not in self._index})
        bar = tqdm(
            total=len(missing), desc="activations (new)", unit="prompt",
            disable=not progress or not missing,
        )
        for start in range(0, len(missing), SAVE_EVERY):
            chunk = missing[start : start + SAVE_EVERY]
            acts = self.backend.activations(chunk, None, batch_size=batch_size, progress=False)
            self._save(chunk, acts)
            bar.update(len(chunk))
        bar.close()
        out = np.empty((len(prompts), len(chosen), self.hidden_size), dtype=np.float32)
        for i, text in enumerate(prompts):
            shard, row = self._index[text_key(text)]
            out[i] = self._shard(shard)[row, chosen]
        return out
