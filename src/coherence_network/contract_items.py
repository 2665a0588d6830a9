"""Backlog items' contract, beside contract.py: one item with its phase tasks, what they cost and left (branch,
commits, verdicts, merge) and its decision trail (``GET /api/agent/items/{item}``), and the items seen lately
(``GET /api/agent/items``). Imported by the API, the client, the CLI and the console."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from coherence_network.contract import ErrorCategory, Returned, TaskStatus, TaskType
from coherence_network.contract_steering import AuditRecord

ITEM_SLUG_CHARS = 200  # the tasks.item column


class ItemTask(Returned):
    """One phase task of the item: which phase and round, how it ended, what its agent used, what it left
    (``evidence``: branch, commit, diffstat, files, verdict, merge, push) and its decision."""

    id: int
    task_type: TaskType
    status: TaskStatus
    phase: str | None = None
    iteration: int | None = None
    verdict: str | None = None  # review only: pass or fail (from its evidence)
    evidence: dict[str, Any] | None = None
    agent: str | None = None
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    error_category: ErrorCategory | None = None
    error_summary: str | None = None
    decision_prompt: str | None = None
    decision: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ItemCommit(Returned):
    """A commit a phase made on the item's branch."""

    task_id: int
    phase: str | None = None
    commit: str
    diffstat: str | None = None
    files: list[str] = []


class ItemView(Returned):
    """``GET /api/agent/items/{item}``: the item (its ``slug``, its ``title``: the start of its backlog text), its
    tasks oldest first, their summed usage (None: none reported), the branch and commits its phases left, the last
    merge, and the audit records of its tasks (oldest first): its decision trail."""

    slug: str
    title: str | None = None
    status: TaskStatus  # its latest task's
    tasks: list[ItemTask]
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    branch: str | None = None
    commits: list[ItemCommit] = []
    merge: dict[str, Any] | None = None
    trail: list[AuditRecord] = []


class ItemSummary(Returned):
    """One item of ``GET /api/agent/items``: its latest task's phase, round and status."""

    slug: str
    title: str | None = None
    task_id: int
    phase: str | None = None
    iteration: int | None = None
    status: TaskStatus
    updated_at: datetime


class ItemPage(Returned):
    """A page of items, the one touched last first; ``total`` items in all."""

    items: list[ItemSummary]
    total: int
    offset: int
    limit: int
