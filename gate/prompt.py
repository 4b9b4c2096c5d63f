"""The prompt rule: the token ids a model sees for a chat, and so the token the gate reads.

Runs wherever a prompt is tokenised: calibration (the transformers backend), the transformers
reference routing, the vLLM engine and backend, and the API server. METHOD §1: the model's chat
template, the conversation as given (one user turn at calibration, no system prompt added), and
the generation prompt, so the last id is the post-instruction token whose residual the gate
reads. Calibration and serving must agree on it exactly, so this is the only place it is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def chat_token_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of ``messages`` in ``tokenizer``'s chat template with the generation prompt.

    Raises whatever the template raises for a conversation it rejects (roles, order).
    """
    ids = tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=True, tokenize=True
    )
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def chat_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of one user turn ``text``: what calibration reads and serving routes on."""
    return chat_token_ids(tokenizer, [{"role": "user", "content": text}])
