"""Request and response bodies of the OpenAI-compatible API, the guardrail extension and admin API.

Runs in the API-server process. Requests accept what the official ``openai`` client sends
(unknown fields are ignored, as vLLM does, so newer clients keep working); responses carry the
guardrail verdict in an extra ``babelgate`` object, which the client exposes as an extra field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from babelgate.server.engine.types import Policy

# --------------------------------------------------------------------------------- requests


def unicode_text(text: str) -> str:
    """``text`` if it is valid Unicode. JSON lets a client send unpaired UTF-16 surrogates
    (``"\\ud800"``), which pydantic passes through in most fields and which no tokenizer, store
    or response encoder accepts: they are rejected here, with where they are."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"holds an unpaired UTF-16 surrogate ({text[err.start]!r} at character {err.start}): "
            "send valid Unicode text"
        ) from None
    return text


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str

    _unicode = field_validator("text")(unicode_text)


class ChatMessage(BaseModel):
    """One message; content is a string or a list of text parts (other part types: 400)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content", "name")
    @classmethod
    def _unicode(cls, value: str | list[TextPart] | None) -> str | list[TextPart] | None:
        return unicode_text(value) if isinstance(value, str) else value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class GuardOptions(BaseModel):
    """The request's ``babelgate`` field (``extra_body={"babelgate": {...}}`` in the client)."""

    model_config = ConfigDict(extra="forbid")
    language: str | None = Field(None, description="route to this language, skip detection")

    @field_validator("language")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        return None if value is None else unicode_text(value)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    # vLLM's own bound: the worker seeds a torch generator with it (seed + i for choice i, which
    # stays below torch's 2**64 limit), and a seed it cannot take kills the engine.
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    babelgate: GuardOptions | None = None

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("messages need at least one message with role 'user'")
        return messages

    @field_validator("model", "user")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        return None if value is None else unicode_text(value)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> list[str] | None:
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else stop
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return [unicode_text(s) for s in stops]

    def completion_limit(self) -> int | None:
        """``max_completion_tokens`` (current name) or ``max_tokens`` (deprecated name)."""
        return self.max_completion_tokens or self.max_tokens


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | Annotated[list[str], Field(min_length=1)]
    model: str | None = None
    babelgate: GuardOptions | None = None

    @field_validator("input")
    @classmethod
    def _nonempty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("input must be a string or a non-empty list of strings")
        for text in [value] if isinstance(value, str) else value:
            unicode_text(text)
        return value

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the chat template wants them (``developer`` is OpenAI's new ``system``):
    how a chat request's messages, and a gateway's, are read."""
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in messages
    ]


class LiteLLMGuardrailRequest(BaseModel):
    """``POST /beta/litellm_basic_guardrail_api``: what LiteLLM's generic guardrail sends
    (``GenericGuardrailAPIRequest``, litellm 1.108). ``structured_messages`` are read like a
    chat request's messages (roles system, developer, user, assistant; text parts); the fields
    babelgate does not read (images, tools, user metadata, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    input_type: Literal["request", "response"]
    texts: list[str] | None = None
    structured_messages: list[ChatMessage] | None = None
    # Inbound headers LiteLLM forwards (values only for its allowlist and ``extra_headers``).
    request_headers: dict[str, str] | None = None
    litellm_call_id: str | None = None
    litellm_trace_id: str | None = None

    @field_validator("texts")
    @classmethod
    def _unicode(cls, texts: list[str] | None) -> list[str] | None:
        return None if texts is None else [unicode_text(t) for t in texts]


class PortkeyPayload(BaseModel):
    """One side (request or response) of Portkey's hook context."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    body: dict[str, Any] | None = Field(None, alias="json")
    text: str | None = None

    @field_validator("text")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        return None if value is None else unicode_text(value)


class PortkeyWebhookRequest(BaseModel):
    """``POST /portkey/webhook``: the context Portkey's ``default.webhook`` check posts
    (``@portkey-ai/gateway`` 1.15): request and response, and which hook runs."""

    model_config = ConfigDict(extra="allow")
    request: PortkeyPayload
    response: PortkeyPayload | None = None
    eventType: Literal["beforeRequestHook", "afterRequestHook"]  # Portkey's field name


class ThresholdUpdate(BaseModel):
    """``PUT /admin/thresholds/{lang}``: pin a value (a JSON number, finite)."""

    model_config = ConfigDict(extra="forbid")
    value: StrictFloat | StrictInt
    note: str = Field("", max_length=500)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        try:
            value = float(value)
        except OverflowError as err:  # an integer beyond the float range (JSON allows it)
            raise ValueError("value must be a finite number") from err
        if not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value


def _nonblank_texts(texts: list[str], what: str) -> list[str]:
    """The admin calls' prompt lists: every text non-blank, each normalised (``unicode_text``)."""
    if any(not t.strip() for t in texts):
        raise ValueError(f"{what} must be non-empty strings")
    return [unicode_text(t) for t in texts]


class RecalibrationRequest(BaseModel):
    """``POST /admin/thresholds/{lang}/recalibrate``: k >= 1 labelled prompts per class."""

    model_config = ConfigDict(extra="forbid")
    harmful: list[str] = Field(min_length=1)
    harmless: list[str] = Field(min_length=1)
    note: str = Field("", max_length=500)

    @field_validator("harmful", "harmless")
    @classmethod
    def _nonblank(cls, texts: list[str]) -> list[str]:
        return _nonblank_texts(texts, "examples")


class TrafficThresholdRequest(BaseModel):
    """``POST /admin/thresholds/{lang}/from-traffic``: unlabelled prompts of the language and of
    a reference language with a threshold set from labels (``gate.threshold.traffic_threshold``):
    for a language nobody has labelled examples of, only its traffic."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1)
    reference_language: str = "en"
    reference_prompts: list[str] = Field(min_length=1)
    quantile: float = Field(0.25, gt=0.0, lt=1.0)
    note: str = Field("", max_length=500)

    @field_validator("prompts", "reference_prompts")
    @classmethod
    def _nonblank(cls, texts: list[str]) -> list[str]:
        return _nonblank_texts(texts, "prompts")


# --------------------------------------------------------------------------------- responses


class GuardInfo(BaseModel):
    """The guardrail's verdict on one request, as returned in the ``babelgate`` extension."""

    language: str  # the language whose threshold and action were applied
    language_source: str
    language_confidence: float
    # Every language seen in the user text with confidence, ``language`` first: more than one
    # for mixed text, judged by the strictest of their plans (``server.plan.strictest_plan``).
    languages: list[str] = Field(default_factory=list)
    gate_score: float | None
    threshold: float
    threshold_source: str
    # Below this score a harmless verdict ablates (the abstain band's lower edge; the threshold
    # itself under --ablation always); None: no verdict ablates (--ablation never, or band
    # without a measured edge). Between it and the threshold the decision is "unsure".
    harmless_below: float | None = None
    ablation: str = "always"
    decision: str | None  # harmful / harmless / unsure (in the band: nothing done)
    policy: Policy
    action: str
    intervened: bool
    gate_failure: bool = False
    protected: bool = True  # False: the language is unprotected, the fallback action applied
    # Prompt families (styles) on which calibration measured the gate weak for this language.
    weak_families: list[str] = Field(default_factory=list)

    def headers(self) -> dict[str, str]:
        """The same verdict as ``x-babelgate-*`` response headers."""
        def fmt(value: Any) -> str:
            if value is None:
                return "none"
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, float):
                return f"{value:.6g}"
            if isinstance(value, list):
                return ",".join(value) or "none"
            return str(value)

        names = ("language", "language_source", "languages", "gate_score", "threshold",
                 "threshold_source", "harmless_below", "decision", "policy", "action",
                 "intervened", "protected", "weak_families")  # fmt: skip
        return {f"x-babelgate-{n.replace('_', '-')}": fmt(getattr(self, n)) for n in names}


class LiteLLMGuardrailResponse(BaseModel):
    """LiteLLM's generic guardrail answer: ``BLOCKED`` (LiteLLM raises its guardrail error with
    ``blocked_reason``, which its logs keep) or ``NONE``; babelgate never rewrites text, so
    never ``GUARDRAIL_INTERVENED``. ``babelgate`` (None when nothing was judged) is for other
    callers: LiteLLM reads only ``action`` and ``blocked_reason``."""

    action: Literal["BLOCKED", "NONE"]
    blocked_reason: str | None = None
    babelgate: GuardInfo | None = None


class PortkeyWebhookResponse(BaseModel):
    """Portkey's webhook answer: ``verdict`` false fails the check (a hook with ``deny``
    answers 446); ``data`` is kept in Portkey's hook results and logs."""

    verdict: bool
    data: GuardInfo | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    babelgate: GuardInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    babelgate: GuardInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "babelgate"
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
