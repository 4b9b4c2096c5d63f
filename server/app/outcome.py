"""What the guard does to a chat request: its plan before the engine runs, its outcome after.

Runs in the API-server process (the chat route calls it for every request, streamed or not).
The rules live here as pure functions of plain values, so the whole table is in one place and
is tested without an engine or a model:

- ``plan_request``, before the engine sees the request: the action a harmful verdict triggers,
  the threshold and the engine policy. It cannot wait for the verdict, because the worker
  decides inside the request's own prefill with the threshold it was sent.
- ``decide_outcome``, once the first token and its verdict are back: steer, ablate, refuse,
  flag, nothing, or, when the gate failed, fail closed or fail open.
- ``guard_info``: the verdict as the client sees it (``babelgate`` object, ``x-babelgate-*``).

Steering and ablation are applied by the worker during the prefill (``GuardRecord.action`` in
``server.engine.interventions``); the outcome reports what the verdict says the worker did and
decides what the server does on top of it: a templated refusal, or letting generation go on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from server.app.schemas import GuardInfo
from server.langid import Detection
from server.settings import Action, GateFailureMode, Policy

if TYPE_CHECKING:
    from gate.estimator import ThresholdRecord
    from server.engine.types import Verdict

# Why the output is what it is; ``fail-closed`` / ``fail-open``: the gate gave no score.
OutcomeKind = Literal["steer", "ablate", "refuse", "flag", "none", "fail-closed", "fail-open"]
# What the guard did to the output, as reported to the client and in the metrics.
TakenAction = Literal["steer", "ablate", "refuse", "flag", "none"]


@dataclass(frozen=True)
class GuardPlan:
    """What the server decided about a request before the engine sees it."""

    detection: Detection
    record: ThresholdRecord
    action: Action  # what a harmful verdict triggers: steer / refuse / flag
    policy: Policy  # the engine policy sent with the request
    weak_families: tuple[str, ...] = ()  # prompt families the gate was measured weak on here

    @property
    def protected(self) -> bool:
        return self.record.protected


@dataclass(frozen=True)
class Outcome:
    """What happens to one request once its verdict (or its absence) is known.

    ``action`` is what the client and the metrics see (a failed-closed gate reports "refuse");
    ``refuse`` means the engine requests are aborted and the templated refusal is the answer;
    ``fallback`` means the language is unprotected, so ``plan.action`` was its fallback action.
    """

    kind: OutcomeKind
    action: TakenAction
    decision: str | None  # "harmful", "harmless", or None (no score, or policy none)
    refuse: bool
    intervened: bool
    gate_failure: bool
    fallback: bool


def plan_request(
    detection: Detection,
    record: ThresholdRecord,
    action: Action,
    *,
    policy: Policy,
    unprotected_action: Action,
    zero_shot_threshold: float,
    weak_families: Sequence[str] = (),
) -> GuardPlan:
    """Threshold, action and engine policy for a request routed to ``detection.language``.

    ``record`` is the threshold in effect for the language and ``action`` its configured action.
    ``flag`` reports only, so the engine runs in shadow (scored, output untouched). An
    unprotected language gets ``unprotected_action`` instead of its usual action; under
    ``refuse`` its threshold is the stricter (lower) of its own and the zero-shot one, since its
    own was not shown to mean anything.
    """
    if not record.protected:
        action = unprotected_action
        if action == "refuse":
            record = dataclasses.replace(record, value=min(record.value, zero_shot_threshold))
    if action == "flag" and policy != "none":
        policy = "shadow"
    return GuardPlan(detection, record, action, policy, tuple(weak_families))


def decide_outcome(
    plan: GuardPlan, verdict: Verdict | None, gate_failure: GateFailureMode
) -> Outcome:
    """The outcome of a request from its plan, its verdict and ``--gate-failure``.

    The first rule that applies wins:

    1. gate failed (policy not ``none``, and no verdict or no score), ``closed``: fail-closed,
       templated refusal, reported action "refuse";
    2. gate failed, ``open``: fail-open, generation goes on, reported action the intervention
       (if any) the worker still made;
    3. harmful, plan action ``refuse``: refuse, templated refusal;
    4. harmful, plan action ``flag``: flag, output untouched (the plan ran it in shadow);
    5. the worker steered or ablated: steer / ablate (its output is the answer);
    6. anything else (harmless under flag, policy ``none``, harmful under shadow + steer): none.

    "intervention" is what the worker reports it did (``Verdict.intervention``): ``routing``
    steers harmful and ablates harmless requests, ``always-steer`` / ``always-ablate`` do so
    whatever the score, ``shadow`` and ``none`` do nothing. ``intervened`` is true for a
    refusal or when the worker changed some rows.
    """
    failed = plan.policy != "none" and (verdict is None or verdict.score is None)
    decision = None if failed or verdict is None else verdict.decision
    done = _intervention("none" if verdict is None else verdict.intervention)
    kind: OutcomeKind
    action: TakenAction
    if failed:
        kind = "fail-closed" if gate_failure == "closed" else "fail-open"
        action = "refuse" if kind == "fail-closed" else done
    elif decision == "harmful" and plan.action == "refuse":
        kind = action = "refuse"
    elif decision == "harmful" and plan.action == "flag":
        kind = action = "flag"
    else:
        kind = action = done
    refuse = kind in ("refuse", "fail-closed")
    return Outcome(
        kind=kind,
        action=action,
        decision=decision,
        refuse=refuse,
        intervened=refuse or bool(verdict is not None and verdict.intervened),
        gate_failure=failed,
        fallback=not plan.protected,
    )


def _intervention(name: str) -> Literal["steer", "ablate", "none"]:
    return "steer" if name == "steer" else "ablate" if name == "ablate" else "none"


def guard_info(plan: GuardPlan, verdict: Verdict | None, outcome: Outcome) -> GuardInfo:
    """The verdict the client sees (``babelgate`` object and ``x-babelgate-*`` headers)."""
    return GuardInfo(
        language=plan.detection.language,
        language_source=plan.detection.source,
        language_confidence=round(plan.detection.confidence, 4),
        gate_score=None if verdict is None else verdict.score,
        threshold=plan.record.value,
        threshold_source=plan.record.source,
        decision=outcome.decision,
        policy=plan.policy,
        action=outcome.action,
        intervened=outcome.intervened,
        gate_failure=outcome.gate_failure,
        protected=not outcome.fallback,
        weak_families=list(plan.weak_families),
    )
