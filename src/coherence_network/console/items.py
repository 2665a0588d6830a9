"""The backlog items' pages: the items touched lately ("/items") and one item ("/items/{item}"): its phases with
their tasks, verdicts, usage, branch, commits and decision trail. Built by item_view, as the API's item endpoints
are."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from coherence_network.api.deps import store_of
from coherence_network.console.pages import PAGE_SIZE, error_page, page_links, render, visit_of
from coherence_network.contract_items import ITEM_SLUG_CHARS
from coherence_network.item_view import item_page, item_view

router = APIRouter(include_in_schema=False)
_SLUG = re.compile(r"[A-Za-z0-9._-]+")


@router.get("/items")
def items_page(request: Request, offset: int = 0) -> HTMLResponse:
    visit = visit_of(request)
    offset = min(max(offset, 0), 2**31 - 1)
    page = item_page(store_of(request), limit=PAGE_SIZE, offset=offset)
    return render(request, "items.html", visit, page=page, pages=page_links("/items", {}, offset, page.total))


@router.get("/items/{item}")
def item_detail(request: Request, item: str) -> HTMLResponse:
    visit = visit_of(request)
    if len(item) > ITEM_SLUG_CHARS or not _SLUG.fullmatch(item):
        return error_page(request, 400, "Not an item", f"An item's slug is at most {ITEM_SLUG_CHARS} letters, digits, "
                          "dots, dashes and underscores.", visit, back=("/items", "Items"))
    found = item_view(store_of(request), item)
    if found is None:
        return error_page(request, 404, "Item not found", f"No task belongs to the item {item}.", visit,
                          back=("/items", "Items"))
    phases: dict[str, list[object]] = {}
    for task in found.tasks:
        phases.setdefault(task.phase or task.task_type.value, []).append(task)
    return render(request, "item.html", visit, item=found, phases=phases)
