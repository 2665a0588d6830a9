"""The store's figures: task metrics, the pipeline snapshot, success rates and throughput, and the counts of past
days that charts show: the counts and percentiles of a window come from the hourly rollup (store/rollup.py), a few
hundred rows however many tasks settled in it, so nothing is reused between reads and a retry shows at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus
from coherence_network.store import stats
from coherence_network.store.core import StoreCore


class StoreFigures(StoreCore):
    """Read-only figures behind /api/agent/metrics, pipeline-status, effectiveness and the console's charts."""

    def task_metrics(self, now: datetime | None = None) -> dict[str, Any]:
        """Success rates, run time and queue wait percentiles by task type over 24 h and 7 d, and throughput."""
        with self.connection() as conn:
            return stats.task_metrics(conn, now or utcnow())

    def pipeline_snapshot(self, now: datetime, recent_at_least: int,
                          limits: stats.Limits | None = None) -> dict[str, Any]:
        """Running, pending-by-type, needs_decision and recently finished tasks (stats.pipeline_snapshot); the
        pending counts walk every pending task's index entry, so they are reused as the task counts are."""
        with self.connection() as conn:
            pending = self.reused("pending", lambda: stats.pending_by_type(conn))
            return stats.pipeline_snapshot(conn, now, limits or stats.Limits(), recent_at_least, pending)

    def oldest_decision_seconds(self, now: datetime) -> float | None:
        """How long the longest-waiting decision has waited at ``now`` (None: none waits)."""
        with self.connection() as conn:
            asked = stats.first_asked(conn)
        return None if asked is None else round(max((now - asked).total_seconds(), 0.0), 3)

    def out_of_attempts(self) -> dict[str, int]:
        """Failed tasks out of attempts, by task type (stats.out_of_attempts)."""
        with self.connection() as conn:
            return stats.out_of_attempts(conn)

    def success_counts(self, since: datetime, until: datetime) -> dict[str, dict[str, Any]]:
        """{task_type | "all": {completed, failed, success_rate}} for tasks finished in [since, until]."""
        with self.connection() as conn:
            return stats.success_counts(conn, since, until)

    def completed_per_day(self, now: datetime, days: int = 7) -> list[dict[str, Any]]:
        """Tasks completed on each of the last ``days`` UTC days, oldest first."""
        with self.connection() as conn:
            return stats.completed_per_day(conn, now, days)

    def throughput(self, now: datetime, bucket: timedelta, count: int) -> list[dict[str, Any]]:
        """Settled tasks in each of the last ``count`` buckets up to ``now`` (stats.throughput)."""
        with self.connection() as conn:
            return stats.throughput(conn, now, bucket, count)

    def week_success(self, now: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Success counts per UTC day of the last 7 (``day`` as MM-DD), and over the last 7 x 24 h (the goal's
        success rate, as /api/agent/effectiveness computes it): the week is the days and the hours before them."""
        first_day = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=6)
        with self.connection() as conn:
            days = stats.throughput(conn, now, timedelta(days=1), 7)
            edge = stats.success_counts(conn, now - stats.WINDOWS[stats.WEEK], first_day)[stats.ALL_TYPES]
        daily = [stats.with_rate({"day": row.pop("start")[5:10], **row}) for row in days]
        outcomes = (TaskStatus.COMPLETED, TaskStatus.FAILED)
        week: dict[str, Any] = {status: sum(c[status] for c in [edge, *daily]) for status in outcomes}
        return daily, stats.with_rate(week)
