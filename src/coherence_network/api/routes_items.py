"""Backlog items: one item with its phase tasks, usage, branch, commits and decision trail, and the items seen
lately. Read from the tasks' ``item`` column (item_view), as the console's item pages are."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from coherence_network.api.deps import store_of
from coherence_network.api.models import COMMON_ERRORS
from coherence_network.contract_items import ITEM_SLUG_CHARS, ItemPage, ItemView
from coherence_network.item_view import item_page, item_view
from coherence_network.request_bodies import INT32_MAX
from coherence_network.store import NotFound

router = APIRouter(prefix="/api/agent/items", tags=["items"], responses=COMMON_ERRORS)
ItemSlug = Annotated[str, Path(min_length=1, max_length=ITEM_SLUG_CHARS, pattern=r"^[A-Za-z0-9._-]+$",
                               description="The item's slug (as its phase tasks' context names it)")]


@router.get("", response_model=ItemPage)
def list_items(request: Request, limit: int = Query(50, ge=1, le=500),
               offset: int = Query(0, ge=0, le=INT32_MAX)) -> ItemPage:
    """Backlog items, the one whose latest task is newest first, each with that task's phase and status."""
    return item_page(store_of(request), limit=limit, offset=offset)


@router.get("/{item}", response_model=ItemView, responses={404: {"description": "No task belongs to the item"}})
def get_item(request: Request, item: ItemSlug) -> ItemView:
    """The item: its tasks in order (phase, round, status, verdict, evidence, agent, usage, decision), summed tokens
    and cost, its branch and commits, and the audit records of its tasks."""
    found = item_view(store_of(request), item)
    if found is None:
        raise NotFound(f"item {item} not found")
    return found
