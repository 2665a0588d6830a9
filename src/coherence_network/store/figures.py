"""The store's figures: task metrics, the pipeline snapshot, success rates and throughput, and the counts of past
days that charts reuse.

A week or a month of finished tasks costs more to count than the rest of a page, and the days before today change
only when a task is retried, so their counts are reused for PAST_DAYS_REUSE_SECONDS (``PastCounts``, one cache for
every chart); today's are counted on each read (a task finishing now always lands today).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus
from coherence_network.store import stats
from coherence_network.store.core import StoreCore

T = TypeVar("T")
PAST_DAYS_REUSE_SECONDS = 600.0  # how long the counts of days before today are reused (a retry may change them)


class PastCounts:
    """Counts of time before today, each kept for ``reuse`` seconds under a key that names what and when it
    counted; keys of an earlier day are dropped when a new day's are stored."""

    def __init__(self, reuse_seconds: float) -> None:
        self.reuse = reuse_seconds
        self._kept: dict[Hashable, tuple[float, datetime, Any]] = {}  # key: (counted at, its day, counts)

    def get(self, key: Hashable, today: datetime, count: Callable[[], T]) -> T:
        """The counts under ``key`` counted today within ``reuse`` seconds, else ``count()`` (kept)."""
        clock = time.monotonic()
        kept = self._kept.get(key)
        if kept is None or kept[1] != today or clock - kept[0] > self.reuse:
            self._kept = {k: v for k, v in self._kept.items() if v[1] == today}
            kept = self._kept[key] = (clock, today, count())
        return kept[2]


def _midnight(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


class StoreFigures(StoreCore):
    """Read-only figures behind /api/agent/metrics, pipeline-status, effectiveness and the console's charts."""

    _past_counts: PastCounts | None = None

    @property
    def _past(self) -> PastCounts:
        if self._past_counts is None:
            self._past_counts = PastCounts(PAST_DAYS_REUSE_SECONDS)
        return self._past_counts

    def task_metrics(self, now: datetime | None = None) -> dict[str, Any]:
        """Success rates, run time and queue wait percentiles by task type over 24 h and 7 d, and throughput."""
        with self.connection() as conn:
            return stats.task_metrics(conn, now or utcnow())

    def pipeline_snapshot(self, now: datetime, limits: stats.Limits, recent_at_least: int) -> dict[str, Any]:
        """Running, pending-by-type, needs_decision and recently finished tasks (stats.pipeline_snapshot)."""
        with self.connection() as conn:
            return stats.pipeline_snapshot(conn, now, limits, recent_at_least)

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
        """Completed and failed tasks in each of the last ``count`` buckets up to ``now`` (stats.throughput), the
        buckets before today reused (PastCounts)."""
        today = _midnight(now)
        today_count = min((now - today) // bucket + 1, count)
        with self.connection() as conn:
            before_today = today - timedelta(microseconds=1)
            past = self._past.get(("throughput", bucket, count - today_count), today, lambda: (
                stats.throughput(conn, before_today, bucket, count - today_count) if count > today_count else []))
            return past + stats.throughput(conn, now, bucket, today_count)

    def week_success(self, now: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Success counts per UTC day of the last 7 (``day`` as MM-DD), and over the last 7 x 24 h (the goal's
        success rate, as /api/agent/effectiveness computes it); the six full days before today reused."""
        today = _midnight(now)
        starts = [today - timedelta(days=n) for n in range(6, 0, -1)]
        with self.connection() as conn:

            def day(start: datetime) -> dict[str, Any]:
                return stats.success_counts(conn, start, start + timedelta(days=1))[stats.ALL_TYPES]

            counted = [self._past.get(("day", start), today, partial(day, start)) for start in starts]
            counted.append(stats.success_counts(conn, today, now)[stats.ALL_TYPES])
            edge = stats.success_counts(conn, now - stats.WINDOWS["7d"], starts[0])[stats.ALL_TYPES]
        daily = [{"day": start.strftime("%m-%d"), **counts} for start, counts in zip([*starts, today], counted)]
        outcomes = (TaskStatus.COMPLETED, TaskStatus.FAILED)
        week: dict[str, Any] = {status: sum(c[status] for c in [edge, *counted]) for status in outcomes}
        finished = week[TaskStatus.COMPLETED] + week[TaskStatus.FAILED]
        week["success_rate"] = round(week[TaskStatus.COMPLETED] / finished, 4) if finished else None
        return daily, week
