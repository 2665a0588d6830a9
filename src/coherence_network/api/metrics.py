"""Prometheus metrics of one API process: event counters plus queue gauges read from the store at scrape time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from coherence_network import grading, health
from coherence_network.api.cost_metrics import cost_families
from coherence_network.api.readiness import readiness_checks
from coherence_network.clock import utcnow
from coherence_network.contract import PAUSE_SCOPES, TaskType
from coherence_network.contract_steering import BREAKER
from coherence_network.settings import Settings
from coherence_network.store import TaskStore

log = logging.getLogger("coherence.api")

_DURATION_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400)


class QueueCollector(Collector):
    """Gauges computed from the store on each scrape: tasks by status, the oldest pending task's age by type, the
    longest silence of a running task by type, the oldest waiting decision's age, failed tasks out of attempts by
    type, live runners, the health rules (coherence_network.health) that are open (the same evaluation
    pipeline-status shows), the fatal issues not yet cleared, and the pauses in force."""

    def __init__(self, owner: ApiMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        settings = self.owner.settings
        snapshot = self.owner.health_snapshot()
        by_status = GaugeMetricFamily("coherence_tasks", "Tasks in the store by status", labels=["status"])
        for status, n in snapshot.by_status.items():
            by_status.add_metric([status], n)
        yield by_status
        oldest = GaugeMetricFamily("coherence_oldest_pending_age_seconds", "Age of the oldest pending task of the "
                                   "type (0: none pending); max() over types is the whole queue's", labels=["type"])
        for kind in TaskType:
            pending = snapshot.pending.get(kind.value) or {}
            oldest.add_metric([kind.value], max(pending.get("oldest_wait_seconds") or 0.0, 0.0))
        yield oldest
        yield GaugeMetricFamily(
            "coherence_oldest_decision_age_seconds", "How long the longest-waiting decision (a task in "
            "needs_decision) has waited (0: none waits)", value=snapshot.oldest_decision_seconds or 0.0,
        )
        yield silence_gauge(snapshot)
        spent = self.owner.store.out_of_attempts()
        out = GaugeMetricFamily("coherence_tasks_out_of_attempts", "Failed tasks whose attempts are spent "
                                "(attempts >= max_attempts): only an operator's retry runs them again", labels=["type"])
        for kind in TaskType:
            out.add_metric([kind.value], spent.get(kind.value, 0))
        yield out
        yield GaugeMetricFamily(
            "coherence_runners_seen", "Runners alive: a heartbeat within two of their intervals (+1 s), not stopped",
            value=health.live_runners(snapshot),
        )
        states = GaugeMetricFamily("coherence_runners", "Runners in the registry by state: alive, stopped (said so "
                                   "on their way out), dead (silent past their limit)", labels=["state"])
        for state in (grading.ALIVE, grading.STOPPED, grading.DEAD):
            states.add_metric([state], sum(1 for r in snapshot.runners if r["state"] == state))
        yield states
        open_rules = {flag["rule"]: flag["severity"] for flag in health.evaluate(snapshot, settings)}
        issues = GaugeMetricFamily("coherence_health_issues", "1 while a health rule is open (the attention flags "
                                   "of pipeline-status), else 0", labels=["rule"])
        for rule in health.RULES:
            issues.add_metric([rule.name], 1 if rule.name in open_rules else 0)
        yield issues
        graded = GaugeMetricFamily("coherence_health_flags", "Open health flags by severity (critical and high need "
                                   "attention, medium is a warning, low information)", labels=["severity"])
        for severity in grading.SEVERITIES:
            graded.add_metric([severity], sum(1 for s in open_rules.values() if s == severity))
        yield graded
        yield GaugeMetricFamily(
            "coherence_fatal_issues", "Fatal issues not yet cleared (a component the supervisor could not keep "
            "running; coherence fatal)", value=self.owner.store.open_fatal_issue_count(),
        )
        paused = {p["scope"] for p in snapshot.pauses}
        pauses = GaugeMetricFamily("coherence_paused", "1 while an operator's pause holds the task type (type \"all\": "
                                   "the whole pipeline; coherence pause), else 0", labels=["type"])
        for scope in PAUSE_SCOPES:
            pauses.add_metric([scope], 1 if scope in paused else 0)
        yield pauses
        tripped = {p["scope"] for p in snapshot.pauses if p["by"] == BREAKER}
        breaker = GaugeMetricFamily("coherence_breaker_open", "1 while the circuit breaker holds the task type paused "
                                    "(its runs failed its breaker_failures times in a row; an operator resumes it), "
                                    "else 0", labels=["type"])
        for kind in TaskType:
            breaker.add_metric([kind.value], 1 if kind.value in tripped else 0)
        yield breaker
        yield from cost_families(self.owner.store, snapshot.spend_today)


def silence_gauge(snapshot: health.HealthSnapshot) -> GaugeMetricFamily:
    """The longest silence (no line of output, as runners' heartbeats say) among running tasks of each type: the
    stalled_task rule's measure, without task ids."""
    longest = {kind.value: 0.0 for kind in TaskType}
    for task in snapshot.running:
        longest[task["task_type"]] = max(longest.get(task["task_type"], 0.0), task.get("silent_seconds") or 0.0)
    gauge = GaugeMetricFamily("coherence_task_silence_seconds", "Longest time a running task of the type has printed "
                              "nothing (0: none running, or none has said yet)", labels=["task_type"])
    for kind, seconds in longest.items():
        gauge.add_metric([kind], seconds)
    return gauge


class ApiMetrics:
    """The metric objects of one app, on a registry of its own."""

    def __init__(self, store: TaskStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.registry = CollectorRegistry()
        self.tasks_created = Counter(
            "coherence_tasks_created_total", "Tasks created", ["task_type"], registry=self.registry
        )
        self.tasks_claimed = Counter("coherence_tasks_claimed_total", "Claims handed out", registry=self.registry)
        self.tasks_finished = Counter(
            "coherence_tasks_finished_total", "Claims ended, by the status the run ended with (a failure retried "
            "automatically: failed)", ["status"], registry=self.registry
        )
        self.tasks_reclaimed = Counter(
            "coherence_tasks_reclaimed_total", "Expired leases returned to pending", registry=self.registry
        )
        self.tasks_lease_failed = Counter(
            "coherence_tasks_lease_failed_total", "Expired leases that failed the task", registry=self.registry
        )
        self.queue_wait = Histogram(
            "coherence_queue_wait_seconds", "Time from creation to claim, counted as tasks are claimed",
            ["task_type"], registry=self.registry, buckets=_DURATION_BUCKETS,
        )
        self.task_run = Histogram(
            "coherence_task_run_seconds", "Time from claim to finish", ["task_type"], registry=self.registry,
            buckets=_DURATION_BUCKETS,
        )
        self.runners_pruned = Counter(
            "coherence_runners_pruned_total", "Runner registry rows forgotten after COHERENCE_RUNNER_FORGET_SECONDS "
            "unseen", registry=self.registry,
        )
        self.store_calls = Counter(
            "coherence_store_calls_total", "The runners' calls to a SQLite store (create, claim, heartbeat, finish), "
            "by where they ran: event_loop (no wait), thread (another writer held the write lock)", ["ran_on"],
            registry=self.registry,
        )
        self.registry.register(QueueCollector(self))

    def health_snapshot(self) -> health.HealthSnapshot:
        """One health snapshot with this replica's readiness checks (the rule store_not_ready); every view of
        health starts here. A read: it writes nothing (``forget_runners`` does, on the API's own schedule)."""
        return health.gather(self.store, self.settings, utcnow(),
                             ready=readiness_checks(self.settings, self.store))

    def forget_runners(self) -> int:
        """Delete the runner rows past COHERENCE_RUNNER_FORGET_SECONDS (stopped ones: ..._STOPPED_SECONDS), counted
        in coherence_runners_pruned_total; views stop showing them at once (health.forgotten)."""
        now = utcnow()
        pruned = self.store.prune_runners(
            now - timedelta(seconds=self.settings.coherence_runner_forget_seconds),
            now - timedelta(seconds=self.settings.coherence_runner_forget_stopped_seconds))
        self.runners_pruned.inc(pruned)
        return pruned


async def forget_runners_loop(metrics: ApiMetrics, interval: float) -> None:
    """The API's registry pass, every COHERENCE_REAP_INTERVAL: the only writer of runner deletions outside retention,
    so no read (pipeline-status, /metrics, the console) writes. A failed pass is tried again at the next one (the
    lease reaper reports store outages)."""
    while True:
        try:
            await asyncio.to_thread(metrics.forget_runners)
        except Exception as exc:  # the loop must outlive a store outage
            log.debug("registry pass failed: %s", exc)
        await asyncio.sleep(interval)
