"""Liveness, readiness, version, Prometheus metrics, and retention on demand (`coherence prune`)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coherence_network.api.deps import actor_of, store_of
from coherence_network.api.models import COMMON_ERRORS, responses
from coherence_network.api.readiness import readiness_checks
from coherence_network.contract import Health, Readiness, VersionInfo
from coherence_network.request_bodies import PruneRequest
from coherence_network.store.retention import prune_store
from coherence_network.versioning import running_version

router = APIRouter(tags=["ops"])
log = logging.getLogger("coherence.api")
# Checks whose failure detail may name hosts, ports, users or paths: shown only to a caller with the token.
_PRIVATE_DETAIL = frozenset({"store_reachable", "store_writable"})
_READY: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Every check passed"},
    503: {"model": Readiness, "description": "A check failed (each is listed)"},
}


@router.get("/api/health", response_model=Health, responses=responses(400, 413))
def health(request: Request) -> dict[str, object]:
    """Liveness: the process answers. Never touches the database, so an outage cannot cause a restart storm."""
    return {"status": "ok", "uptime_seconds": round(time.monotonic() - request.app.state.started, 3)}


@router.get("/api/ready", responses={**responses(400, 413), **_READY})
async def ready(request: Request) -> JSONResponse:
    """Readiness: every check with its result; 200 when all pass, else 503.

    No token is needed, so a failure that could name the store's host, port, user or paths is shown as "see
    var/logs/api.log" unless the caller sends the token (when one is set); the log has it in full."""
    state = request.app.state
    checks = await run_in_threadpool(readiness_checks, state.settings, state.store)
    _log_failures(state, checks)
    if not getattr(request.state, "token_ok", False):
        checks = [_shown_to_anyone(check) for check in checks]
    ok = all(c["ok"] for c in checks)
    body = {"ready": ok, "checks": checks}
    if not ok:
        body["reason"] = "; ".join(f"{c['name']}: {c['detail']}" for c in checks if not c["ok"])
    return JSONResponse(body, status_code=200 if ok else 503)


def _shown_to_anyone(check: dict[str, object]) -> dict[str, object]:
    if check["ok"] or check["name"] not in _PRIVATE_DETAIL:
        return check
    return {**check, "detail": "failed: see var/logs/api.log on the API's host"}


def _log_failures(state: Any, checks: list[dict[str, object]]) -> None:
    """Each new failure in full, once (a load balancer asks every few seconds), and the return to ready."""
    failures = "; ".join(f"{c['name']}: {c['detail']}" for c in checks if not c["ok"])
    if failures == getattr(state, "ready_failures", ""):
        return
    if failures:
        log.warning("not ready: %s", failures)
    else:
        log.info("ready again")
    state.ready_failures = failures


@router.get("/api/version", response_model=VersionInfo, responses=responses(400, 401, 413))
def version() -> dict[str, str | None]:
    """Package version and git SHA of the code this process runs."""
    return running_version()


@router.get("/metrics", response_class=PlainTextResponse, responses=COMMON_ERRORS)
def metrics(request: Request) -> Response:
    """Prometheus text format (text/plain; version=1.0.0)."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)



@router.post("/api/agent/prune", responses=COMMON_ERRORS)
async def prune(body: PruneRequest, request: Request) -> dict[str, Any]:
    """One retention pass over the store now, by this API's COHERENCE_RETAIN_* settings (`coherence prune`): finished
    tasks, resolved monitor issues, forgotten runner rows and old audit records deleted, or with ``dry_run``
    counted. Safe to repeat; a pass that deleted anything is in the audit trail."""
    report = await run_in_threadpool(lambda: prune_store(store_of(request), request.app.state.settings,
                                                         dry_run=body.dry_run, actor=actor_of(request)))
    return {"dry_run": body.dry_run, **asdict(report)}
