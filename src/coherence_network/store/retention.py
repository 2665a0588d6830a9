"""Retention in the store: finished tasks, resolved monitor issues, forgotten runners and old audit records, deleted in
short batches, and the rollup's hours older than any window reads (rollup.ROLLUP_KEEP).

Every delete is conditional on the row still qualifying (a failed task retried meanwhile is pending again and
stays), so two API replicas running a pass at once only share the work. The newest row of ``tasks``,
``monitor_issues`` and ``audit`` always stays: SQLite gives a table without AUTOINCREMENT the next id after the
largest one in it, so deleting the newest row would hand its id out again (a task id names its log file and its
idempotent retries, an audit id is the cursor of the trail's pages; neither may be reused).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.contract import SETTLED_STATUSES
from coherence_network.settings import Settings
from coherence_network.store.gateway import TaskStore
from coherence_network.store.rollup import ROLLUP_KEEP, fold_shards_in, prune_in
from coherence_network.store.schema import audit, monitor_issues, tasks

log = logging.getLogger(__name__)

_SETTLED = sorted(status.value for status in SETTLED_STATUSES)


@dataclass
class StorePruneReport:
    """Rows a pass deleted (or, dry, would delete)."""

    tasks: int = 0
    monitor_issues: int = 0
    runners: int = 0
    audit: int = 0

    @property
    def total(self) -> int:
        return self.tasks + self.monitor_issues + self.runners + self.audit


def _cutoff(now: datetime, days: float) -> datetime | None:
    """The moment before which rows go; None when ``days`` is 0 (kept forever)."""
    return now - timedelta(days=days) if days > 0 else None


def _below_newest(id_column: sa.Column[int]) -> sa.ColumnElement[bool]:
    """``id < max(id)``: the newest row stays, so SQLite never reuses its id."""
    return id_column < sa.select(sa.func.max(id_column)).scalar_subquery()


def _delete_in_batches(store: TaskStore, table: sa.Table, condition: sa.ColumnElement[bool], batch: int,
                       dry_run: bool) -> int:
    """Delete the rows matching ``condition``, ``batch`` ids per transaction; dry, count them instead."""
    id_column = table.c.id
    condition = sa.and_(condition, _below_newest(id_column))
    if dry_run:
        with store.connection() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(condition)).scalar_one())
    deleted = 0
    while True:
        with store.connection() as conn:
            ids = list(conn.execute(sa.select(id_column).where(condition).order_by(id_column).limit(batch)).scalars())
        if not ids:
            return deleted
        with store.transaction() as conn:  # the condition again: a row may have changed since it was read
            gone = conn.execute(table.delete().where(id_column.in_(ids), condition)).rowcount
            if gone and table is tasks:
                store.tasks_changed(conn)  # the task counts are stale once this commits
            deleted += gone
        if len(ids) < batch:
            return deleted


def prune_store(store: TaskStore, settings: Settings, *, now: datetime | None = None, dry_run: bool = False,
                actor: str | None = None) -> StorePruneReport:
    """One retention pass over the store, by the COHERENCE_RETAIN_* settings and COHERENCE_RUNNER_FORGET_SECONDS.
    A pass an operator asked for (``actor``) that deleted anything is in the audit trail, with what it deleted (in a
    transaction of its own: the pass is many short ones); the API's automatic passes are not."""
    now = now or utcnow()
    report = StorePruneReport()
    batch = settings.coherence_prune_batch
    task_cutoff = _cutoff(now, settings.coherence_retain_tasks_days)
    if task_cutoff is not None:
        finished = sa.and_(tasks.c.status.in_(_SETTLED), tasks.c.finished_at < task_cutoff)
        report.tasks = _delete_in_batches(store, tasks, finished, batch, dry_run)
    issue_cutoff = _cutoff(now, settings.coherence_retain_resolutions_days)
    if issue_cutoff is not None:
        resolved = monitor_issues.c.resolved_at < issue_cutoff
        report.monitor_issues = _delete_in_batches(store, monitor_issues, resolved, batch, dry_run)
    forget_before = now - timedelta(seconds=settings.coherence_runner_forget_seconds)
    report.runners = store.prune_runners(forget_before, dry_run=dry_run)
    if not dry_run:  # derived figures, not records: pruned by what the longest window reads, not reported
        with store.transaction() as conn:
            prune_in(conn, now - ROLLUP_KEEP)
            # the hours before the last: a finish that began in the last hour may still count in it
            fold_shards_in(conn, store.dialect == "postgresql", now - timedelta(hours=1))
    audit_days = settings.coherence_retain_audit_days
    assert audit_days is not None  # Settings._derive
    audit_cutoff = _cutoff(now, audit_days)
    if audit_cutoff is not None:
        report.audit = _delete_in_batches(store, audit, audit.c.at < audit_cutoff, batch, dry_run)
    if report.total and not dry_run:
        log.info("retention: deleted %d finished tasks, %d resolved monitor issues, %d runner rows, %d audit records",
                 report.tasks, report.monitor_issues, report.runners, report.audit)
        if actor is not None:
            store.audit_note(actor, "prune", detail=asdict(report))
    return report


async def retention_loop(store: TaskStore, settings: Settings) -> None:
    """The API's automatic pass: once at start, then every COHERENCE_PRUNE_INTERVAL_SECONDS. A failed pass (store
    unavailable) is logged in one line and tried again at the next interval; the lease reaper reports outages."""
    while True:
        try:
            await asyncio.to_thread(prune_store, store, settings)
        except Exception as exc:  # the loop must outlive a store outage
            log.warning("retention pass failed: %s: %s", type(exc).__name__, str(exc).strip()[:300])
        await asyncio.sleep(settings.coherence_prune_interval_seconds)
