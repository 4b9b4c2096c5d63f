"""What the guard will do with a request, decided before the engine sees it: its plan.

Runs in the API-server process (``GuardrailService.plan`` for every chat request, the moderation
route for the language it scores by) and in ``python -m babelgate.evaluation.langmix``, which
measures the rule on mixed-language prompts without a server. Pure functions of plain values,
tested without an engine (``tests/test_server_outcome.py``, ``tests/test_server_plan.py``); what
happens once the verdict is back is ``server.app.outcome``.

- ``plan_request``: the plan for a request routed to one language: the action a harmful verdict
  triggers, the threshold and the engine policy. It cannot wait for the verdict, because the
  worker decides inside the request's own prefill with the threshold it was sent.
  ``language_plan`` calls it with what ``babelgate serve``'s settings and gate say.
- ``strictest_plan``: the plan for text in which several languages were seen with confidence
  (``server.langid.Detection.others``): each language's own plan, the strictest one kept. A
  prompt wrapped in, or mixed with, a language whose threshold is looser is then judged as
  strictly as its strictest language would be on its own; one engine request takes one threshold
  and one policy, so the plan kept is one language's, whole.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from babelgate.server.langid import Detection
from babelgate.server.settings import Ablation, Action, Policy, ServeSettings

if TYPE_CHECKING:
    from babelgate.gate.estimator import HarmfulnessGate, ThresholdRecord

# How much a harmful verdict does to the answer: flag serves it unchanged.
ACTION_SEVERITY: dict[str, int] = {"flag": 0, "steer": 1, "refuse": 2}


@dataclass(frozen=True)
class GuardPlan:
    """What the server decided about a request before the engine sees it."""

    detection: Detection
    record: ThresholdRecord
    action: Action  # what a harmful verdict triggers: steer / refuse / flag
    policy: Policy  # the engine policy sent with the request
    weak_families: tuple[str, ...] = ()  # prompt families the gate was measured weak on here
    # Below this score a harmless verdict ablates; between it and the threshold the verdict is
    # unsure and nothing is done. None: at the threshold (every harmless verdict ablates).
    harmless_threshold: float | None = None
    ablation: Ablation = "always"  # the --ablation rule that set it

    @property
    def protected(self) -> bool:
        return self.record.protected


def plan_request(
    detection: Detection,
    record: ThresholdRecord,
    action: Action,
    *,
    policy: Policy,
    unprotected_action: Action,
    zero_shot_threshold: float,
    weak_families: Sequence[str] = (),
    ablation: Ablation = "always",
) -> GuardPlan:
    """Threshold, action and engine policy for a request routed to ``detection.language``.

    ``record`` is the threshold in effect for the language and ``action`` its configured action.
    ``flag`` reports only, so the engine runs in shadow (scored, output untouched). Under the
    ``shadow`` policy the worker never steers, so ``steer`` becomes ``flag``: a harmful request
    is served untouched and marked, which is what flagging is. An unprotected language gets
    ``unprotected_action`` instead of its usual action; under ``refuse`` its threshold is the
    stricter (lower) of its own and the zero-shot one, since its own was not shown to mean
    anything, and the record says which one it is (source "zero-shot" when that one is lower).
    """
    if not record.protected:
        action = unprotected_action
        if action == "refuse" and zero_shot_threshold < record.value:
            band = record.harmless_below
            record = dataclasses.replace(
                record,
                value=zero_shot_threshold,
                source="zero-shot",
                harmless_below=None if band is None else min(band, zero_shot_threshold),
                note=f"unprotected: the zero-shot threshold replaces its own {record.value:.6g}",
            )
    if action == "flag" and policy != "none":
        policy = "shadow"
    if action == "steer" and policy == "shadow":
        action = "flag"
    return GuardPlan(detection, record, action, policy, tuple(weak_families),
                     harmless_threshold(record, ablation), ablation)  # fmt: skip


def ablates_below(record: ThresholdRecord, ablation: Ablation) -> float | None:
    """The score below which a harmless verdict ablates, as JSON can carry it (the verdict,
    the admin API): the threshold under ``always``, the measured edge under ``band``, None when
    no verdict would."""
    edge = harmless_threshold(record, ablation)
    if edge is None:
        return record.value
    return edge if math.isfinite(edge) else None


def harmless_threshold(record: ThresholdRecord, ablation: Ablation) -> float | None:
    """The score below which a harmless verdict ablates, by ``--ablation``: ``always`` the
    threshold itself (None), ``band`` the record's measured edge (no edge: never), ``never``
    minus infinity. Ablating a prompt the gate wrongly called harmless removes the model's own
    refusal, so outside a measured band the guard leaves harmless verdicts alone."""
    if ablation == "always":
        return None
    if ablation == "band" and record.harmless_below is not None:
        return float(record.harmless_below)
    return -math.inf


def language_plan(
    detection: Detection, record: ThresholdRecord, settings: ServeSettings, gate: HarmfulnessGate
) -> GuardPlan:
    """``plan_request`` for ``detection.language`` as ``settings`` configure it, with ``record``
    the threshold in effect and ``gate`` giving the zero-shot threshold and weak families."""
    lang = detection.language
    return plan_request(
        detection,
        record,
        settings.action_for(lang),
        policy=settings.policy,
        unprotected_action=settings.unprotected_action,
        zero_shot_threshold=float(gate.zero_shot_threshold),
        weak_families=gate.weak_families(lang),
        ablation=settings.ablation,
    )


def strictness(plan: GuardPlan) -> tuple[bool, float, int]:
    """Orders plans, stricter is greater: first a plan that changes a harmful request's answer
    (steer or refuse, under a policy that scores) over one that only flags it, so a language
    whose plan is only to flag (an unprotected one under ``--unprotected-action flag``) never
    lets text escape a language that would act; then the lower threshold (more requests judged
    harmful); then refuse over steer."""
    acts = plan.action != "flag" and plan.policy != "none"
    return acts, -plan.record.value, ACTION_SEVERITY[plan.action]


def strictest_plan(plans: Sequence[GuardPlan]) -> GuardPlan:
    """The strictest of the plans of the languages seen in one text (``plans[0]`` first: the
    language the whole text was routed to, which a tie keeps). Its detection says which
    language decided (``language``) and lists the others seen (``others``)."""
    chosen = max(plans, key=strictness)  # the first of equals
    others = tuple(p.detection for p in plans if p is not chosen)
    return dataclasses.replace(
        chosen, detection=dataclasses.replace(chosen.detection, others=others)
    )
