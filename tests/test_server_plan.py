"""The routing plan for unprotected languages: which action, which threshold, which metric.

Pure routing logic on a real fitted gate and a real threshold store; the engine is not needed
to plan (``plan`` only checks that one is up), so none is started here.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fitted_gate
from prometheus_client import CollectorRegistry

from gate.estimator import HarmfulnessGate
from server.admin_store import ThresholdStore
from server.app.service import GuardrailService
from server.langid import Detection
from server.metrics import ServerMetrics
from server.settings import ServeSettings


def service(tmp_path, **settings) -> tuple[GuardrailService, HarmfulnessGate]:
    gate = fitted_gate()
    e0 = np.zeros(8)
    e0[0] = 3.0
    gate.recalibrate("yo", np.stack([-e0, e0]), np.array([1, 0]))  # inverted: unprotected
    gate.recalibrate("sw", np.stack([e0, -e0]), np.array([1, 0]))  # separated: protected
    svc = GuardrailService(ServeSettings(**settings), ServerMetrics(CollectorRegistry()))
    svc._gate, svc.store = gate, ThresholdStore(tmp_path, "abc")
    svc.engine = object()  # type: ignore[assignment]  # plan() only checks readiness
    return svc, gate


def counted(svc: GuardrailService, lang: str, action: str) -> float:
    return svc.metrics.unprotected_requests.labels(lang, action)._value.get()


@pytest.mark.parametrize("fallback", ["flag", "refuse", "steer"])
def test_unprotected_language_gets_the_fallback_action(tmp_path, fallback):
    svc, gate = service(tmp_path, action="steer", unprotected_action=fallback)
    plan = svc.plan(Detection("yo", "override", 1.0))
    assert not plan.protected and plan.action == fallback
    assert plan.policy == ("shadow" if fallback == "flag" else "routing")
    own = gate.threshold("yo").value
    stricter = min(own, gate.zero_shot_threshold)
    assert plan.record.value == (stricter if fallback == "refuse" else own)
    assert counted(svc, "yo", fallback) == 1.0
    protected = svc.plan(Detection("sw", "override", 1.0))
    assert protected.protected and protected.action == "steer"
    assert counted(svc, "sw", fallback) == 0.0
    assert svc.publish_threshold("yo").protected is False
    assert svc.metrics.language_protected.labels("yo")._value.get() == 0.0


def test_weak_families_reach_the_plan_the_verdict_the_admin_view_and_the_metric(tmp_path):
    from server.app.admin import _view
    from server.app.schemas import GuardInfo

    svc, gate = service(tmp_path)
    gate.metadata = {
        "family_auroc": {"yo": {"instruction": 0.9, "question": 0.55}, "en": {"question": 0.92}},
        "weak_family_auroc": 0.7,
    }
    assert svc.plan(Detection("yo", "override", 1.0)).weak_families == ("question",)
    assert svc.plan(Detection("en", "override", 1.0)).weak_families == ()
    assert svc.plan(Detection("ko", "override", 1.0)).weak_families == ()  # not measured
    assert svc.publish_family_auroc() == {"yo": ["question"]}
    gauge = svc.metrics.family_auroc
    assert gauge.labels("yo", "question")._value.get() == 0.55
    assert gauge.labels("en", "question")._value.get() == 0.92
    view = _view(svc, "yo")
    assert view["weak_families"] == ["question"]
    assert view["family_auroc"] == {"instruction": 0.9, "question": 0.55}
    info = GuardInfo(language="yo", language_source="override", language_confidence=1.0,
                     gate_score=0.1, threshold=0.0, threshold_source="zero-shot",
                     decision="harmless", policy="routing", action="steer", intervened=True,
                     weak_families=["question"])  # fmt: skip
    assert info.headers()["x-babelgate-weak-families"] == "question"
    assert info.model_copy(update={"weak_families": []}).headers()[
        "x-babelgate-weak-families"
    ] == "none"
