"""Liveness, readiness, version and Prometheus metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coherence_network.api.models import COMMON_ERRORS, responses
from coherence_network.store.db import readiness
from coherence_network.versioning import running_version

router = APIRouter(tags=["ops"])
_READY: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every check passed"}, 503: {"description": "A check failed (each is listed)"},
}


@router.get("/api/health", responses=responses(400, 413))
def health(request: Request) -> dict[str, object]:
    """Liveness: the process answers. Never touches the database, so an outage cannot cause a restart storm."""
    return {"status": "ok", "uptime_seconds": round(time.monotonic() - request.app.state.started, 3)}


@router.get("/api/ready", responses={**responses(400, 413), **_READY})
async def ready(request: Request) -> JSONResponse:
    """Readiness: every check with its result; 200 when all pass, else 503."""
    checks = await run_in_threadpool(readiness, request.app.state.store.engine)
    ok = all(c["ok"] for c in checks)
    body = {"ready": ok, "checks": checks}
    if not ok:
        body["reason"] = "; ".join(f"{c['name']}: {c['detail']}" for c in checks if not c["ok"])
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/api/version", responses=responses(400, 401, 413))
def version() -> dict[str, str | None]:
    """Package version and git SHA of the code this process runs."""
    return running_version()


@router.get("/metrics", response_class=PlainTextResponse, responses=COMMON_ERRORS)
def metrics(request: Request) -> Response:
    """Prometheus text format (text/plain; version=1.0.0)."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
