"""Removal of old per-task logs: only logs of finished tasks, only older than the cut-off."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from coherence_network.client import ApiClient, ApiNotFound
from coherence_network.contract import SETTLED_STATUSES

TASK_LOG = re.compile(r"^task_(\d+)\.log$")


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    kept_unfinished: list[str] = field(default_factory=list)
    bytes_freed: int = 0


def old_task_logs(logs_dir: Path, days: float, now: float | None = None) -> list[tuple[int, Path]]:
    """Task logs whose last write is older than ``days``, as (task id, path), oldest first."""
    cutoff = (now or time.time()) - days * 86400
    found = []
    for path in logs_dir.glob("task_*.log"):
        match = TASK_LOG.match(path.name)
        if match and path.stat().st_mtime < cutoff:
            found.append((path.stat().st_mtime, int(match.group(1)), path))
    return [(task_id, path) for _, task_id, path in sorted(found)]


def clean_task_logs(logs_dir: Path, days: float, client: ApiClient, *, dry_run: bool = False) -> CleanupReport:
    """Remove old logs of finished tasks. The API says which tasks are finished; a log whose task is unknown to
    the store (deleted database, another installation) counts as finished. API errors propagate: without the API
    nothing can be proven finished, so nothing is removed."""
    report = CleanupReport()
    for task_id, path in old_task_logs(logs_dir, days):
        try:
            finished = client.get_task(task_id).status in SETTLED_STATUSES
        except ApiNotFound:
            finished = True  # unknown to the store: nothing can still write this log
        if not finished:
            report.kept_unfinished.append(path.name)
            continue
        report.bytes_freed += path.stat().st_size
        report.removed.append(path.name)
        if not dry_run:
            path.unlink(missing_ok=True)
    return report
