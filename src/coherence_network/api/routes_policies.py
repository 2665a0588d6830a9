"""Type policies: an operator's settings per task type (a limit of running tasks that the claim enforces, retry
delays, the breaker's threshold), read and changed over HTTP; every change is in the audit trail."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from coherence_network.api.deps import acting_as, store_of
from coherence_network.api.models import COMMON_ERRORS
from coherence_network.contract import TaskType
from coherence_network.contract_steering import TypePolicyChange, TypePolicyList
from coherence_network.request_bodies import TypePolicyRequest

router = APIRouter(prefix="/api/agent", tags=["steering"], responses=COMMON_ERRORS)


@router.get("/policies", response_model=TypePolicyList)
def policies(request: Request) -> dict[str, Any]:
    """Every task type's policy: the fields an operator set (None: the default applies), how many of its tasks run
    now, and the defaults."""
    return {
        "policies": store_of(request).type_policies(every_type=[t.value for t in TaskType]),
        "defaults": asdict(store_of(request).type_defaults),  # from the settings (max_running None: no limit)
    }


@router.put("/policies/{task_type}", response_model=TypePolicyChange)
async def set_policy(task_type: TaskType, body: TypePolicyRequest, request: Request) -> dict[str, Any]:
    """Change a task type's policy: the fields given take their new values, those named in ``clear`` go back to the
    default, the rest stay. A new or raised limit hands the freed slots to waiting claims at once; a lowered one
    stops nothing that runs (the type then waits until it is under its limit). Setting what is already so changes
    nothing (``changed`` false): safe to repeat."""
    by = acting_as(request, body.by)
    try:
        stored, changed = await run_in_threadpool(store_of(request).set_type_policy, task_type.value, by,
                                                  **body.changes())
    except ValueError as error:  # against what is stored (a max delay below the stored first delay)
        raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(error),
                                       "input": body.changes()}]) from error
    return {"changed": changed, "policy": stored}
