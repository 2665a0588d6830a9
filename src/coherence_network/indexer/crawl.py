"""Breadth-first crawl: fetch package documents with bounded concurrency and write them to the graph in batches.

The queue is the store's ``index_frontier`` table: a package leaves it (state ``done``) in the same transaction
that writes its project row, edges and newly found dependencies. A run killed at any point therefore loses at most
the fetches of one unwritten batch, and the next run picks up the queue where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import httpx

from coherence_network import __version__
from coherence_network.contract import ProjectStatus
from coherence_network.indexer import npm, pypi
from coherence_network.indexer.metadata import MalformedMetadata
from coherence_network.indexer.registry import Registry
from coherence_network.store.graph import FrontierEntry, GraphStore, PackageRecord

ADAPTERS: dict[str, ModuleType] = {npm.ECOSYSTEM: npm, pypi.ECOSYSTEM: pypi}
PAGE = 500  # frontier entries read at a time
BATCH = 200  # results written per transaction
FLUSH_SECONDS = 1.0  # a smaller batch is written after this long, so progress survives a kill
LOG_SECONDS = 5.0  # between progress lines in the log
MAX_DELAY_SECONDS = 60.0  # longest wait between retries, whatever Retry-After asks
MAX_FAILURES_LISTED = 100
CONNECTIONS_PER_CLIENT = 8  # httpcore's pool scans every connection per request: many small pools beat one big one
log = logging.getLogger("coherence.indexer")


@dataclass(frozen=True)
class CrawlOptions:
    """How far and how hard to crawl."""

    target: int | None = None  # grow until the ecosystem holds this many indexed (ok) projects
    limit: int | None = None  # fetch at most this many packages in this run
    concurrency: int = 16
    refresh_days: float = 7.0
    retries: int = 4
    backoff_seconds: float = 0.5
    timeout: float = 30.0


@dataclass
class Summary:
    """What a run did; ``--json`` prints it as is."""

    ecosystem: str
    registry: str
    registry_source: str
    indexed: int = 0
    missing: int = 0
    failed: int = 0
    skipped: int = 0
    projects: int = 0  # indexed (ok) projects in the ecosystem
    queued: int = 0
    seconds: float = 0.0
    packages_per_second: float = 0.0
    target: int | None = None
    limit: int | None = None
    interrupted: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def fetched(self) -> int:
        return self.indexed + self.missing + self.failed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def retry_delay(response: httpx.Response | None, attempt: int, backoff: float) -> float:
    """Retry-After when the registry sent one (seconds or an HTTP date), else exponential backoff with jitter."""
    header = response.headers.get("retry-after", "").strip() if response is not None else ""
    if header:
        try:
            seconds: float | None = float(header)
        except ValueError:
            parsed = email.utils.parsedate_tz(header)
            seconds = email.utils.mktime_tz(parsed) - time.time() if parsed else None
        if seconds is not None:
            return min(max(seconds, 0.0), MAX_DELAY_SECONDS)
    return min(backoff * 2**attempt, MAX_DELAY_SECONDS) * random.uniform(0.5, 1.0)


class Fetcher:
    """One package document per call, retried on connection errors, 429 and 5xx; never raises.

    Requests go to the least busy of several clients, each with a small connection pool."""

    def __init__(self, clients: list[httpx.AsyncClient], adapter: ModuleType, base: str, options: CrawlOptions) -> None:
        self.busy = dict.fromkeys(clients, 0)
        self.adapter = adapter
        self.base = base
        self.options = options

    async def _get(self, url: str) -> httpx.Response:
        client = min(self.busy, key=self.busy.__getitem__)
        self.busy[client] += 1
        try:
            return await client.get(url)
        finally:
            self.busy[client] -= 1

    async def fetch(self, name: str) -> PackageRecord:
        url = self.adapter.document_url(self.base, name)
        reason = ""
        for attempt in range(self.options.retries + 1):
            response: httpx.Response | None = None
            try:
                response = await self._get(url)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                if response.status_code in (404, 410):
                    return PackageRecord(name, ProjectStatus.MISSING, error=f"HTTP {response.status_code}")
                if response.status_code == 200:
                    return self._parse(name, response)
                reason = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    return PackageRecord(name, ProjectStatus.FAILED, error=reason)
            if attempt < self.options.retries:
                await asyncio.sleep(retry_delay(response, attempt, self.options.backoff_seconds))
        return PackageRecord(name, ProjectStatus.FAILED,
                             error=f"gave up after {self.options.retries + 1} attempts: {reason}")

    def _parse(self, name: str, response: httpx.Response) -> PackageRecord:
        try:
            return self.adapter.parse(name, response.json())
        except (MalformedMetadata, ValueError, TypeError, AttributeError) as exc:
            reason = f"malformed metadata: {exc}"[:500]
            log.warning("%s %s: %s", self.adapter.ECOSYSTEM, name, reason)
            return PackageRecord(name, ProjectStatus.FAILED, error=reason)


class Crawler:
    """Breadth-first from the seeds through runtime and optional edges, stopping at --target or --limit."""

    def __init__(
        self,
        store: GraphStore,
        registry: Registry,
        options: CrawlOptions,
        on_progress: Callable[[Summary], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.eco = registry.ecosystem
        self.adapter = ADAPTERS[self.eco]
        self.options = options
        self.on_progress = on_progress
        self.summary = Summary(self.eco, registry.display, registry.source, target=options.target, limit=options.limit)
        self.stop = asyncio.Event()
        self._ok = 0  # ok projects in the store plus those fetched and not yet written
        self._started = 0
        self._inflight_new = 0  # fetches in flight that add a project when they succeed
        self._in_hand: set[str] = set()  # names read from the frontier and not yet written back as done
        self._fetched: list[tuple[PackageRecord, int]] = []
        self._skipped: list[tuple[str, int]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._last_flush = time.monotonic()
        self._writes = 0  # flushes done: a frontier read after a flush may find new entries
        self._cutoff = datetime.now(UTC)

    # --- the run -------------------------------------------------------------------------------------------
    async def run(self, seeds: Iterable[str]) -> Summary:
        started = time.monotonic()
        self._cutoff = datetime.now(UTC) - timedelta(days=self.options.refresh_days)
        await asyncio.to_thread(self.store.enqueue_seeds, self.eco, list(seeds))
        requeued = await asyncio.to_thread(self.store.requeue_stale, self.eco, self._cutoff)
        self._ok = self.summary.projects = await asyncio.to_thread(self.store.count, self.eco)
        log.info("%s: start from %s (%s); %d projects indexed, %d entries queued again for refresh; %s",
                 self.eco, self.registry.display, self.registry.source, self._ok, requeued, self._limits_text())
        count = -(-self.options.concurrency // CONNECTIONS_PER_CLIENT)
        per_client = -(-self.options.concurrency // count)
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        headers = {"Accept": "application/json", "User-Agent": f"coherence-network-indexer/{__version__}"}
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._interrupt)
        try:
            async with contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(httpx.AsyncClient(
                        timeout=self.options.timeout, limits=limits, headers=headers, follow_redirects=True))
                    for _ in range(count)
                ]
                await self._crawl(Fetcher(clients, self.adapter, self.registry.base, self.options), started)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        s = self.summary
        s.projects = await asyncio.to_thread(self.store.count, self.eco)
        s.queued = await asyncio.to_thread(self.store.queued_count, self.eco)
        s.seconds = round(time.monotonic() - started, 3)
        s.packages_per_second = round(s.fetched / s.seconds, 1) if s.seconds else 0.0
        log.info("%s: done%s: %d indexed, %d missing, %d failed, %d skipped in %.1f s (%.1f packages/s); "
                 "%d projects, %d queued", self.eco, " (interrupted)" if s.interrupted else "", s.indexed, s.missing,
                 s.failed, s.skipped, s.seconds, s.packages_per_second, s.projects, s.queued)
        return s

    def _interrupt(self) -> None:
        log.warning("%s: interrupted; finishing requests in flight and writing them", self.eco)
        self.summary.interrupted = True
        self.stop.set()

    def _limits_text(self) -> str:
        target, limit = self.options.target, self.options.limit
        return f"target {target if target is not None else 'seeds only'}, limit {limit if limit else 'none'}"

    def _may_start(self) -> bool:
        if self.stop.is_set():
            return False
        if self.options.limit is not None and self._started >= self.options.limit:
            return False
        return self.options.target is None or self._ok + self._inflight_new < self.options.target

    def _fresh(self, entry: FrontierEntry) -> bool:
        return (entry.status in (ProjectStatus.OK, ProjectStatus.MISSING) and entry.indexed_at is not None
                and entry.indexed_at >= self._cutoff)

    async def _crawl(self, fetcher: Fetcher, started: float) -> None:
        pending: deque[FrontierEntry] = deque()
        inflight: dict[asyncio.Task[PackageRecord], FrontierEntry] = {}
        empty_at_write = -1  # the flush count when the frontier last had nothing new
        last_log = started
        while True:
            while len(inflight) < self.options.concurrency and self._may_start():
                if not pending:
                    if empty_at_write == self._writes:
                        break  # nothing new since the last empty read; wait for fetches or a write
                    page = await asyncio.to_thread(
                        self.store.frontier_page, self.eco, PAGE,
                        max_depth=None if self.options.target is not None else 0, exclude=list(self._in_hand),
                    )
                    if not page:
                        empty_at_write = self._writes
                        if self._fetched or self._skipped or self._flush_task is not None:
                            await self._flush(wait=True)  # unwritten results may queue new packages
                        continue
                    pending.extend(page)
                    self._in_hand.update(entry.name for entry in page)
                entry = pending.popleft()
                if self._fresh(entry):
                    self._skipped.append((entry.name, entry.depth))
                    self.summary.skipped += 1
                    continue
                task = asyncio.create_task(fetcher.fetch(entry.name))
                inflight[task] = entry
                self._started += 1
                self._inflight_new += entry.status != ProjectStatus.OK
            if not inflight:
                if self._may_start() and (self._fetched or self._skipped or self._flush_task is not None):
                    await self._flush(wait=True)  # what is written may queue new packages
                    continue
                break
            # the timeout lets a stalled registry (long retries) still see finished results written on time
            done, _ = await asyncio.wait(inflight, timeout=FLUSH_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                self._record(inflight.pop(task), task.result())
            if len(self._fetched) + len(self._skipped) >= BATCH or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
                await self._flush(wait=False)
            self.on_progress(self.summary)
            if time.monotonic() - last_log >= LOG_SECONDS:
                last_log = time.monotonic()
                self._log_progress(last_log - started)
        self._in_hand.difference_update(entry.name for entry in pending)  # read but not started: stay queued
        await self._flush(wait=True)
        self.on_progress(self.summary)

    def _record(self, entry: FrontierEntry, record: PackageRecord) -> None:
        s = self.summary
        self._inflight_new -= entry.status != ProjectStatus.OK
        self._ok += (record.status == ProjectStatus.OK) - (entry.status == ProjectStatus.OK)
        s.projects = self._ok
        if record.status == ProjectStatus.OK:
            s.indexed += 1
        elif record.status == ProjectStatus.MISSING:
            s.missing += 1
            log.info("%s %s: missing (%s)", self.eco, record.name, record.error)
        else:
            s.failed += 1
            log.warning("%s %s: failed: %s", self.eco, record.name, record.error)
            if len(s.failures) < MAX_FAILURES_LISTED:
                s.failures.append({"name": record.name, "reason": record.error or ""})
        self._fetched.append((record, entry.depth))

    async def _flush(self, *, wait: bool) -> None:
        """Write what is buffered in the background (one write at a time); ``wait`` also waits for it."""
        if self._flush_task is not None and (wait or self._flush_task.done()):
            task, self._flush_task = self._flush_task, None
            await task
        if self._flush_task is None and (self._fetched or self._skipped):
            fetched, skipped = self._fetched, self._skipped
            self._fetched, self._skipped = [], []
            self._last_flush = time.monotonic()
            self._flush_task = asyncio.create_task(self._write(fetched, skipped))
            if wait:
                task, self._flush_task = self._flush_task, None
                await task

    async def _write(self, fetched: list[tuple[PackageRecord, int]], skipped: list[tuple[str, int]]) -> None:
        await asyncio.to_thread(self.store.save_batch, self.eco, fetched, skipped)
        self._in_hand.difference_update(record.name for record, _ in fetched)
        self._in_hand.difference_update(name for name, _ in skipped)
        self._writes += 1

    def _log_progress(self, elapsed: float) -> None:
        s = self.summary
        log.info("%s: progress: %d indexed, %d missing, %d failed, %d skipped, %d projects, %.1f packages/s",
                 self.eco, s.indexed, s.missing, s.failed, s.skipped, self._ok, s.fetched / max(elapsed, 1e-9))
