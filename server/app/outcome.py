"""What the guard does to a chat request once the engine has run: its outcome.

Runs in the API-server process (the chat route calls it for every request, streamed or not).
The rules live here as pure functions of plain values, so the whole table is in one place and
is tested without an engine or a model (the plan made before the engine runs, threshold, action
and policy, is ``server.plan``):

- ``request_verdict``: the one verdict a completion of ``n`` choices is decided on.
- ``decide_outcome``, once the first token and its verdict are back: steer, ablate, refuse,
  flag, nothing, or, when the gate failed, fail closed or fail open.
- ``guard_info``: the verdict as the client sees it (``babelgate`` object, ``x-babelgate-*``).

Steering and ablation are applied by the worker during the prefill (``GuardRecord.action`` in
``server.engine.interventions``); the outcome reports what the verdict says the worker did and
decides what the server does on top of it: a templated refusal, or letting generation go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from babelgate.server.app.schemas import GuardInfo
from babelgate.server.plan import GuardPlan, ablates_below
from babelgate.server.settings import GateFailureMode

if TYPE_CHECKING:
    from babelgate.server.engine.types import Verdict

# Why the output is what it is; ``fail-closed`` / ``fail-open``: the gate gave no score.
OutcomeKind = Literal["steer", "ablate", "refuse", "flag", "none", "fail-closed", "fail-open"]
# What the guard did to the output, as reported to the client and in the metrics.
TakenAction = Literal["steer", "ablate", "refuse", "flag", "none"]


@dataclass(frozen=True)
class Outcome:
    """What happens to one request once its verdict (or its absence) is known.

    ``action`` is what the client and the metrics see (a failed-closed gate reports "refuse",
    or "flag" under the flag action); ``refuse`` means the engine requests are aborted and the
    templated refusal is the answer; ``fallback`` means the language is unprotected, so
    ``plan.action`` was its fallback action.
    """

    kind: OutcomeKind
    action: TakenAction
    decision: str | None  # "harmful", "harmless", or None (no score, or policy none)
    refuse: bool
    intervened: bool
    gate_failure: bool
    fallback: bool


def scored(verdict: Verdict | None) -> bool:
    """Did the gate score this request? (A NaN or infinite score, from a broken activation,
    is a gate failure like a missing one: it must not pass as harmless.)"""
    return verdict is not None and verdict.score is not None and math.isfinite(verdict.score)


def request_verdict(verdicts: Sequence[Verdict | None]) -> Verdict | None:
    """The one verdict a chat completion is decided on, from the verdicts of its choices.

    Each of the ``n`` choices is an engine request with its own guard id, decided by the worker
    in its own prefill of the same prompt. They agree unless batch-dependent arithmetic puts the
    scores on both sides of the threshold, or one came back without a score. A completion gets
    one outcome for all its choices, so a choice with no verdict or no finite score makes the
    whole completion a gate failure (that verdict is returned), and otherwise the highest
    scoring choice decides: the completion is harmful when any of its choices is.
    """
    scores: list[float] = []
    for verdict in verdicts:
        if not scored(verdict):
            return verdict
        scores.append(verdict.score)  # type: ignore[union-attr]
    return verdicts[scores.index(max(scores))] if scores else None


def decide_outcome(
    plan: GuardPlan, verdict: Verdict | None, gate_failure: GateFailureMode
) -> Outcome:
    """The outcome of a request from its plan, its verdict and ``--gate-failure``.

    The first rule that applies wins:

    1. gate failed (policy not ``none``, and no verdict or no finite score), ``closed``:
       fail-closed, the request is treated as harmful under its action: flagged under ``flag`` (the
       action never withholds an answer, so neither does its failure), else the templated
       refusal (reported action "refuse"; steering needs the score, so a refusal is what is
       left);
    2. gate failed, ``open``: fail-open, treated as harmless: served as the worker left it;
    3. harmful, plan action ``refuse``: refuse, templated refusal;
    4. harmful, plan action ``flag``: flag, output untouched (the plan ran it in shadow);
    5. the worker steered or ablated: steer / ablate (its output is the answer);
    6. anything else (harmless under flag, policy ``none``): none.

    The action reported outside rules 1, 3 and 4 is the intervention the worker made, read from
    the verdict (``Verdict.intervention``, counted only when it changed rows): ``routing``
    steers harmful and ablates harmless requests, ``always-steer`` / ``always-ablate`` do so
    whatever the score (so also when the gate failed), ``shadow`` and ``none`` do nothing, and
    without a verdict nothing is known to be done. Fail-open therefore reports "none" under
    every policy but the ``always-*`` ones, by the same rule as everywhere else, not a rule of
    its own. ``intervened`` is true for a refusal or when the worker changed some rows.
    """
    failed = plan.policy != "none" and not scored(verdict)
    decision = None if failed or verdict is None else verdict.decision
    done = "none" if verdict is None or not verdict.intervened else verdict.intervention
    kind: OutcomeKind
    action: TakenAction
    if failed and gate_failure == "closed":
        kind, action = "fail-closed", "flag" if plan.action == "flag" else "refuse"
    elif failed:
        kind, action = "fail-open", _intervention(done)
    elif decision == "harmful" and plan.action == "refuse":
        kind = action = "refuse"
    elif decision == "harmful" and plan.action == "flag":
        kind = action = "flag"
    else:
        kind = action = _intervention(done)
    refuse = action == "refuse"
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
        languages=list(plan.detection.languages),
        # A NaN or infinite score (a gate failure) is not a number JSON can carry.
        gate_score=verdict.score if scored(verdict) else None,
        threshold=plan.record.value,
        threshold_source=plan.record.source,
        harmless_below=ablates_below(plan.record, plan.ablation),
        ablation=plan.ablation,
        decision=outcome.decision,
        policy=plan.policy,
        action=outcome.action,
        intervened=outcome.intervened,
        gate_failure=outcome.gate_failure,
        protected=not outcome.fallback,
        weak_families=list(plan.weak_families),
    )
