"""Liveness, readiness, version and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coherence_network.store.db import readiness
from coherence_network.versioning import running_version

router = APIRouter()


@router.get("/api/health", tags=["ops"])
def health(request: Request) -> dict[str, object]:
    """Liveness: the process answers. Never touches the database, so an outage cannot cause a restart storm."""
    return {"status": "ok", "uptime_seconds": round(time.monotonic() - request.app.state.started, 3)}


@router.get("/api/ready", tags=["ops"])
async def ready(request: Request) -> JSONResponse:
    """Readiness: every check with its result; 200 when all pass, else 503."""
    checks = await run_in_threadpool(readiness, request.app.state.store.engine)
    ok = all(c["ok"] for c in checks)
    body = {"ready": ok, "checks": checks}
    if not ok:
        body["reason"] = "; ".join(f"{c['name']}: {c['detail']}" for c in checks if not c["ok"])
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/api/version", tags=["ops"])
def version() -> dict[str, str | None]:
    """Package version and git SHA of the code this process runs."""
    return running_version()


@router.get("/metrics", tags=["ops"])
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
