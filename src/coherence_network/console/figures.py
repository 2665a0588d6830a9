"""The overview's costlier figures, counted in the store and partly reused: the throughput chart's buckets over its
ranges, and the success counts of the last seven days."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from coherence_network.contract import TaskStatus
from coherence_network.store.stats import ALL_TYPES, WINDOWS, success_counts, throughput

PAST_DAYS_REUSE_SECONDS = 600.0  # how long a full past day's success counts are reused (a retry may change them)


@dataclass(frozen=True)
class ChartRange:
    """A span of the throughput chart: its buckets, how it is named and how its bars are labelled."""

    name: str  # what the chart's title says
    per: str  # the bucket, in words
    bucket: timedelta
    count: int
    label_every: int
    label: Callable[[str], str]


# Bucket sizes keep every span at 24 to 30 bars, so a bar stays wide enough to see and to point at.
CHART_RANGES = {
    "24h": ChartRange("last 24 h", "hour", timedelta(hours=1), 24, 3, lambda start: start[11:13]),
    "7d": ChartRange("last 7 days", "6 hours", timedelta(hours=6), 28, 4, lambda start: start[5:10]),
    "30d": ChartRange("last 30 days", "day", timedelta(days=1), 30, 5, lambda start: start[5:10]),
}


class ThroughputFigures:
    """The throughput chart's buckets. A month of finished tasks costs more to count than the rest of the overview,
    so the buckets before today are counted once per PAST_DAYS_REUSE_SECONDS for each range; today's are counted on
    every render (a task finishing now always lands today)."""

    def __init__(self, reuse_seconds: float) -> None:
        self.reuse = reuse_seconds
        self._past: dict[str, tuple[float, datetime, list[dict[str, Any]]]] = {}  # range: (counted, today, buckets)

    def read(self, engine: Engine, now: datetime, span: ChartRange) -> list[dict[str, Any]]:
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        today_count = min((now - today) // span.bucket + 1, span.count)
        clock = time.monotonic()
        with engine.connect() as conn:
            kept = self._past.get(span.name)
            if (kept is None or kept[1] != today or len(kept[2]) != span.count - today_count
                    or clock - kept[0] > self.reuse):
                before_today = today - timedelta(microseconds=1)
                past = (throughput(engine, conn, before_today, span.bucket, span.count - today_count)
                        if span.count > today_count else [])
                kept = self._past[span.name] = (clock, today, past)
            return kept[2] + throughput(engine, conn, now, span.bucket, today_count)


class WeekFigures:
    """Success counts per UTC day of the last 7, and over the last 7 x 24 h (the goal's success rate, as
    /api/agent/effectiveness computes it). A week of finished tasks costs more to count than the rest of the
    overview, so the six full days before today are counted once per PAST_DAYS_REUSE_SECONDS; today, and the slice of
    the eighth day that the 7 x 24 h window still covers, are counted on every render."""

    def __init__(self, reuse_seconds: float) -> None:
        self.reuse = reuse_seconds
        self._days: dict[datetime, tuple[float, dict[str, Any]]] = {}

    def read(self, engine: Engine, now: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        starts = [today - timedelta(days=n) for n in range(6, 0, -1)]
        clock = time.monotonic()
        with engine.connect() as conn:
            for start in starts:
                if start not in self._days or clock - self._days[start][0] > self.reuse:
                    self._days[start] = (clock, success_counts(conn, start, start + timedelta(days=1))[ALL_TYPES])
            counted = [self._days[start][1] for start in starts]
            counted.append(success_counts(conn, today, now)[ALL_TYPES])
            edge = success_counts(conn, now - WINDOWS["7d"], starts[0])[ALL_TYPES]
        self._days = {start: self._days[start] for start in starts}  # older days are out of the window
        daily = [{"day": start.strftime("%m-%d"), **counts} for start, counts in zip([*starts, today], counted)]
        outcomes = (TaskStatus.COMPLETED, TaskStatus.FAILED)
        week: dict[str, Any] = {status: sum(c[status] for c in [edge, *counted]) for status in outcomes}
        finished = week[TaskStatus.COMPLETED] + week[TaskStatus.FAILED]
        week["success_rate"] = round(week[TaskStatus.COMPLETED] / finished, 4) if finished else None
        return daily, week

