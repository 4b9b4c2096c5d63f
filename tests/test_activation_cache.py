"""The activation cache: computes each text once, answers any layer subset, survives crashes."""

from __future__ import annotations

import hashlib

import numpy as np

from babelgate.gate.activation_cache import INDEX_NAME, CachedBackend
from babelgate.gate.artifact import ModelInfo


class CountingBackend:
    """A deterministic stand-in model: activations derived from the text's hash."""

    num_layers, hidden_size = 4, 3

    def __init__(self) -> None:
        self.model_info = ModelInfo("test:model", "fp", "LlamaForCausalLM", 4, 3)
        self.seen: list[str] = []

    def activations(self, prompts, layers=None, *, batch_size=16, progress=True):
        self.seen += list(prompts)
        out = np.stack([self._one(t) for t in prompts])
        return out if layers is None else out[:, list(layers)]

    @staticmethod
    def _one(text: str) -> np.ndarray:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).normal(size=(4, 3)).astype(np.float32)


def test_each_text_is_computed_once_and_layers_are_selected(tmp_path):
    inner = CountingBackend()
    cache = CachedBackend(inner, tmp_path)
    got = cache.activations(["a", "b", "a"], [1, 3], progress=False)
    assert got.shape == (3, 2, 3) and sorted(inner.seen) == ["a", "b"]
    np.testing.assert_array_equal(got[0], CountingBackend._one("a")[[1, 3]])
    np.testing.assert_array_equal(got[0], got[2])
    again = CachedBackend(CountingBackend(), tmp_path)  # a new process: read from disk
    np.testing.assert_array_equal(again.activations(["b"], None, progress=False)[0],
                                  CountingBackend._one("b"))  # fmt: skip
    assert again.backend.seen == [] and "a" in again and "c" not in again


def test_a_torn_index_line_or_a_missing_shard_only_costs_recomputation(tmp_path):
    cache = CachedBackend(CountingBackend(), tmp_path)
    cache.activations(["a"], progress=False)
    index = cache.dir / INDEX_NAME
    with index.open("a") as f:
        f.write('{"sha": "dead')  # a crash in the middle of an index write
    for shard in cache.dir.glob("shard-*.npy"):
        shard.unlink()  # and a shard gone
    fresh = CachedBackend(CountingBackend(), tmp_path)
    assert "a" not in fresh
    np.testing.assert_array_equal(fresh.activations(["a"], progress=False)[0],
                                  CountingBackend._one("a"))  # fmt: skip
    assert fresh.backend.seen == ["a"]
