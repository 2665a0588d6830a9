"""Bulk actions over HTTP: preview what cancel or retry would take by a filter, then act with the preview's token
(api/bulk.py says what the token binds). An empty filter is refused (422)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from coherence_network.api import bulk
from coherence_network.api.deps import acting_as, store_of
from coherence_network.api.models import COMMON_ERRORS, responses
from coherence_network.contract_steering import BulkPreview, BulkResult
from coherence_network.request_bodies import BulkActRequest, BulkPreviewRequest

router = APIRouter(prefix="/api/agent/tasks/bulk", tags=["steering"], responses=COMMON_ERRORS)


def tokens_of(request: Request) -> bulk.BulkTokens:
    """The app's token issuer (set once in ``create_app``)."""
    return request.app.state.bulk_tokens


@router.post("/preview", response_model=BulkPreview)
async def preview(body: BulkPreviewRequest, request: Request) -> dict[str, Any]:
    """How many tasks ``action`` would take now by ``filter`` (the statuses the action can move, or the filter's
    one), the newest few, and a token that lets one act do it. Nothing is changed."""
    return await run_in_threadpool(bulk.preview, store_of(request), tokens_of(request), body)


@router.post("/act", response_model=BulkResult, responses=responses(409))
async def act(body: BulkActRequest, request: Request) -> dict[str, Any]:
    """Cancel or retry what the preview of the same action and filter counted: the tasks that match now and are
    no newer than the preview's newest, each moved as a single cancel or retry would be (one audit record apiece).
    A token acts once: the same token again answers that act's counts and moves nothing more."""
    actor = acting_as(request, body.by)
    try:
        result = await run_in_threadpool(bulk.act, store_of(request), tokens_of(request), body, actor)
    except bulk.BulkRefused as exc:
        if exc.status == 409:
            raise HTTPException(409, exc.message) from None
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "token"), "msg": exc.message,
                                       "input": None}]) from None
    return result
