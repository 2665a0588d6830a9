"""The throughput chart's ranges: how many buckets of what size each span shows and how its bars are labelled (the
counts themselves come from the store's ``throughput``, read from the hourly rollup)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta


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

