"""Costs and caps over HTTP: the caps (read; set, which the audit trail records and which wakes waiting claims when
the day cap changes) and the spend read (today against the day cap, per agent, per day, per item)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from coherence_network.api.deps import acting_as, store_of
from coherence_network.api.models import COMMON_ERRORS
from coherence_network.contract_costs import CostCaps, CostCapsChange, Spend
from coherence_network.request_bodies import CostCapsRequest
from coherence_network.store.costs import MAX_DAYS

router = APIRouter(prefix="/api/agent", tags=["steering"], responses=COMMON_ERRORS)


@router.get("/caps", response_model=CostCaps)
def caps(request: Request) -> dict[str, Any]:
    """The cost caps in force (US dollars; 0 = none): the operator's where set, else the settings' defaults
    (COHERENCE_COST_CAP_TASK_USD, _ITEM_USD, _DAY_USD)."""
    return store_of(request).caps()


@router.put("/caps", response_model=CostCapsChange)
async def set_caps(body: CostCapsRequest, request: Request) -> dict[str, Any]:
    """Set the caps given; the rest stay. Raising the day cap lets waiting claims hand out agent tasks again at
    once, on every replica; no restart. The same value again changes nothing (``changed`` false): safe to repeat."""
    by = acting_as(request, body.by)
    stored, changed = await run_in_threadpool(store_of(request).set_caps, by, body.changes())
    return {"changed": changed, "caps": stored}


@router.get("/spend", response_model=Spend)
def spend(request: Request, item: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
          days: Annotated[int, Query(ge=1, le=MAX_DAYS)] = 7) -> dict[str, Any]:
    """What agents reported using: today (UTC) against the day cap, today per agent, the last ``days`` days, and
    with ``item`` that backlog item's whole spend against the item cap."""
    return store_of(request).spend(item=item, days=days)
