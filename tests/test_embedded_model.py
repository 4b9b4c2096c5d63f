"""The embedded model: converted once into a checked HF folder; the transformers backend on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from babelgate.gate.hf.embedded import SMOLLM2, ensure_embedded_model


@pytest.mark.slow
def test_embedded_model_folder_is_complete_and_idempotent(embedded_model_dir):
    marker = json.loads((embedded_model_dir / ".babelgate-converted.json").read_text())
    assert marker["check_output"].strip(), "conversion check must have generated text"
    assert (embedded_model_dir / "chat_template.jinja").is_file() or "chat_template" in (
        embedded_model_dir / "tokenizer_config.json"
    ).read_text()
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    # A second call finds the cached folder.
    assert ensure_embedded_model(SMOLLM2.id) == embedded_model_dir


@pytest.mark.slow
def test_conversion_is_atomic_in_a_fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BABELGATE_CACHE", str(tmp_path))
    folder = ensure_embedded_model(SMOLLM2.id, verify=False)
    assert folder.parent == tmp_path / "models"
    # Only the finished folder remains: no temporary conversion directories.
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folder.name]


@pytest.mark.slow
def test_transformers_backend_reads_block_outputs(embedded_model_dir):
    import torch

    from babelgate.gate.hf.backend import TransformersBackend

    backend = TransformersBackend(SMOLLM2.id)
    assert backend.model_info.id == SMOLLM2.id
    assert (backend.num_layers, backend.hidden_size) == (30, 576)
    prompts = ["How do I bake bread?", "Écris un poème sur la mer.", "Kí ni olú ìlú Nàìjíríà?"]
    acts = backend.activations(prompts, [3, 29], batch_size=2, progress=False)
    assert acts.shape == (3, 2, 576) and acts.dtype == np.float32
    # Same numbers as HF's own hidden_states[L + 1] for a middle layer, one prompt at a time.
    ids = torch.tensor([backend.chat_prompt_ids(prompts[1])])
    with torch.inference_mode():
        hs = backend.model(input_ids=ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(acts[1, 0], hs[4][0, -1].numpy(), atol=2e-3, rtol=1e-3)
    # Batch composition does not change a prompt's vector beyond float noise.
    alone = backend.activations(prompts[:1], [3, 29], batch_size=1, progress=False)
    np.testing.assert_allclose(alone[0], acts[0], atol=2e-3, rtol=1e-3)
    # The post-instruction position is the end of the assistant header.
    text = backend.tokenizer.decode(backend.chat_prompt_ids("hi"))
    assert text.rstrip().endswith("assistant")


def test_layers_out_of_range_refused():
    from babelgate.gate.activations import check_layers

    with pytest.raises(ValueError, match=r"layers \[30\] out of range"):
        check_layers([3, 30], 30)
    assert check_layers(None, 3) == [0, 1, 2]
