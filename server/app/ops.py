"""``/health``, ``/version`` and ``/metrics``: what orchestrators and Prometheus poll.

Runs in the API-server process. ``/health`` is 200 only once the guarded engine has started and
its hook self-check has passed (``GuardedEngine.start`` raises otherwise), and while the engine
reports itself alive; 503 before (with the start-up ``phase``: a first-use calibration takes
minutes) and after. While the threshold store's database cannot be reached it is 200 with
``{"status": "degraded", "reason": ...}``: requests are still guarded, with the thresholds last
read, but admin changes fail.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel

from babelgate.gate.artifact import babelgate_version
from babelgate.server.app.chat import service_of

log = logging.getLogger(__name__)
router = APIRouter()


class Health(BaseModel):
    """``/health``: ok (200), or starting with the start-up phase / unhealthy with the reason
    (503)."""

    status: Literal["ok", "starting", "unhealthy"]
    phase: str | None = None
    reason: str | None = None


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> JSONResponse:
    svc = service_of(request)
    if svc.engine is None:
        return JSONResponse({"status": "starting", "phase": svc.phase}, status_code=503)
    try:
        await svc.engine.engine.check_health()
    except Exception as exc:
        log.error("engine health check failed: %s", exc)
        return JSONResponse({"status": "unhealthy", "reason": str(exc)}, status_code=503)
    store = svc.store.status() if svc.store is not None else None
    if store is not None and not store.ok:  # still serving, with the thresholds last read
        return JSONResponse({"status": "degraded", "reason": store.reason})
    return JSONResponse({"status": "ok"})


@router.get("/version")
async def version(request: Request) -> dict[str, Any]:
    import vllm  # lazy: only this endpoint needs its version

    svc = service_of(request)
    out: dict[str, Any] = {"version": babelgate_version(), "vllm": vllm.__version__}
    if svc.engine is not None:
        out.update(
            model=str(svc.model_path), artifact=str(svc.artifact_path), gate_layer=svc.gate.layer
        )
    return out


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
