"""The audit trail: who did what, through which channel, when and why (``GET /api/audit``, newest first, filtered,
paged by a cursor); and the one act recorded from outside the API: a restart requested on a host's supervisor."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator

from coherence_network.api.deps import MAX_ACTOR_CHARS, actor_of, store_of
from coherence_network.api.models import COMMON_ERRORS
from coherence_network.contract_steering import AUDIT_CHANNELS, AuditPage
from coherence_network.request_bodies import INT32_MAX, RestartNote, Text, UtcTime

router = APIRouter(prefix="/api/audit", tags=["audit"], responses=COMMON_ERRORS)
log = logging.getLogger("coherence.api")
MAX_ACTION_CHARS = 32  # the audit table's action column


def _channel(value: str) -> str:
    if value not in AUDIT_CHANNELS:
        raise ValueError(f"channel must be one of {', '.join(AUDIT_CHANNELS)}")
    return value


Channel = Annotated[str, AfterValidator(_channel)]
_CHANNELS = f"One of {', '.join(AUDIT_CHANNELS)}"


@router.get("", response_model=AuditPage)
def audit_trail(
    request: Request,
    limit: int = Query(50, ge=1, le=500),
    before_id: int | None = Query(None, ge=1, le=INT32_MAX, description="Only records older than this id: the "
                                  "previous page's next_before_id (a stable page while records are appended)"),
    actor: Text | None = Query(None, max_length=MAX_ACTOR_CHARS, description="e.g. cli:alice, console:bob, api"),
    channel: Channel | None = Query(None, description=_CHANNELS),
    action: Text | None = Query(None, max_length=MAX_ACTION_CHARS, description="e.g. create, decide, retry, "
                                "cancel, pause, resume, restart, prune, clear_fatal, sign_in, sign_in_failed"),
    task_id: int | None = Query(None, ge=1, le=INT32_MAX, description="The records of one task"),
    since: UtcTime | None = Query(None, description="Recorded at or after this time (ISO 8601 with a zone)"),
    until: UtcTime | None = Query(None, description="Recorded before this time (ISO 8601 with a zone)"),
) -> dict[str, Any]:
    """Operator actions, newest first: each with its actor, channel, action, task or target, reason and the task's
    status before and after. Every filter given must match."""
    items, next_before_id = store_of(request).audit_page(limit=limit, before_id=before_id, actor=actor,
                                                        channel=channel, action=action, task_id=task_id, since=since,
                                                        until=until)
    return {"items": items, "limit": limit, "next_before_id": next_before_id}


@router.post("/restarts", status_code=201)
async def note_restart(body: RestartNote, request: Request) -> dict[str, bool]:
    """A restart `coherence restart` requested on ``host`` (the supervisor there acts on its request file, with or
    without the API): one record in the audit trail. Sent once (never retried after it may have arrived), so one
    request is one record; a component's restart (component:<name>) is not an operator's act and records nothing."""
    actor = actor_of(request)
    if actor is None:
        return {"recorded": False}
    await run_in_threadpool(store_of(request).audit_note, actor, "restart", target=body.component,
                            reason=body.reason, detail={"host": body.host})
    log.info("restart of %s on %s requested by %s: %s", body.component, body.host, actor, body.reason[:200])
    return {"recorded": True}
