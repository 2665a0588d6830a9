"""Monitor issues and fatal issues: what the monitors and supervisors report, readable from any API replica.

Each monitor posts the whole set of open issues of its host on each check; the store keeps one open row per
(host, rule) and resolves that host's rows whose rule is no longer reported, so one host's monitor never resolves
another host's issues, and "open" and "resolved" agree on every API replica.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.store.audit import AuditBook
from coherence_network.store.schema import fatal_issues, monitor_issues

_ISSUE_FIELDS = ("severity", "message", "action", "runbook", "detail")
_OPEN_ON_HOST = (
    sa.select(monitor_issues.c.rule, monitor_issues.c.id)
    .where(monitor_issues.c.resolved_at.is_(None), monitor_issues.c.host == sa.bindparam("b_host"))
)
_OPEN_ISSUES = sa.select(monitor_issues).where(monitor_issues.c.resolved_at.is_(None)).order_by(monitor_issues.c.id)
_OPEN_FATAL = sa.select(fatal_issues).where(fatal_issues.c.cleared_at.is_(None)).order_by(fatal_issues.c.at)
_OPEN_FATAL_COUNT = sa.select(sa.func.count()).select_from(fatal_issues).where(fatal_issues.c.cleared_at.is_(None))


class IssueBook(AuditBook):
    """Monitor issues by (host, rule), and fatal issues until an operator clears them."""

    def replace_monitor_issues(self, issues: list[dict[str, Any]], host: str) -> dict[str, int]:
        """Make ``issues`` the open set of ``host``: new rules are opened, reported ones refreshed, that host's
        missing ones resolved. Two posts of one host at once: the one that lost the insert reads again."""
        for last_try in (False, True):
            try:
                return self._replace_monitor_issues(issues, host)
            except sa.exc.IntegrityError:
                if last_try:
                    raise
        raise AssertionError("unreachable")

    def _replace_monitor_issues(self, issues: list[dict[str, Any]], host: str) -> dict[str, int]:
        now = utcnow()
        reported = {issue["rule"]: issue for issue in issues}
        with self.transaction() as conn:
            open_rows = {row.rule: row.id for row in conn.execute(_OPEN_ON_HOST, {"b_host": host})}
            resolved = [row_id for rule, row_id in open_rows.items() if rule not in reported]
            if resolved:
                conn.execute(monitor_issues.update().where(monitor_issues.c.id.in_(resolved)).values(resolved_at=now))
            for rule, issue in reported.items():
                values = {key: issue.get(key) for key in _ISSUE_FIELDS} | {"last_seen": now}
                if rule in open_rows:
                    conn.execute(monitor_issues.update().where(monitor_issues.c.id == open_rows[rule]).values(values))
                else:
                    first_seen = issue.get("first_seen") or now
                    conn.execute(monitor_issues.insert().values(rule=rule, host=host, first_seen=first_seen,
                                                                **values))
        return {"open": len(reported), "resolved": len(resolved)}

    def monitor_issue_counts(self, since: datetime) -> dict[str, int]:
        """Open issues, and issues resolved since ``since``."""
        with self.connection() as conn:
            open_count = conn.execute(
                sa.select(sa.func.count()).where(monitor_issues.c.resolved_at.is_(None))
            ).scalar_one()
            resolved = conn.execute(
                sa.select(sa.func.count()).where(monitor_issues.c.resolved_at >= since)
            ).scalar_one()
        return {"open": int(open_count), "resolved": int(resolved)}

    def list_monitor_issues(self, *, resolved_limit: int = 20) -> dict[str, list[dict[str, Any]]]:
        """The open issues of every host, and the ``resolved_limit`` most recently resolved."""
        with self.connection() as conn:
            issues = [dict(r._mapping) for r in conn.execute(_OPEN_ISSUES)]
            resolved: list[dict[str, Any]] = []
            if resolved_limit:
                recent = conn.execute(
                    sa.select(monitor_issues)
                    .where(monitor_issues.c.resolved_at.is_not(None))
                    .order_by(monitor_issues.c.resolved_at.desc())
                    .limit(resolved_limit)
                )
                resolved = [dict(r._mapping) for r in recent]
        return {"issues": issues, "recently_resolved": resolved}

    def add_fatal_issue(self, issue: dict[str, Any], host: str) -> dict[str, Any]:
        """Record a component its supervisor could not keep running."""
        with self.transaction() as conn:
            row = conn.execute(
                fatal_issues.insert()
                .values(
                    at=issue.get("at") or utcnow(), component=issue["component"], reason=issue["reason"],
                    detail=issue.get("detail") or "", recovery_tried=issue.get("recovery_tried") or "", host=host,
                )
                .returning(*fatal_issues.c)
            ).one()
        return dict(row._mapping)

    def list_fatal_issues(self) -> list[dict[str, Any]]:
        """Fatal issues nobody has cleared yet, oldest first."""
        with self.connection() as conn:
            return [dict(r._mapping) for r in conn.execute(_OPEN_FATAL)]

    def open_fatal_issue_count(self) -> int:
        """Fatal issues nobody has cleared yet (an index read: /metrics asks on every scrape)."""
        with self.connection() as conn:
            return int(conn.execute(_OPEN_FATAL_COUNT).scalar_one())

    def clear_fatal_issues(self, before: datetime | None = None, *, actor: str | None = None) -> int:
        """Clear the open fatal issues (with ``before``: only those recorded at or before then); a clear that
        cleared any is in the audit trail when ``actor`` is given (its components and count in the detail)."""
        query = fatal_issues.update().where(fatal_issues.c.cleared_at.is_(None))
        if before is not None:
            query = query.where(fatal_issues.c.at <= before)
        with self.transaction() as conn:
            cleared = list(conn.execute(query.values(cleared_at=utcnow()).returning(fatal_issues.c.component)))
            if cleared and actor is not None:
                components = sorted({row.component for row in cleared})
                self._audit_in(conn, actor, "clear_fatal", target=",".join(components)[:200],
                               detail={"cleared": len(cleared), "before": before and before.isoformat()})
        return len(cleared)
