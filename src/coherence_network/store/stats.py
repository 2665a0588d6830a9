"""Read-only queries behind /api/agent/metrics and /api/agent/pipeline-status, on SQLite and PostgreSQL.

Every query is bounded by an index: a time window on ``finished_at``, a status, or a LIMIT. Old history is never
read, so the cost of a status page stays flat while the store grows. Percentiles interpolate between the two
nearest ranks like PostgreSQL's ``percentile_cont``. Durations are stored by the finish (``run_seconds``,
``queue_seconds``) and covered by the window index, so no row is read for them: PostgreSQL aggregates them in one
query per window; SQLite has no percentile aggregate, so there one read of the window's index entries returns
both durations and they are ranked here (ranking them in SQL with ROW_NUMBER() took three times as long).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coherence_network.contract import SETTLED_STATUSES, TaskStatus
from coherence_network.store.schema import UTCDateTime, tasks
from coherence_network.store.statements import OUT_OF_ATTEMPTS


def _no_outcomes() -> dict[str, Any]:
    """Zero of each outcome that success rates and throughput count (completed, failed)."""
    return {str(status): 0 for status in sorted(SETTLED_STATUSES)}


WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
PERCENTILES = (0.5, 0.95)
ALL_TYPES = "all"


def _finished_between(since: datetime, until: datetime) -> sa.ColumnElement[bool]:
    """A closed window on ``finished_at``. Both bounds matter: with a one-sided range SQLite's planner expects a
    quarter of the table and prefers scanning a whole index that already has the GROUP BY order."""
    return tasks.c.finished_at.between(since, until)


def success_counts(conn: Connection, since: datetime, until: datetime) -> dict[str, dict[str, Any]]:
    """{task_type | "all": {completed, failed, success_rate}} for tasks finished in [since, until]."""
    query = (
        sa.select(tasks.c.task_type, tasks.c.status, sa.func.count())
        .where(_finished_between(since, until))
        .group_by(tasks.c.task_type, tasks.c.status)
    )
    result: dict[str, dict[str, Any]] = {}
    for task_type, status, n in conn.execute(query):
        for key in (task_type, ALL_TYPES):
            entry = result.setdefault(key, _no_outcomes())
            if status in entry:
                entry[status] += int(n)
    result.setdefault(ALL_TYPES, _no_outcomes())
    for entry in result.values():
        done = entry[TaskStatus.COMPLETED] + entry[TaskStatus.FAILED]
        entry["success_rate"] = round(entry[TaskStatus.COMPLETED] / done, 4) if done else None
    return result


def _interpolate(ranked: Sequence[float], n: int, p: float) -> float:
    position = p * (n - 1)
    low = math.floor(position)
    high = min(low + 1, n - 1)
    return ranked[low] + (ranked[high] - ranked[low]) * (position - low)


Percentiles = dict[str, dict[str, float | int]]  # {task_type | "all": {"n", "p50", "p95"}}


def duration_percentiles(
    conn: Connection, since: datetime, until: datetime, durations: dict[str, sa.Column[Any]]
) -> dict[str, Percentiles]:
    """Percentiles of each stored duration (by name) for tasks finished in [since, until], by task type and
    over all types, from one read of the window."""
    window = _finished_between(since, until)
    result: dict[str, Percentiles] = {name: {} for name in durations}
    if conn.dialect.name == "postgresql":
        aggregates = [
            aggregate
            for column in durations.values()
            for aggregate in (sa.func.count(column), *(sa.func.percentile_cont(p).within_group(column)
                                                      for p in PERCENTILES))
        ]
        query = sa.select(tasks.c.task_type, *aggregates).where(window).group_by(sa.func.rollup(tasks.c.task_type))
        width = 1 + len(PERCENTILES)
        for task_type, *values in conn.execute(query):
            for k, name in enumerate(durations):
                n, *found = values[k * width:(k + 1) * width]
                if n:  # no percentile (NULL) of an empty window
                    result[name][task_type or ALL_TYPES] = {
                        "n": int(n), **{_label(p): round(float(v), 3) for p, v in zip(PERCENTILES, found)}
                    }
        return result
    collected: dict[str, dict[str, list[float]]] = {name: {} for name in durations}
    for task_type, *found in conn.execute(sa.select(tasks.c.task_type, *durations.values()).where(window)):
        for name, duration in zip(durations, found):
            if duration is not None:
                for group in (task_type, ALL_TYPES):
                    collected[name].setdefault(group, []).append(duration)
    for name, groups in collected.items():
        for group, ranked in groups.items():
            ranked.sort()
            n = len(ranked)
            result[name][group] = {"n": n, **{_label(p): round(_interpolate(ranked, n, p), 3) for p in PERCENTILES}}
    return result


def _label(p: float) -> str:
    return f"p{round(p * 100)}"


def throughput(conn: Connection, now: datetime, bucket: timedelta, count: int) -> list[dict[str, Any]]:
    """Completed and failed tasks per bucket over the last ``count`` buckets up to ``now``, oldest first, empty
    buckets included. A bucket is one or more whole hours dividing a UTC day, or one UTC day; each is keyed by its
    start ("start": "YYYY-MM-DDTHH:00:00Z"). The store counts by hour (by day for day buckets) over the
    finished-window index, so no row is read, and the hours are folded into buckets here."""
    daily = bucket >= timedelta(days=1)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight + bucket * ((now - midnight) // bucket) - bucket * (count - 1)
    if conn.dialect.name == "sqlite":
        grain = sa.func.strftime("%Y-%m-%d" if daily else "%Y-%m-%dT%H", tasks.c.finished_at)
    else:
        grain = sa.func.to_char(sa.func.timezone("UTC", tasks.c.finished_at),
                                "YYYY-MM-DD" if daily else 'YYYY-MM-DD"T"HH24')
    query = (
        sa.select(grain, tasks.c.status, sa.func.count())
        .where(_finished_between(first, now))
        .group_by(grain, tasks.c.status)
    )
    starts = [first + bucket * i for i in range(count)]
    buckets = {start: _no_outcomes() for start in starts}
    step, pattern = (timedelta(days=1), "%Y-%m-%d") if daily else (timedelta(hours=1), "%Y-%m-%dT%H")
    slot = {(first + step * i).strftime(pattern): first + bucket * (step * i // bucket)
            for i in range(count * (bucket // step))}
    for key, status, n in conn.execute(query):
        start = slot.get(key)
        if start is not None and status in buckets[start]:
            buckets[start][status] += int(n)
    return [{"start": start.strftime("%Y-%m-%dT%H:00:00Z"), **counts} for start, counts in buckets.items()]


def hourly_throughput(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    """Completed and failed tasks per UTC hour over the last 24 hours, oldest hour first, empty hours included."""
    return [{"hour": row.pop("start"), **row} for row in throughput(conn, now, timedelta(hours=1), 24)]


def task_metrics(conn: Connection, now: datetime) -> dict[str, Any]:
    """Success rates, run time and queue wait percentiles by task type over 24 h and 7 d, and throughput."""
    windows: dict[str, Any] = {}
    for name, span in WINDOWS.items():
        since = now - span
        counts = success_counts(conn, since, now)
        durations = duration_percentiles(conn, since, now,
                                         {"run": tasks.c.run_seconds, "wait": tasks.c.queue_seconds})
        run, wait = durations["run"], durations["wait"]
        by_type = {
            key: {
                **counts.get(key, {**_no_outcomes(), "success_rate": None}),
                "run_seconds": run.get(key),
                "queue_wait_seconds": wait.get(key),
            }
            for key in sorted(set(counts) | set(run) | set(wait))
        }
        windows[name] = {"since": since, "by_type": by_type}
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


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max((now - then).total_seconds(), 0.0), 3)


def pipeline_snapshot(conn: Connection, now: datetime, limits: Limits, recent_at_least: int) -> dict[str, Any]:
    """Running (with how long each has printed nothing: ``silent_seconds``), pending-by-type, needs_decision and
    recently finished tasks, each list bounded by an index."""
    running = [
        dict(r._mapping)
        for r in conn.execute(
            sa.select(*_SUMMARY_COLUMNS, tasks.c.last_output_at)
            .where(tasks.c.status == TaskStatus.RUNNING)
            .order_by(tasks.c.started_at.asc())
            .limit(limits.running)
        )
    ]
    oldest_created = sa.func.min(tasks.c.created_at, type_=UTCDateTime)
    pending = {
        task_type: {"count": int(n), "oldest_wait_seconds": _age(now, oldest)}
        for task_type, n, oldest in conn.execute(
            sa.select(tasks.c.task_type, sa.func.count(), oldest_created)
            .where(tasks.c.status == TaskStatus.PENDING)
            .group_by(tasks.c.task_type)
        )
    }
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
    return {"running": running, "pending": pending, "needs_decision": waiting, "recent": recent,
            "success_24h": success_24h, "oldest_decision_seconds": _age(now, first_asked(conn))}


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
    """Tasks completed on each of the last ``days`` UTC days (oldest first), read through the finished_at index."""
    start = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = {(start + timedelta(days=n)).date().isoformat(): 0 for n in range(days)}
    rows = conn.execute(
        sa.select(tasks.c.finished_at).where(
            tasks.c.finished_at.between(start, now), tasks.c.status == TaskStatus.COMPLETED
        )
    )
    for (finished,) in rows:
        day = finished.date().isoformat()
        if day in counts:
            counts[day] += 1
    return [{"day": day, "completed": n} for day, n in counts.items()]
