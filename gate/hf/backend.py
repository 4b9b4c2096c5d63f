"""Transformers activation backend: residual stream at the post-instruction token.

Runs in the CLI process (calibration, recalibration, evaluation) or a notebook. Prompts are
padded on the right and read at each prompt's own last position, so a prompt's vector does not
depend on what else is in its batch (no shifted positions, nothing attends to padding), and runs
are deterministic on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from babelgate.gate.activations import check_finite, check_layers
from babelgate.gate.artifact import ModelInfo, model_info_from_config
from babelgate.gate.hf.model_source import load_model_config, resolve_model
from babelgate.gate.prompt import chat_prompt_ids


class ChatTemplateMissingError(ValueError):
    """The tokenizer has no chat template, so the post-instruction position is undefined."""


class TransformersBackend:
    """A causal LM loaded with transformers, reporting last-prompt-token residuals.

    ``model``: None / "embedded" for the embedded SmolLM2, a local folder, or a hub id.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ) -> None:
        # lazy: transformers' auto classes take about 3 s to import; only loading a model needs them
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_id, load_path = resolve_model(model)
        self.load_path = load_path
        self.model_info: ModelInfo = model_info_from_config(model_id, load_model_config(load_path))
        self.tokenizer = AutoTokenizer.from_pretrained(load_path)
        if not self.tokenizer.chat_template:
            raise ChatTemplateMissingError(
                f"{model_id} has no chat template: babelgate reads the residual at the token "
                "after the chat template's assistant header, so it needs an instruction-tuned "
                "model with a chat template (or set tokenizer.chat_template yourself)"
            )
        self.model = AutoModelForCausalLM.from_pretrained(load_path, dtype=dtype).to(device)
        self.model.eval()
        self.device = device
        self.num_layers: int = int(self.model.config.num_hidden_layers)
        self.hidden_size: int = int(self.model.config.hidden_size)

    def chat_prompt_ids(self, text: str) -> list[int]:
        """Token ids of one user turn (``gate.prompt``, the rule serving uses too)."""
        return chat_prompt_ids(self.tokenizer, text)

    @torch.inference_mode()
    def activations(
        self,
        prompts: Sequence[str],
        layers: Sequence[int] | None = None,
        *,
        batch_size: int = 16,
        progress: bool = True,
    ) -> np.ndarray:
        """Residuals ``(n, n_layers, d)`` float32 at each prompt's last token (see the protocol)."""
        chosen = check_layers(layers, self.num_layers)
        if not prompts:
            return np.zeros((0, len(chosen), self.hidden_size), dtype=np.float32)
        encoded = [self.chat_prompt_ids(p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding
        out = np.empty((len(prompts), len(chosen), self.hidden_size), dtype=np.float32)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        bar = tqdm(total=len(prompts), desc="activations", unit="prompt", disable=not progress)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            lengths = [len(encoded[i]) for i in idx]
            width = max(lengths)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : lengths[row]] = torch.tensor(encoded[i])
                mask[row, : lengths[row]] = 1
            last = torch.tensor(lengths) - 1
            rows = torch.arange(len(idx))
            captured = self._run_capturing(ids, mask, chosen)
            for j, layer in enumerate(chosen):
                out[idx, j] = captured[layer][rows, last].float().cpu().numpy()
            bar.update(len(idx))
        bar.close()
        return check_finite(out)

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The model's decoder blocks (``model.model.layers`` for Llama/Qwen2/Gemma2-style LMs)."""
        inner = getattr(self.model, "model", None)
        layers = getattr(inner, "layers", None)
        if layers is None:
            raise ValueError(
                f"{type(self.model).__name__} has no model.layers: unsupported architecture "
                "(babelgate supports Llama-, Qwen2- and Gemma2-style decoders)"
            )
        return layers

    def _run_capturing(
        self, ids: torch.Tensor, mask: torch.Tensor, layers: list[int]
    ) -> dict[int, torch.Tensor]:
        """One forward pass that keeps the output of each chosen decoder block.

        A forward hook on the block is exactly "the residual stream at the output of block L"
        (HF ``hidden_states[L + 1]``), including for the last block, whose ``hidden_states``
        entry some models replace by the final-norm output.
        """
        captured: dict[int, torch.Tensor] = {}
        blocks = self.decoder_layers()

        def make_hook(layer: int):
            def hook(_module, _inputs, output):
                captured[layer] = output[0] if isinstance(output, tuple) else output

            return hook

        handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
        try:
            self.model.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False
            )
        finally:
            for handle in handles:
                handle.remove()
        return captured
