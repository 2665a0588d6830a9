"""The runner registry: a runner says it is alive (host, pid, version), and who has been seen."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from coherence_network.api.deps import store_of
from coherence_network.api.models import COMMON_ERRORS
from coherence_network.contract import Runner, RunnerList
from coherence_network.request_bodies import RunnerHeartbeat

router = APIRouter(prefix="/api/agent", tags=["agent"], responses=COMMON_ERRORS)


@router.post("/runners/heartbeat", response_model=Runner)
async def runner_heartbeat(body: RunnerHeartbeat, request: Request) -> dict[str, Any]:
    """Register a runner (or refresh it): id, host, pid, version, last_seen."""
    return await run_in_threadpool(
        lambda: store_of(request).runner_heartbeat(
            body.runner_id, host=body.host, pid=body.pid, version=body.version, info=body.info
        )
    )


@router.get("/runners", response_model=RunnerList)
def list_runners(request: Request) -> dict[str, Any]:
    return {"items": store_of(request).runners()}
