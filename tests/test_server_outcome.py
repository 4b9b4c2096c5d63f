"""The outcome of a chat request: every verdict x action x gate-failure mode, the unprotected
fallback, the engine policies and the one verdict of n choices, on the pure functions of
``server.plan`` and ``server.app.outcome``.

No engine and no model: a verdict row is what the worker would report for the request (its
score, decision and the intervention it made), written out by hand.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from babelgate.gate.estimator import ThresholdRecord
from babelgate.server.app.outcome import (
    Outcome,
    decide_outcome,
    guard_info,
    request_verdict,
)
from babelgate.server.engine.types import Verdict
from babelgate.server.langid import Detection
from babelgate.server.plan import GuardPlan, ablates_below, plan_request

DETECTION = Detection("de", "override", 1.0)
ZERO_SHOT = 0.25


def record(value: float = 0.5, protected: bool = True) -> ThresholdRecord:
    return ThresholdRecord("de", value, "recalibrated", 8, 4, 4, "2024-01-01T00:00:00Z",
                           auroc=0.9 if protected else 0.4, protected=protected)  # fmt: skip


def plan(action: str, *, policy: str = "routing", protected: bool = True) -> GuardPlan:
    return plan_request(DETECTION, record(protected=protected), action, policy=policy,
                        unprotected_action="flag", zero_shot_threshold=ZERO_SHOT)  # fmt: skip


def row(
    name: str, policy: str, intervention: str | None = None, positions: int | None = None
) -> Verdict | None:
    """The verdict the worker reports: "harmful" / "harmless" (scored), "unscored" (a verdict
    without a score: the request never reached its last prompt token), "missing" (none).
    ``positions``: rows the intervention changed (default 4 when there is one)."""
    if name == "missing":
        return None
    score, harmful = {"harmful": (1.5, True), "harmless": (-1.5, False),
                      "unscored": (None, None), "nan": (float("nan"), False)}[name]  # fmt: skip
    if intervention is None:  # what routing does; shadow and none never touch the stream
        routed = policy == "routing" and harmful is not None
        intervention = ("steer" if harmful else "ablate") if routed else "none"
    if positions is None:
        positions = 0 if intervention == "none" else 4
    return Verdict("b1", "de", policy, 0.5, "recalibrated", score, harmful, intervention, positions)


# (verdict, configured action, --gate-failure) -> (kind, action reported, refusal, intervened,
# gate failure, decision). Protected language, --policy routing (flag runs it in shadow).
# A failed gate is treated as harmful when closed (refused; flagged under flag, which never
# refuses a harmful request either) and as harmless when open.
TABLE = {
    ("harmful", "steer", "closed"): ("steer", "steer", False, True, False, "harmful"),
    ("harmful", "steer", "open"): ("steer", "steer", False, True, False, "harmful"),
    ("harmless", "steer", "closed"): ("ablate", "ablate", False, True, False, "harmless"),
    ("harmless", "steer", "open"): ("ablate", "ablate", False, True, False, "harmless"),
    ("unscored", "steer", "closed"): ("fail-closed", "refuse", True, True, True, None),
    ("unscored", "steer", "open"): ("fail-open", "none", False, False, True, None),
    ("missing", "steer", "closed"): ("fail-closed", "refuse", True, True, True, None),
    ("missing", "steer", "open"): ("fail-open", "none", False, False, True, None),
    ("harmful", "refuse", "closed"): ("refuse", "refuse", True, True, False, "harmful"),
    ("harmful", "refuse", "open"): ("refuse", "refuse", True, True, False, "harmful"),
    ("harmless", "refuse", "closed"): ("ablate", "ablate", False, True, False, "harmless"),
    ("harmless", "refuse", "open"): ("ablate", "ablate", False, True, False, "harmless"),
    ("unscored", "refuse", "closed"): ("fail-closed", "refuse", True, True, True, None),
    ("unscored", "refuse", "open"): ("fail-open", "none", False, False, True, None),
    ("missing", "refuse", "closed"): ("fail-closed", "refuse", True, True, True, None),
    ("missing", "refuse", "open"): ("fail-open", "none", False, False, True, None),
    ("harmful", "flag", "closed"): ("flag", "flag", False, False, False, "harmful"),
    ("harmful", "flag", "open"): ("flag", "flag", False, False, False, "harmful"),
    ("harmless", "flag", "closed"): ("none", "none", False, False, False, "harmless"),
    ("harmless", "flag", "open"): ("none", "none", False, False, False, "harmless"),
    ("unscored", "flag", "closed"): ("fail-closed", "flag", False, False, True, None),
    ("unscored", "flag", "open"): ("fail-open", "none", False, False, True, None),
    ("missing", "flag", "closed"): ("fail-closed", "flag", False, False, True, None),
    ("missing", "flag", "open"): ("fail-open", "none", False, False, True, None),
}


def summary(outcome: Outcome) -> tuple:
    return (outcome.kind, outcome.action, outcome.refuse, outcome.intervened,
            outcome.gate_failure, outcome.decision)  # fmt: skip


@pytest.mark.parametrize("action", ["steer", "refuse", "flag"])
@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_nan_score_is_a_gate_failure_not_a_harmless_verdict(action, mode):
    """NaN >= threshold is false, so the worker reports such a request harmless: the outcome
    must not believe it."""
    p = plan(action)
    outcome = decide_outcome(p, row("nan", p.policy), mode)
    assert outcome.gate_failure and outcome.kind == f"fail-{mode}" and outcome.decision is None
    if mode == "closed":
        assert summary(outcome) == TABLE["unscored", action, mode]
    assert request_verdict([row("harmful", p.policy), row("nan", p.policy)]).score != 1.5
    # and the client is told no score, not a NaN that no strict JSON parser reads
    assert guard_info(p, row("nan", p.policy), outcome).gate_score is None


@pytest.mark.parametrize(("verdict", "action", "mode"), sorted(TABLE))
def test_outcome_of_every_verdict_action_and_failure_mode(verdict, action, mode):
    p = plan(action)
    assert p.policy == ("shadow" if action == "flag" else "routing")
    outcome = decide_outcome(p, row(verdict, p.policy), mode)
    assert summary(outcome) == TABLE[verdict, action, mode]
    assert outcome.fallback is False


@pytest.mark.parametrize("fallback", ["flag", "refuse", "steer"])
@pytest.mark.parametrize("own", [0.5, 0.1])  # above, then below the zero-shot threshold
def test_unprotected_language_gets_its_fallback_and_refuse_the_stricter_threshold(fallback, own):
    p = plan_request(DETECTION, record(own, protected=False), "steer", policy="routing",
                     unprotected_action=fallback, zero_shot_threshold=ZERO_SHOT)  # fmt: skip
    assert (p.action, p.protected) == (fallback, False)
    assert p.policy == ("shadow" if fallback == "flag" else "routing")
    assert p.record.value == (min(own, ZERO_SHOT) if fallback == "refuse" else own)
    # the source names the threshold in use: the zero-shot one when it replaced the own one
    stricter = fallback == "refuse" and own > ZERO_SHOT
    assert p.record.source == ("zero-shot" if stricter else "recalibrated")
    assert p.record.protected is False
    outcome = decide_outcome(p, row("harmful", p.policy), "open")
    want = {"flag": ("flag", False), "refuse": ("refuse", True), "steer": ("steer", False)}
    assert (outcome.kind, outcome.refuse) == want[fallback]
    assert outcome.fallback is True
    closed = decide_outcome(p, None, "closed")
    assert (closed.kind, closed.fallback) == ("fail-closed", True)
    assert (closed.action, closed.refuse) == (("flag", False) if fallback == "flag" else
                                              ("refuse", True))  # fmt: skip


def test_protected_language_keeps_its_action_and_threshold():
    p = plan_request(DETECTION, record(0.5), "refuse", policy="routing",
                     unprotected_action="flag", zero_shot_threshold=ZERO_SHOT)  # fmt: skip
    assert (p.action, p.policy, p.record.value, p.protected) == ("refuse", "routing", 0.5, True)


@pytest.mark.parametrize("action", ["steer", "refuse", "flag"])
@pytest.mark.parametrize("verdict", ["unscored", "missing"])
@pytest.mark.parametrize("mode", ["closed", "open"])
def test_policy_none_never_fails_and_never_acts(action, verdict, mode):
    p = plan(action, policy="none")
    assert p.policy == "none"  # flag does not turn "none" into shadow
    outcome = decide_outcome(p, row(verdict, "none"), mode)
    assert summary(outcome) == ("none", "none", False, False, False, None)


@pytest.mark.parametrize(
    ("policy", "verdict", "worker", "action", "mode", "expected"),
    [
        # always-* intervene whatever the score; the reported action is what the worker did
        ("always-steer", "harmless", "steer", "steer", "closed", ("steer", "steer", False)),
        ("always-ablate", "harmful", "ablate", "steer", "closed", ("ablate", "ablate", False)),
        ("always-ablate", "harmful", "ablate", "refuse", "open", ("refuse", "refuse", True)),
        # a failed gate under fail-open still reports an intervention the worker made
        ("always-steer", "unscored", "steer", "steer", "open", ("fail-open", "steer", False)),
        ("always-ablate", "unscored", "ablate", "steer", "open", ("fail-open", "ablate", False)),
        ("always-steer", "unscored", "steer", "steer", "closed", ("fail-closed", "refuse", True)),
        # --policy shadow with steer: the worker never steers, so a harmful request is flagged
        ("shadow", "harmful", "none", "steer", "closed", ("flag", "flag", False)),
        ("shadow", "harmless", "none", "steer", "closed", ("none", "none", False)),
        ("shadow", "unscored", "none", "steer", "closed", ("fail-closed", "flag", False)),
        # shadow with refuse still refuses (the server refuses, not the worker)
        ("shadow", "harmful", "none", "refuse", "closed", ("refuse", "refuse", True)),
    ],
)  # fmt: skip
def test_other_policies(policy, verdict, worker, action, mode, expected):
    p = plan(action, policy=policy)
    assert p.policy == policy
    assert p.action == ("flag" if (policy, action) == ("shadow", "steer") else action)
    outcome = decide_outcome(p, row(verdict, policy, worker), mode)
    assert (outcome.kind, outcome.action, outcome.refuse) == expected


def test_flag_overrides_an_always_policy_with_shadow():
    assert plan("flag", policy="always-steer").policy == "shadow"


def test_guard_info_reports_plan_verdict_and_outcome():
    p = plan_request(DETECTION, record(0.5, protected=False), "steer", policy="routing",
                     unprotected_action="refuse", zero_shot_threshold=ZERO_SHOT,
                     weak_families=["question"])  # fmt: skip
    verdict = row("harmful", "routing")
    info = guard_info(p, verdict, decide_outcome(p, verdict, "closed"))
    assert info.model_dump() == {
        "language": "de", "language_source": "override", "language_confidence": 1.0,
        "languages": ["de"], "gate_score": 1.5, "threshold": ZERO_SHOT,
        "threshold_source": "zero-shot", "harmless_below": ZERO_SHOT, "ablation": "always",
        "decision": "harmful", "policy": "routing", "action": "refuse", "intervened": True,
        "gate_failure": False, "protected": False, "weak_families": ["question"],
    }  # fmt: skip
    failed = guard_info(p, None, decide_outcome(p, None, "open"))
    assert (failed.gate_score, failed.decision, failed.action, failed.gate_failure) == (
        None, None, "none", True
    )


@pytest.mark.parametrize(
    ("ablation", "band", "sent", "shown"),
    [("always", -1.0, None, 0.5), ("band", -1.0, -1.0, -1.0), ("band", None, -math.inf, None),
     ("never", -1.0, -math.inf, None)],
)
def test_the_ablation_rule_sets_the_band_sent_and_shown(ablation, band, sent, shown) -> None:
    """--ablation: always = the paper (ablate below the threshold), band = below the record's
    measured edge only (none measured: never), never = no harmless verdict ablates."""
    own = dataclasses.replace(record(0.5), harmless_below=band)
    p = plan_request(DETECTION, own, "steer", policy="routing", unprotected_action="flag",
                     zero_shot_threshold=ZERO_SHOT, ablation=ablation)  # fmt: skip
    assert p.harmless_threshold == sent and ablates_below(own, ablation) == shown


def test_an_unprotected_language_under_refuse_keeps_its_band_below_the_zero_shot_threshold():
    """The stricter zero-shot threshold replaces the language's own; a band edge above it
    would be an invalid record (the band lies below the threshold), so it moves down too."""
    own = dataclasses.replace(record(0.5, protected=False), harmless_below=0.0)
    p = plan_request(DETECTION, own, "steer", policy="routing", unprotected_action="refuse",
                     zero_shot_threshold=-1.0, ablation="band")  # fmt: skip
    assert (p.record.value, p.record.harmless_below, p.harmless_threshold) == (-1.0, -1.0, -1.0)


@pytest.mark.parametrize("policy", ["routing", "shadow", "always-steer", "always-ablate"])
@pytest.mark.parametrize("verdict", ["unscored", "missing"])
def test_fail_open_reports_the_intervention_the_worker_made_under_every_policy(policy, verdict):
    """One rule for every policy: the reported action is the intervention the worker made
    (rows changed). Routing and shadow make none without a score, always-* make theirs."""
    p = plan("steer", policy=policy)
    fixed = {"always-steer": "steer", "always-ablate": "ablate"}.get(policy, "none")
    for positions in (0, 4):
        v = row(verdict, policy, fixed, positions if fixed != "none" else 0)
        outcome = decide_outcome(p, v, "open")
        made = v is not None and v.intervened
        assert (outcome.kind, outcome.refuse, outcome.gate_failure) == ("fail-open", False, True)
        assert (outcome.action, outcome.intervened) == ((fixed, True) if made else ("none", False))


def test_n_choices_are_decided_on_one_verdict():
    harmless, harmful = row("harmless", "routing"), row("harmful", "routing")
    assert request_verdict([harmless]) is harmless
    # choices that disagree (scores on both sides of the threshold): the harmful one decides
    assert request_verdict([harmless, harmful]) is harmful
    assert request_verdict([harmful, harmless]) is harmful
    # one choice without a score or a verdict: the whole completion failed
    unscored = row("unscored", "routing")
    assert request_verdict([harmless, unscored, harmful]) is unscored
    assert request_verdict([harmful, None]) is None
    p = plan("refuse")
    outcome = decide_outcome(p, request_verdict([harmless, harmful]), "open")
    assert (outcome.kind, outcome.refuse, outcome.decision) == ("refuse", True, "harmful")
    failed = decide_outcome(p, request_verdict([harmless, None]), "closed")
    assert (failed.kind, failed.refuse, failed.gate_failure) == ("fail-closed", True, True)
    # policy none: no choice is scored, nothing failed
    unscored_none = [row("unscored", "none"), row("unscored", "none")]
    none = decide_outcome(plan("steer", policy="none"), request_verdict(unscored_none), "closed")
    assert (none.kind, none.gate_failure) == ("none", False)
