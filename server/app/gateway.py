"""What a gateway's guardrail call is answered with: the gate's verdict on a conversation.

Runs in the API-server process, for the gateway routes (``litellm_guardrail``: LiteLLM's generic
guardrail API; ``portkey_webhook``: Portkey's webhook guardrail). A gateway puts babelgate in
front of models babelgate does not serve, so the gate can only say yes or no before (or while)
the upstream model runs; it cannot steer that model.

- The conversation is judged the way ``/v1/chat/completions`` judges it: the same language rule
  (``GuardrailService.detect``: the last user turn and the ones before it, every language seen),
  the strictest plan of the languages seen (``GuardrailService.strictest``), and one prefill of
  the whole conversation in the chat template, scored in shadow (``gate_scores``).
- ``blocks``: a harmful verdict blocks where a chat request's answer would change (its plan
  steers or refuses); where the plan only flags (``--action flag``, ``--policy shadow``, an
  unprotected language under ``--unprotected-action flag``) the call is allowed and the verdict
  reported.
- When the gate gives no score the call is answered 503 ``gate_unavailable``, which is what a
  stopped or restarting server answers too, so the gateway's own fail-open or fail-closed
  setting decides all three cases in one place.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from babelgate.server.app.chat import prompt_token_ids
from babelgate.server.app.errors import APIError
from babelgate.server.app.schemas import ChatMessage, GuardInfo, template_messages
from babelgate.server.app.service import Engine, GuardrailService, generation_failed
from babelgate.server.plan import GuardPlan

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class GatewayVerdict:
    """The gate's verdict on one conversation and whether the gateway must block it."""

    info: GuardInfo
    blocked: bool

    @property
    def score(self) -> float:
        """The gate score (always there: a conversation without one is answered 503)."""
        assert self.info.gate_score is not None
        return self.info.gate_score

    def reason(self) -> str:
        """One line for the gateway's error and logs: the verdict and the numbers behind it."""
        i = self.info
        seen = ",".join(i.languages) or i.language
        return (
            f"babelgate: {i.decision} (language {i.language}, gate score {self.score:.4g} "
            f"{'>=' if i.decision == 'harmful' else '<'} threshold {i.threshold:.4g} "
            f"[{i.threshold_source}], languages seen {seen}, action {i.action})"
        )


def conversation(messages: Sequence[ChatMessage] | None) -> Conversation | None:
    """A gateway's messages read like a chat request's; None without a user turn (nothing a
    chat request would be judged on)."""
    if not messages or not any(m.role == "user" for m in messages):
        return None
    return template_messages(messages)


def user_turns(texts: Sequence[str] | None) -> list[Conversation]:
    """Each non-blank text as one user turn: a completion's prompt, embedding inputs, a
    model's answer (the way ``/v1/moderations`` reads a text)."""
    return [[{"role": "user", "content": t}] for t in texts or () if t.strip()]


def blocks(plan: GuardPlan, harmful: bool) -> bool:
    """A harmful verdict blocks unless the plan only flags (the answer would be unchanged)."""
    return harmful and plan.action != "flag"


async def judge(
    svc: GuardrailService, conversations: Sequence[Conversation], override: str | None,
    gateway: str,
) -> GatewayVerdict | None:  # fmt: skip
    """Judge every conversation (concurrently); the first verdict that blocks, else the one
    with the highest score; None when there is nothing to judge. Counted once per call."""
    if not conversations:
        return None
    engine = svc.require_engine()
    plans = [_plan(svc, messages, override) for messages in conversations]
    svc.metrics.in_flight.inc()
    try:
        verdicts = await asyncio.gather(
            *(_verdict(svc, engine, c, p) for c, p in zip(conversations, plans, strict=True)),
            return_exceptions=True,
        )
    finally:
        svc.metrics.in_flight.dec()
    failed = [v for v in verdicts if isinstance(v, BaseException)]
    if failed:
        answer = "unavailable" if getattr(failed[0], "status", None) == 503 else "invalid"
        svc.metrics.gateway_checks.labels(
            gateway, plans[0].detection.language, "error", answer
        ).inc()
        raise failed[0]
    ok = [v for v in verdicts if isinstance(v, GatewayVerdict)]
    chosen = next((v for v in ok if v.blocked), None) or max(ok, key=lambda v: v.score)
    info = chosen.info
    answer = "block" if chosen.blocked else "allow"
    svc.metrics.gateway_checks.labels(gateway, info.language, info.decision, answer).inc()
    return chosen


def gate_unavailable() -> APIError:
    """503 for a call the gate gave no score: the gateway's fail-open / fail-closed decides."""
    return APIError(
        503,
        "the gate gave no score for this conversation: the gateway's fail-open or fail-closed "
        "setting decides",
        code="gate_unavailable",
        headers={"Retry-After": "1"},
    )


def _plan(svc: GuardrailService, messages: Conversation, override: str | None) -> GuardPlan:
    """The plan a chat request with these messages would get (400 for an unknown override)."""
    return svc.strictest(svc.detect(override, messages))


async def _verdict(
    svc: GuardrailService, engine: Engine, messages: Conversation, plan: GuardPlan
) -> GatewayVerdict:
    """One prefill of the conversation, scored against the plan's threshold."""
    ids = prompt_token_ids(svc.tokenizer, messages)
    if len(ids) >= svc.max_model_len:
        raise APIError(
            400,
            f"the conversation has {len(ids)} tokens in the chat template; this model's maximum "
            f"context length is {svc.max_model_len} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    language, record = plan.detection.language, plan.record
    try:
        (score,) = await engine.gate_scores([ids], language)
    except Exception as exc:
        if engine.dead:  # the server is stopping: 503 engine_dead
            raise generation_failed(exc, engine) from exc
        log.exception("gate scoring failed for a gateway call (%s)", language)
        raise gate_unavailable() from exc
    if not math.isfinite(score):
        log.error("gate score %s for a gateway call (%s)", score, language)
        raise gate_unavailable()
    svc.metrics.gate_score.labels(language).observe(score)
    harmful = score >= record.value
    blocked = blocks(plan, harmful)
    info = GuardInfo(
        language=language,
        language_source=plan.detection.source,
        language_confidence=round(plan.detection.confidence, 4),
        languages=list(plan.detection.languages),
        gate_score=score,
        threshold=record.value,
        threshold_source=record.source,
        decision="harmful" if harmful else "harmless",
        policy="shadow",
        action="block" if blocked else ("flag" if harmful else "none"),
        intervened=False,
        protected=plan.protected,
        weak_families=list(plan.weak_families),
    )
    return GatewayVerdict(info, blocked)
