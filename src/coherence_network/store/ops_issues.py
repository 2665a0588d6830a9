"""Monitor issues and fatal issues in the store, and the daily throughput behind /api/agent/effectiveness.

The monitor posts its whole set of open issues on each check; the store keeps one open row per rule and resolves
rows whose rule is no longer reported, so "open" and "resolved" agree on every API replica.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus
from coherence_network.store.schema import fatal_issues, monitor_issues, tasks

_ISSUE_FIELDS = ("severity", "message", "action", "runbook", "detail", "host")


def replace_monitor_issues(engine: Engine, issues: list[dict[str, Any]], host: str) -> dict[str, int]:
    """Make ``issues`` the open set: new rules are opened, reported ones refreshed, missing ones resolved."""
    now = utcnow()
    reported = {issue["rule"]: issue for issue in issues}
    with engine.begin() as conn:
        open_rows = {
            row.rule: row.id
            for row in conn.execute(
                sa.select(monitor_issues.c.rule, monitor_issues.c.id).where(monitor_issues.c.resolved_at.is_(None))
            )
        }
        resolved = [row_id for rule, row_id in open_rows.items() if rule not in reported]
        if resolved:
            conn.execute(monitor_issues.update().where(monitor_issues.c.id.in_(resolved)).values(resolved_at=now))
        for rule, issue in reported.items():
            values = {key: issue.get(key) for key in _ISSUE_FIELDS} | {"host": host, "last_seen": now}
            if rule in open_rows:
                conn.execute(monitor_issues.update().where(monitor_issues.c.id == open_rows[rule]).values(values))
            else:
                first_seen = issue.get("first_seen") or now
                conn.execute(monitor_issues.insert().values(rule=rule, first_seen=first_seen, **values))
    return {"open": len(reported), "resolved": len(resolved)}


def monitor_issue_counts(engine: Engine, since: datetime) -> dict[str, int]:
    """Open issues, and issues resolved since ``since``."""
    with engine.connect() as conn:
        open_count = conn.execute(
            sa.select(sa.func.count()).where(monitor_issues.c.resolved_at.is_(None))
        ).scalar_one()
        resolved = conn.execute(
            sa.select(sa.func.count()).where(monitor_issues.c.resolved_at >= since)
        ).scalar_one()
    return {"open": int(open_count), "resolved": int(resolved)}


def list_monitor_issues(engine: Engine, *, resolved_limit: int = 20) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        open_rows = conn.execute(
            sa.select(monitor_issues).where(monitor_issues.c.resolved_at.is_(None)).order_by(monitor_issues.c.id)
        )
        issues = [dict(r._mapping) for r in open_rows]
        recent = conn.execute(
            sa.select(monitor_issues)
            .where(monitor_issues.c.resolved_at.is_not(None))
            .order_by(monitor_issues.c.resolved_at.desc())
            .limit(resolved_limit)
        )
        resolved = [dict(r._mapping) for r in recent]
    return {"issues": issues, "recently_resolved": resolved}


def add_fatal_issue(engine: Engine, issue: dict[str, Any], host: str) -> dict[str, Any]:
    with engine.begin() as conn:
        row = conn.execute(
            fatal_issues.insert()
            .values(
                at=issue.get("at") or utcnow(), component=issue["component"], reason=issue["reason"],
                detail=issue.get("detail") or "", recovery_tried=issue.get("recovery_tried") or "", host=host,
            )
            .returning(*fatal_issues.c)
        ).one()
    return dict(row._mapping)


def list_fatal_issues(engine: Engine) -> list[dict[str, Any]]:
    """Fatal issues nobody has cleared yet, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(fatal_issues).where(fatal_issues.c.cleared_at.is_(None)).order_by(fatal_issues.c.at)
        )
        return [dict(r._mapping) for r in rows]


def open_fatal_issue_count(engine: Engine) -> int:
    """Fatal issues nobody has cleared yet (an index read: /metrics asks on every scrape)."""
    query = sa.select(sa.func.count()).select_from(fatal_issues).where(fatal_issues.c.cleared_at.is_(None))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def clear_fatal_issues(engine: Engine, before: datetime | None = None) -> int:
    """Clear the open fatal issues (with ``before``: only those recorded at or before then)."""
    query = fatal_issues.update().where(fatal_issues.c.cleared_at.is_(None))
    if before is not None:
        query = query.where(fatal_issues.c.at <= before)
    with engine.begin() as conn:
        result = conn.execute(query.values(cleared_at=utcnow()))
    return int(result.rowcount or 0)


def completed_per_day(engine: Engine, now: datetime | None = None, days: int = 7) -> list[dict[str, Any]]:
    """Tasks completed on each of the last ``days`` UTC days (oldest first), read through the finished_at index."""
    now = now or utcnow()
    start = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = {(start + timedelta(days=n)).date().isoformat(): 0 for n in range(days)}
    with engine.connect() as conn:
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

