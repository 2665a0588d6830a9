"""Cancel or retry every task the list's filter matches, from the task list: a first form previews (how many, the
newest few) and shows a confirmation page holding the preview's token; only its second form acts, as
``console:<name>`` with the reason typed there (api/bulk.py: the same two steps as the JSON API)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from coherence_network.api import bulk
from coherence_network.api.deps import store_of
from coherence_network.api.routes_bulk import tokens_of
from coherence_network.console.forms import posted_form, validated
from coherence_network.console.pages import error_page, render
from coherence_network.request_bodies import BulkActRequest, BulkPreviewRequest

router = APIRouter(include_in_schema=False)
_FILTER_FIELDS = {"status": "status", "task_type": "type", "q": "text"}  # the list's names -> the filter's


def _request_values(fields: dict[str, str]) -> dict[str, Any]:
    """The bulk request's values from a posted form holding the list's filter (empty fields are not given)."""
    given = {name: fields[field].strip() for field, name in _FILTER_FIELDS.items() if fields.get(field, "").strip()}
    return {"action": fields.get("action", ""), "filter": given}


def _list_link(fields: dict[str, str]) -> tuple[str, str]:
    query = urlencode({f: fields[f] for f in _FILTER_FIELDS if fields.get(f)})
    return (f"/tasks?{query}" if query else "/tasks", "Back to the task list")


@router.post("/tasks/bulk/preview")
async def bulk_preview(request: Request) -> HTMLResponse:
    """The confirmation page: what the action would take now, and the form that acts on it."""
    visit, fields = await posted_form(request)
    body = validated(BulkPreviewRequest, _request_values(fields))
    if isinstance(body, list):
        return error_page(request, 422, "Nothing was previewed", body, visit, _list_link(fields))
    found = await run_in_threadpool(bulk.preview, store_of(request), tokens_of(request), body)
    return render(request, "bulk.html", visit, preview=found, fields={f: fields.get(f, "") for f in _FILTER_FIELDS},
                  terms=bulk.filter_terms(body.filter), back=_list_link(fields), result=None)


@router.post("/tasks/bulk/act")
async def bulk_act(request: Request) -> HTMLResponse:
    """Act with the confirmation page's token; the outcome as a page (submitting it again acts on nothing more)."""
    visit, fields = await posted_form(request)
    who = f"console:{visit.session.identity}"
    values = {**_request_values(fields), "token": fields.get("token", ""), "reason": fields.get("reason", "").strip(),
              "by": who}
    body = validated(BulkActRequest, values)
    back = _list_link(fields)
    if isinstance(body, list):
        return error_page(request, 422, "Nothing was done", body, visit, back)
    try:
        result = await run_in_threadpool(bulk.act, store_of(request), tokens_of(request), body, who)
    except bulk.BulkRefused as exc:
        return error_page(request, exc.status, "Nothing was done", exc.message, visit, back)
    return render(request, "bulk.html", visit, preview=None, result=result, terms=bulk.filter_terms(body.filter),
                  back=back)
