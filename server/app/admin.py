"""``/admin/*``: per-language thresholds at run time, behind the admin token, with an audit trail.

Runs in the API-server process. A change is committed to the store (durably, with its audit
row) before the answer goes out, and the next request resolves its threshold from the store,
so changes apply without restart and survive one (with a PostgreSQL store, on every replica
within 2 s; while its database is down, writes answer 503). Store calls run in a thread: a
database round trip must not hold up the requests being served. Recalibration scores the
caller's labelled prompts on the live engine and applies the paper's rule through the gate
library (``HarmfulnessGate.recalibrate_from_scores``) on a scratch copy of the gate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from babelgate.server.app.auth import authenticated, require_admin_token
from babelgate.server.app.chat import service_of
from babelgate.server.app.errors import APIError, error_responses
from babelgate.server.app.schemas import (
    RecalibrationRequest,
    ThresholdUpdate,
    TrafficThresholdRequest,
)
from babelgate.server.app.service import GuardrailService, validated_language
from babelgate.server.engine.types import faults_enabled
from babelgate.server.langid import TARGET_LANGUAGES
from babelgate.server.plan import ablates_below

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/admin",
    route_class=authenticated(require_admin_token),
    responses=error_responses(400, 401, 403, 404, 503),
)
# Test-only fault injection, mounted only when ``faults_enabled()`` (``admin_routers``).
faults = APIRouter(
    prefix="/admin/faults",
    route_class=authenticated(require_admin_token),
    include_in_schema=False,
)


def _admin(request: Request) -> tuple[GuardrailService, str]:
    """The service (503 until its engine is up) and the caller's audit identity."""
    svc = service_of(request)
    svc.require_engine()
    return svc, request.state.actor


def _view(svc: GuardrailService, language: str) -> dict[str, Any]:
    record = svc.threshold(language)
    return {
        **record.to_dict(),
        # under --ablation, a harmless verdict ablates below this (None: never); from there to
        # the threshold the verdict is unsure and the request is left alone
        "ablates_below": ablates_below(record, svc.settings.ablation),
        "origin": svc.origin(language),
        "family_auroc": svc.gate.family_auroc(language),
        "weak_families": svc.gate.weak_families(language),
    }


def _publish(svc: GuardrailService, language: str) -> dict[str, Any]:
    svc.publish_threshold(language)
    return _view(svc, language)


@router.get("/thresholds")
async def list_thresholds(request: Request) -> dict[str, Any]:
    svc, _ = _admin(request)
    assert svc.store is not None
    languages = sorted(
        set(TARGET_LANGUAGES) | set(svc.gate.thresholds) | set(svc.store.overrides())
    )
    views = [_view(svc, lang) for lang in languages]
    return {
        "zero_shot_threshold": svc.gate.zero_shot_threshold,
        "gate_layer": svc.gate.layer,
        "gate_layers": list(svc.gate.layers),
        "unprotected_languages": [v["language"] for v in views if not v["protected"]],
        "unprotected_action": svc.settings.unprotected_action,
        "ablation": svc.settings.ablation,
        "weak_languages": {v["language"]: v["weak_families"] for v in views if v["weak_families"]},
        "weak_family_auroc": svc.gate.metadata.get("weak_family_auroc"),
        "thresholds": views,
    }


@router.get("/thresholds/{language}")
async def get_threshold(language: str, request: Request) -> dict[str, Any]:
    svc, _ = _admin(request)
    return _view(svc, validated_language(language, "language"))


@router.put("/thresholds/{language}")
async def put_threshold(language: str, body: ThresholdUpdate, request: Request) -> dict[str, Any]:
    svc, actor = _admin(request)
    lang = validated_language(language, "language")
    assert svc.store is not None
    previous = svc.threshold(lang)
    record = svc.scratch_gate().set_threshold(lang, body.value, source="manual", note=body.note)
    await asyncio.to_thread(svc.store.put, record, previous=previous, actor=actor, operation="set")
    return {**_publish(svc, lang), "previous": previous.to_dict()}


@router.delete("/thresholds/{language}")
async def delete_threshold(language: str, request: Request) -> dict[str, Any]:
    svc, actor = _admin(request)
    lang = validated_language(language, "language")
    assert svc.store is not None
    previous = svc.threshold(lang)
    removed = await asyncio.to_thread(
        svc.store.delete, lang, previous=previous, after=svc.gate.threshold(lang), actor=actor
    )
    if not removed:
        raise APIError(
            404,
            f"{lang!r} has no threshold override to delete (its threshold comes from the "
            f"{svc.origin(lang)})",
            param="language",
            code="no_override",
        )
    return {**_publish(svc, lang), "previous": previous.to_dict()}


async def _engine_scores(
    svc: GuardrailService, texts: list[str], language: str, what: str
) -> list[float]:
    """Gate scores of an admin call's ``texts`` on the live engine; a failure is counted and
    answers 503 (the threshold is left as it was)."""
    try:
        return await svc.require_engine().gate_scores(texts, language)
    except Exception as err:
        svc.metrics.gate_failures.labels("recalibrate").inc()
        raise APIError(503, f"scoring the {what} on the engine failed: {err}") from err


@router.post("/thresholds/{language}/recalibrate")
async def recalibrate(
    language: str, body: RecalibrationRequest, request: Request
) -> dict[str, Any]:
    svc, actor = _admin(request)
    lang = validated_language(language, "language")
    assert svc.store is not None
    cap = svc.settings.max_recalibration_examples
    if max(len(body.harmful), len(body.harmless)) > cap:
        raise APIError(400, f"at most {cap} examples per class", param="harmful")
    texts = body.harmful + body.harmless
    labels = np.array([1] * len(body.harmful) + [0] * len(body.harmless))
    scores = await _engine_scores(svc, texts, lang, "examples")
    previous = svc.threshold(lang)
    try:
        record = svc.scratch_gate().recalibrate_from_scores(lang, np.asarray(scores), labels)
    except ValueError as err:
        raise APIError(400, str(err), param="harmful") from err
    note = body.note or f"recalibrated on the live engine from {len(texts)} examples"
    if not record.protected:  # keep the UNPROTECTED explanation in front of the caller's note
        note = f"{record.note} {note}"
    record = dataclasses.replace(record, note=note)
    await asyncio.to_thread(
        svc.store.put, record, previous=previous, actor=actor, operation="recalibrate"
    )
    return {
        **_publish(svc, lang),
        "previous": previous.to_dict(),
        "scores": {"harmful": [float(s) for s in scores[: len(body.harmful)]],
                   "harmless": [float(s) for s in scores[len(body.harmful):]]},
    }  # fmt: skip


@router.post("/thresholds/{language}/from-traffic")
async def from_traffic(
    language: str, body: TrafficThresholdRequest, request: Request
) -> dict[str, Any]:
    """A threshold for a language without labels: the reference language's live threshold
    moved by the shift between the two languages' unlabelled scores on the live engine
    (``HarmfulnessGate.set_traffic_threshold``)."""
    svc, actor = _admin(request)
    lang = validated_language(language, "language")
    ref = validated_language(body.reference_language, "reference_language")
    assert svc.store is not None
    cap = svc.settings.max_recalibration_examples
    if max(len(body.prompts), len(body.reference_prompts)) > cap:
        raise APIError(400, f"at most {cap} prompts per language", param="prompts")
    scores = await _engine_scores(svc, body.prompts, lang, "prompts")
    ref_scores = await _engine_scores(svc, body.reference_prompts, ref, "prompts")
    previous = svc.threshold(lang)
    try:
        record = svc.scratch_gate().set_traffic_threshold(
            lang, np.asarray(scores), np.asarray(ref_scores), svc.threshold(ref),
            quantile=body.quantile, note=body.note,
        )  # fmt: skip
    except ValueError as err:
        raise APIError(400, str(err), param="prompts") from err
    await asyncio.to_thread(
        svc.store.put, record, previous=previous, actor=actor, operation="from-traffic"
    )
    return {
        **_publish(svc, lang),
        "previous": previous.to_dict(),
        "scores": {"prompts": [float(x) for x in scores],
                   "reference_prompts": [float(x) for x in ref_scores]},
    }  # fmt: skip


@router.get("/engine")
async def engine_state(request: Request) -> dict[str, Any]:
    """What the guard holds in the worker (requests with a slot, verdicts finished but not yet
    fetched, slots in use) next to the requests vLLM has unfinished: once traffic stops, all
    are 0, else something leaked (``babelgate_requests_in_flight`` on ``/metrics`` is this
    server's side)."""
    svc, _ = _admin(request)
    engine = svc.require_engine()
    return {
        "worker": await engine.status(),
        "engine_unfinished_requests": engine.engine.get_num_unfinished_requests(),
    }


@router.get("/audit")
async def audit(
    request: Request,
    language: str | None = None,
    limit: int = Query(100, ge=1, le=10000),
) -> dict[str, Any]:
    svc, _ = _admin(request)
    assert svc.store is not None
    lang = None if language is None else validated_language(language, "language")
    entries = await asyncio.to_thread(svc.store.audit, lang, limit)
    return {"entries": [e.to_dict() for e in entries]}


def admin_routers() -> list[APIRouter]:
    """The admin API, with the fault switch when this process allows faults."""
    return [router, faults] if faults_enabled() else [router]


class FaultSwitch(BaseModel):
    on: bool


@faults.put("/gate-failure")
async def gate_failure(body: FaultSwitch, request: Request) -> dict[str, bool]:
    """While on, every guarded request's gate score is NaN in the worker, as a broken
    activation would make it: each follows ``--gate-failure`` and is counted in
    ``babelgate_gate_failures_total``."""
    svc, actor = _admin(request)
    await svc.require_engine().worker.inject_gate_failure(body.on)
    log.warning("fault injection by %s: gate failure %s", actor, "on" if body.on else "off")
    return {"gate_failure": body.on}
