"""Retention of this host's files under var/: task logs and prompt files of finished tasks, old monitor resolutions
(the store's rows: store/retention.py).

Each host's files are pruned by the process that owns them (the runner: task logs and prompts, by
COHERENCE_RETAIN_TASKS_DAYS; the monitor: its resolutions), and by ``coherence prune`` (the same settings, now).
``coherence cleanup --days N`` removes task logs and prompt files by age alone, whatever the settings say, and
leaves the store alone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from coherence_network.client import ApiClient, ApiNotFound
from coherence_network.contract import SETTLED_STATUSES
from coherence_network.logfiles import REGISTRY, RUN_FILES, write_text_atomic
from coherence_network.settings import Settings

TASK_FILE = re.compile(r"^(?:task_(\d+)\.log|prompt_(\d+)\.md)$")

log = logging.getLogger(__name__)


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    kept_unfinished: list[str] = field(default_factory=list)
    bytes_freed: int = 0


def task_file_folders(settings: Settings) -> list[Path]:
    """Where files named after a task live: its log (var/logs) and its prompt (var/run/prompts)."""
    return [settings.logs_dir, RUN_FILES["prompts/"].path(settings)]


def old_task_files(folders: Iterable[Path], days: float, now: float | None = None) -> list[tuple[int, Path]]:
    """Task logs and prompt files whose last write is older than ``days``, as (task id, path), oldest first."""
    cutoff = (now or time.time()) - days * 86400
    found = []
    for folder in folders:
        for path in folder.glob("*_*.*"):
            match = TASK_FILE.match(path.name)
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:  # removed meanwhile by a concurrent pass
                continue
            if match and mtime < cutoff:
                found.append((mtime, int(match.group(1) or match.group(2)), path))
    return [(task_id, path) for _, task_id, path in sorted(found)]


def clean_task_files(folders: Iterable[Path], days: float, client: ApiClient, *,
                     dry_run: bool = False) -> CleanupReport:
    """Remove old logs and prompt files of finished tasks. The API says which tasks are finished; a file whose task
    is unknown to the store (pruned by retention, deleted database, another installation) counts as finished. API
    errors propagate: without the API nothing can be proven finished, so nothing is removed."""
    report = CleanupReport()
    finished: dict[int, bool] = {}
    for task_id, path in old_task_files(folders, days):
        if task_id not in finished:
            try:
                finished[task_id] = client.get_task(task_id).status in SETTLED_STATUSES
            except ApiNotFound:
                finished[task_id] = True  # unknown to the store: nothing can still write these files
        if not finished[task_id]:
            report.kept_unfinished.append(path.name)
            continue
        try:
            size = path.stat().st_size
            if not dry_run:
                path.unlink()
        except FileNotFoundError:  # a concurrent pass got it first
            continue
        report.bytes_freed += size
        report.removed.append(path.name)
    return report


# --- monitor_resolutions.jsonl: appended by the monitor, trimmed by retention ---------------------------------
@contextmanager
def locked_current(path: Path, mode: str) -> Iterator[IO[str]]:
    """``path`` opened and flock'ed, and still the file at ``path`` once the lock is held.

    A trim replaces the file by rename while holding the lock on the old one: a writer that opened the old file
    and then waited for the lock would append to a file nobody reads any more. So after locking, the opened file
    is compared with what ``path`` names now, and opened again when a trim replaced it meanwhile."""
    while True:
        handle = path.open(mode, encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(handle.fileno())
            if current is not None and (current.st_ino, current.st_dev) == (opened.st_ino, opened.st_dev):
                yield handle
                return
        finally:
            handle.close()  # closing releases the lock


def append_line(path: Path, line: str) -> None:
    """Append one line to a JSONL file that a retention pass may trim at the same moment (see locked_current)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked_current(path, "a") as handle:
        handle.write(line.rstrip("\n") + "\n")


@dataclass
class TrimReport:
    removed: int = 0
    kept: int = 0
    bytes_freed: int = 0


def trim_jsonl(path: Path, keep: Callable[[str], bool], *, dry_run: bool = False) -> TrimReport:
    """Keep only the lines ``keep`` accepts, rewriting the file through a temp file and rename under the same lock
    appenders take, so a line appended meanwhile is neither lost nor half-copied."""
    report = TrimReport()
    if not path.exists():
        return report
    with locked_current(path, "r") as handle:
        lines = handle.readlines()
        kept = [line for line in lines if keep(line)]
        report.removed, report.kept = len(lines) - len(kept), len(kept)
        report.bytes_freed = sum(len(line.encode("utf-8")) for line in lines) - sum(
            len(line.encode("utf-8")) for line in kept)
        if dry_run or not report.removed:
            return report
        write_text_atomic(path, "".join(kept))
    return report


def _resolved_since(cutoff: datetime) -> Callable[[str], bool]:
    """A line is kept when it resolved at or after ``cutoff``; a line that cannot be read is kept (nothing stored is
    dropped for being unexpected)."""
    def keep(line: str) -> bool:
        try:
            resolved = datetime.fromisoformat(json.loads(line)["resolved_at"])
        except (ValueError, KeyError, TypeError):
            return True
        if resolved.tzinfo is None:
            resolved = resolved.replace(tzinfo=UTC)
        return resolved >= cutoff
    return keep


def trim_resolutions(settings: Settings, *, dry_run: bool = False, now: datetime | None = None) -> TrimReport:
    """Drop monitor resolutions older than COHERENCE_RETAIN_RESOLUTIONS_DAYS (0: keep them all)."""
    days = settings.coherence_retain_resolutions_days
    if days <= 0:
        return TrimReport()
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    path = REGISTRY["monitor_resolutions.jsonl"].path(settings)
    report = trim_jsonl(path, _resolved_since(cutoff), dry_run=dry_run)
    if report.removed and not dry_run:
        log.info("retention: removed %d monitor resolutions from %s (%d bytes)", report.removed, path.name,
                 report.bytes_freed)
    return report


def prune_task_files(settings: Settings, client: ApiClient, *, dry_run: bool = False) -> CleanupReport:
    """Task logs and prompts of tasks past COHERENCE_RETAIN_TASKS_DAYS (0: keep them all); logged when any went."""
    days = settings.coherence_retain_tasks_days
    if days <= 0:
        return CleanupReport()
    report = clean_task_files(task_file_folders(settings), days, client, dry_run=dry_run)
    if report.removed and not dry_run:
        log.info("retention: removed %d task logs and prompt files (%d bytes)", len(report.removed),
                 report.bytes_freed)
    return report
