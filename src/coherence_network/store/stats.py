"""Read-only queries behind /api/agent/metrics and /api/agent/pipeline-status, on SQLite and PostgreSQL.

Every query is bounded by an index: a status, a LIMIT, or a window of the hourly rollup (store/rollup.py), so the
cost of a status page stays flat however many tasks the store holds or a window covers. Counts, success rates,
throughput and the run time and queue wait percentiles of a window are read from the rollup: windows are whole UTC
hours (the current one and those before it), and percentiles are estimates from the rollup's duration buckets
(within a factor sqrt(2), usually a few percent).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coherence_network.contract import SETTLED_STATUSES, TaskStatus
from coherence_network.store import rollup
from coherence_network.store.schema import HOUR_OUTCOMES, UTCDateTime, tasks
from coherence_network.store.statements import OUT_OF_ATTEMPTS


def _no_outcomes() -> dict[str, Any]:
    """Zero of each settled outcome (completed, failed, cancelled)."""
    return {str(status): 0 for status in sorted(SETTLED_STATUSES)}


DAY, WEEK = "24h", "7d"
WINDOWS = {DAY: timedelta(hours=24), WEEK: timedelta(days=7)}
PERCENTILES = (0.5, 0.95)
ALL_TYPES = "all"


def with_rate(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` (outcome counts) with its success_rate: completed over completed + failed (None: neither)."""
    done = entry[TaskStatus.COMPLETED] + entry[TaskStatus.FAILED]
    entry["success_rate"] = round(entry[TaskStatus.COMPLETED] / done, 4) if done else None
    return entry


def _by_type(counts: Iterable[tuple[str, dict[str, int]]]) -> dict[str, dict[str, Any]]:
    """{task_type | "all": outcome counts} of the types that settled anything."""
    result: dict[str, dict[str, Any]] = {ALL_TYPES: _no_outcomes()}
    for task_type, found in counts:
        if any(found.get(name) for name in HOUR_OUTCOMES):
            for key in (task_type, ALL_TYPES):
                rollup.add_into(result.setdefault(key, _no_outcomes()), found.items())
    return result


def success_counts(conn: Connection, since: datetime, until: datetime) -> dict[str, dict[str, Any]]:
    """{task_type | "all": {completed, failed, cancelled, success_rate}} of the hours starting in [since, until)."""
    found = _by_type(rollup.outcomes_by_type(conn, *rollup.hours_in(since, until)).items())
    return {key: with_rate(entry) for key, entry in found.items()}


def _label(p: float) -> str:
    return f"p{round(p * 100)}"


def _percentiles(counts: Sequence[int]) -> dict[str, float | int] | None:
    """{"n", "p50", "p95"} of the durations counted per bucket (None: none)."""
    n = sum(counts)
    return {"n": n, **{_label(p): round(rollup.estimate(counts, p), 3) for p in PERCENTILES}} if n else None


def throughput(conn: Connection, now: datetime, bucket: timedelta, count: int) -> list[dict[str, Any]]:
    """Settled tasks per bucket over the last ``count`` buckets up to ``now``, oldest first, empty buckets
    included. A bucket is one or more whole hours dividing a UTC day, or whole UTC days; each is keyed by its start
    ("start": "YYYY-MM-DDTHH:00:00Z"), from the rollup's hours folded into buckets by the store."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight + bucket * ((now - midnight) // bucket) - bucket * (count - 1)
    starts = [first + bucket * i for i in range(count)]
    buckets = {start: _no_outcomes() for start in starts}
    found = rollup.outcomes_by_slot(conn, rollup.hour_of(first), rollup.hour_of(now), bucket // timedelta(hours=1))
    for slot, counts in found.items():
        rollup.add_into(buckets[starts[slot]], counts.items())
    return [{"start": start.strftime("%Y-%m-%dT%H:00:00Z"), **counts} for start, counts in buckets.items()]


def hourly_throughput(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    """Settled tasks per UTC hour over the last 24 hours, oldest hour first, empty hours included."""
    return [{"hour": row.pop("start"), **row} for row in throughput(conn, now, timedelta(hours=1), 24)]


def _figures(row: tuple[int, ...]) -> dict[str, Any]:
    """Outcome counts, success rate and duration percentiles out of a row of the rollup's sums."""
    return {**with_rate({**_no_outcomes(), **rollup.outcomes(row)}),
            "run_seconds": _percentiles(rollup.buckets(row, "run")),
            "queue_wait_seconds": _percentiles(rollup.buckets(row, "queue"))}


def task_metrics(conn: Connection, now: datetime) -> dict[str, Any]:
    """Success rates, run time and queue wait percentiles (estimates) by task type over 24 h and 7 d, and
    throughput: both windows from one read of the rollup's week."""
    firsts = {name: rollup.hours_in(now - span, now)[0] for name, span in WINDOWS.items()}
    sums = rollup.sums_by_type(conn, firsts[WEEK], rollup.hour_of(now), firsts[DAY])
    windows: dict[str, Any] = {}
    for name in WINDOWS:
        totals = {ALL_TYPES: rollup.NOTHING}
        for (task_type, recent), row in sums.items():
            if recent or name == WEEK:
                for key in (task_type, ALL_TYPES):
                    totals[key] = rollup.add_rows(totals[key], row) if key in totals else row
        by_type = {key: _figures(row) for key, row in sorted(totals.items())
                   if key == ALL_TYPES or any(rollup.outcomes(row).values())}
        windows[name] = {"since": rollup.hour_start(firsts[name]), "by_type": by_type}
    hourly = hourly_throughput(conn, now)
    completed_24h = sum(h[TaskStatus.COMPLETED] for h in hourly)
    return {
        "generated_at": now,
        "windows": windows,
        "throughput_per_hour": {"last_24h_avg": round(completed_24h / 24, 3), "hourly": hourly},
    }


# --- pipeline status ---------------------------------------------------------------------------------------
_SUMMARY_COLUMNS = (
    tasks.c.id, tasks.c.task_type, tasks.c.status, tasks.c.claimed_by, tasks.c.attempts, tasks.c.progress_pct,
    tasks.c.current_step, tasks.c.exit_code, tasks.c.context, tasks.c.created_at, tasks.c.started_at,
    tasks.c.finished_at, tasks.c.updated_at,
)


@dataclass(frozen=True)
class Limits:
    """How many rows of each list pipeline-status returns."""

    running: int = 50
    needs_decision: int = 50
    recent: int = 10


# Pending tasks by type, with the oldest one's creation: read from ix_tasks_status_type_created alone (revision 0016),
# the groups in the index's order, so no row and no sort however many tasks wait.
PENDING_BY_TYPE = (
    sa.select(tasks.c.task_type, sa.func.count(), sa.func.min(tasks.c.created_at, type_=UTCDateTime))
    .where(tasks.c.status == TaskStatus.PENDING.value)
    .group_by(tasks.c.task_type)
)


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max((now - then).total_seconds(), 0.0), 3)


PendingRows = list[tuple[str, int, datetime | None]]  # PENDING_BY_TYPE's rows: (type, count, oldest creation)


def pending_by_type(conn: Connection) -> PendingRows:
    """How many tasks of each type are pending, and the oldest one's creation (PENDING_BY_TYPE)."""
    return [(task_type, int(n), oldest) for task_type, n, oldest in conn.execute(PENDING_BY_TYPE)]


def pipeline_snapshot(conn: Connection, now: datetime, limits: Limits, recent_at_least: int,
                      pending_rows: PendingRows) -> dict[str, Any]:
    """Running (with how long each has printed nothing: ``silent_seconds``), pending-by-type (from
    ``pending_rows``), needs_decision and recently finished tasks, each list bounded by an index."""
    running = [
        dict(r._mapping)
        for r in conn.execute(
            sa.select(*_SUMMARY_COLUMNS, tasks.c.last_output_at)
            .where(tasks.c.status == TaskStatus.RUNNING)
            .order_by(tasks.c.started_at.asc())
            .limit(limits.running)
        )
    ]
    pending = {task_type: {"count": n, "oldest_wait_seconds": _age(now, oldest)}
               for task_type, n, oldest in pending_rows}
    waiting = [
        dict(r._mapping)
        for r in conn.execute(
            sa.select(*_SUMMARY_COLUMNS, tasks.c.decision_prompt)
            .where(tasks.c.status == TaskStatus.NEEDS_DECISION)
            .order_by(tasks.c.id.asc())
            .limit(limits.needs_decision)
        )
    ]
    output_chars = sa.func.length(sa.func.trim(sa.func.coalesce(tasks.c.output, ""))).label("output_chars")
    recent = [
        dict(r._mapping)
        for r in conn.execute(
            sa.select(*_SUMMARY_COLUMNS, tasks.c.run_seconds, output_chars)
            .where(tasks.c.finished_at.is_not(None))
            .order_by(tasks.c.finished_at.desc())
            .limit(max(limits.recent, recent_at_least))
        )
    ]
    success_24h = success_counts(conn, now - WINDOWS["24h"], now)[ALL_TYPES]
    for task in running:
        task["elapsed_seconds"] = _age(now, task["started_at"])
        task["silent_seconds"] = _age(now, task["last_output_at"])  # None: its runner has not said yet
    for task in waiting:
        task["waiting_seconds"] = _age(now, task["updated_at"])
    for task in recent:
        if task["run_seconds"] is not None:
            task["run_seconds"] = round(max(task["run_seconds"], 0.0), 3)
    # every waiting task is listed when fewer than the limit wait: the earliest asked is among them
    asked = (min((t["updated_at"] for t in waiting), default=None) if len(waiting) < limits.needs_decision
             else first_asked(conn))
    return {"running": running, "pending": pending, "needs_decision": waiting, "recent": recent,
            "success_24h": success_24h, "oldest_decision_seconds": _age(now, asked)}


def first_asked(conn: Connection) -> datetime | None:
    """When the longest-waiting decision was asked: a task enters needs_decision by its finish, which sets
    updated_at, and nothing else writes it while the task waits. None when no decision waits."""
    query = sa.select(sa.func.min(tasks.c.updated_at, type_=UTCDateTime)).where(
        tasks.c.status == TaskStatus.NEEDS_DECISION)
    asked: datetime | None = conn.execute(query).scalar()
    return asked


def out_of_attempts(conn: Connection) -> dict[str, int]:
    """Failed tasks whose attempts are spent (attempts >= max_attempts), by task type: nothing retries them but an
    operator. Read through the (task_type, status) index, then the failed rows only."""
    query = sa.select(tasks.c.task_type, sa.func.count()).where(OUT_OF_ATTEMPTS).group_by(tasks.c.task_type)
    return {task_type: int(n) for task_type, n in conn.execute(query)}


def completed_per_day(conn: Connection, now: datetime, days: int = 7) -> list[dict[str, Any]]:
    """Tasks completed on each of the last ``days`` UTC days (oldest first), from the rollup."""
    return [{"day": row["start"][:10], "completed": row[TaskStatus.COMPLETED]}
            for row in throughput(conn, now, timedelta(days=1), days)]
