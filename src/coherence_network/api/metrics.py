"""Prometheus metrics of one API process: event counters plus queue gauges read from the store at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from coherence_network.contract import TaskStatus
from coherence_network.store.schema import runners, tasks
from coherence_network.store.tasks import TaskStore, utcnow

RUNNER_SEEN_SECONDS = 120.0
_DURATION_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400)


class QueueCollector(Collector):
    """Gauges computed from the store on each scrape: tasks by status, oldest pending age, runners seen."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.store.count()["by_status"]
        by_status = GaugeMetricFamily("coherence_tasks", "Tasks in the store by status", labels=["status"])
        for status, n in counts.items():
            by_status.add_metric([status], n)
        yield by_status
        now = utcnow()
        with self.store.engine.connect() as conn:
            oldest: datetime | None = conn.execute(
                sa.select(sa.func.min(tasks.c.created_at)).where(tasks.c.status == TaskStatus.PENDING)
            ).scalar()
            last_seen = [r[0] for r in conn.execute(sa.select(runners.c.last_seen))]
        if oldest is not None and oldest.tzinfo is None:  # func.min bypasses the column type on SQLite
            oldest = datetime.fromisoformat(str(oldest)).replace(tzinfo=now.tzinfo)
        age = (now - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "coherence_oldest_pending_age_seconds", "Age of the oldest pending task", value=max(age, 0.0)
        )
        seen = sum(1 for t in last_seen if (now - t).total_seconds() <= RUNNER_SEEN_SECONDS)
        yield GaugeMetricFamily(
            "coherence_runners_seen", f"Runners that sent a heartbeat in the last {RUNNER_SEEN_SECONDS:.0f} s", value=seen
        )


class ApiMetrics:
    """The metric objects of one app, on a registry of its own."""

    def __init__(self, store: TaskStore) -> None:
        self.registry = CollectorRegistry()
        self.tasks_created = Counter(
            "coherence_tasks_created_total", "Tasks created", ["task_type"], registry=self.registry
        )
        self.tasks_claimed = Counter("coherence_tasks_claimed_total", "Claims handed out", registry=self.registry)
        self.tasks_finished = Counter(
            "coherence_tasks_finished_total", "Claims ended, by resulting status", ["status"], registry=self.registry
        )
        self.tasks_reclaimed = Counter(
            "coherence_tasks_reclaimed_total", "Expired leases returned to pending", registry=self.registry
        )
        self.tasks_lease_failed = Counter(
            "coherence_tasks_lease_failed_total", "Expired leases that failed the task", registry=self.registry
        )
        self.queue_wait = Histogram(
            "coherence_queue_wait_seconds", "Time from creation to claim", registry=self.registry,
            buckets=_DURATION_BUCKETS,
        )
        self.task_run = Histogram(
            "coherence_task_run_seconds", "Time from claim to finish", ["task_type"], registry=self.registry,
            buckets=_DURATION_BUCKETS,
        )
        self.registry.register(QueueCollector(store))
