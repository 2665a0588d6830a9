"""A backlog item as its views show it, built from its phase tasks in the store: the API's item endpoints and the
console's item pages both call these, so they cannot disagree. Branch, commits, verdicts and merges come from the
evidence each phase task recorded at its finish (docs: the evidence keys)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coherence_network.contract_items import ItemCommit, ItemPage, ItemSummary, ItemTask, ItemView
from coherence_network.store import TaskStore


def _context(task: dict[str, Any]) -> dict[str, Any]:
    context = task.get("context")
    return context if isinstance(context, dict) else {}


def _iteration(task: dict[str, Any]) -> int | None:
    value = _context(task).get("iteration")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def item_task(task: dict[str, Any]) -> ItemTask:
    evidence = task.get("evidence") if isinstance(task.get("evidence"), dict) else None
    return ItemTask.model_validate({**task, "phase": _text(_context(task).get("phase")),
                                    "iteration": _iteration(task), "evidence": evidence,
                                    "verdict": _text((evidence or {}).get("verdict"))})


def _total(values: Iterable[int | float | None]) -> Any:
    """The sum of what was reported; None when nothing was."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _commit(task: ItemTask) -> ItemCommit | None:
    evidence = task.evidence or {}
    sha = _text(evidence.get("commit"))
    if sha is None:
        return None
    files = evidence.get("files")
    return ItemCommit(task_id=task.id, phase=task.phase, commit=sha, diffstat=_text(evidence.get("diffstat")),
                      files=[f for f in files if isinstance(f, str)] if isinstance(files, list) else [])


def item_view(store: TaskStore, slug: str) -> ItemView | None:
    """The item named ``slug`` (None: no task names it)."""
    rows = store.item_tasks(slug)
    if not rows:
        return None
    tasks = [item_task(row) for row in rows]
    title = next((t for row in reversed(rows) if (t := _text(_context(row).get("title")))), None)
    branches = [b for t in tasks if (b := _text((t.evidence or {}).get("branch")))]
    merges = [m for t in tasks if isinstance(m := (t.evidence or {}).get("merge"), dict)]
    return ItemView(
        slug=slug, title=title, status=tasks[-1].status, tasks=tasks,
        tokens_in=_total(t.tokens_in for t in tasks), tokens_out=_total(t.tokens_out for t in tasks),
        cost_usd=_total(t.cost_usd for t in tasks),
        branch=branches[-1] if branches else None,
        commits=[c for t in tasks if (c := _commit(t)) is not None],
        merge=merges[-1] if merges else None,
        trail=store.item_audit([t.id for t in tasks]),
    )


def item_page(store: TaskStore, *, limit: int, offset: int = 0) -> ItemPage:
    """The items touched last first, by their latest task."""
    found, total = store.recent_items(limit=limit, offset=offset)
    items = [ItemSummary(slug=f["item"], title=_text(_context(f["task"]).get("title")), task_id=f["task"]["id"],
                         phase=_text(_context(f["task"]).get("phase")), iteration=_iteration(f["task"]),
                         status=f["task"]["status"], updated_at=f["task"]["updated_at"]) for f in found]
    return ItemPage(items=items, total=total, offset=offset, limit=limit)
