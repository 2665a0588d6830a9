"""Auto-commit and auto-push of the workspace the pipeline edits (PIPELINE_AUTO_COMMIT, PIPELINE_AUTO_PUSH).

A commit is made only when no other task is running, so one task's half-written change never lands in another's
commit; a workspace that is not a git repository is logged and skipped. Pushes are never forced: a push that fails
leaves the commits local and the next push (after the next commit) carries them. Everything is logged to
var/logs/commit_progress.log.
"""

from __future__ import annotations

import logging
import logging.handlers
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coherence_network.client import ApiClient, ApiError
from coherence_network.logfiles import ROTATE_BACKUPS, ROTATE_BYTES, UTCFormatter, component_log
from coherence_network.settings import Settings

log = logging.getLogger("coherence.gitops")

COMMIT_TYPES = frozenset({"spec", "test", "impl", "review"})
SUBJECT_DIRECTION_CHARS = 60
_FALLBACK_IDENTITY = ("-c", "user.name=Coherence pipeline", "-c", "user.email=pipeline@coherence.invalid")


def progress_log(settings: Settings) -> logging.Logger:
    """The gitops logger, writing (also) to commit_progress.log, whichever component's log the process has."""
    path = component_log("commit_progress").path(settings)
    if not any(getattr(h, "baseFilename", None) == str(path) for h in log.handlers):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=ROTATE_BYTES, backupCount=ROTATE_BACKUPS,
                                                       encoding="utf-8")
        handler.setFormatter(UTCFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return log


def _git(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, timeout=120, check=False)


def commit_message(tasks: Sequence[dict[str, Any]]) -> str:
    """``[pipeline] {type} {id}: {direction, shortened}`` for the newest task; earlier ones listed in the body."""
    newest = tasks[-1]
    direction = " ".join(str(newest.get("direction", "")).split())
    if len(direction) > SUBJECT_DIRECTION_CHARS:
        direction = direction[: SUBJECT_DIRECTION_CHARS - 3].rstrip() + "..."
    subject = f"[pipeline] {newest['task_type']} {newest['id']}: {direction}"
    earlier = [f"- {t['task_type']} {t['id']}: {' '.join(str(t.get('direction', '')).split())[:100]}"
               for t in tasks[:-1]]
    return subject if not earlier else subject + "\n\nAlso includes:\n" + "\n".join(earlier)


def commit_workspace(settings: Settings, tasks: Sequence[dict[str, Any]]) -> str:
    """Commit every change in the workspace for these completed tasks (and push if asked); returns what happened:
    ``committed``, ``nothing``, ``not-a-repo`` or ``failed``."""
    out = progress_log(settings)
    workspace = settings.coherence_workspace.resolve()
    ids = ", ".join(str(t["id"]) for t in tasks)
    if _git(workspace, "rev-parse", "--is-inside-work-tree").returncode != 0:
        out.warning("task %s: %s is not a git repository; auto-commit skipped", ids, workspace)
        return "not-a-repo"
    added = _git(workspace, "add", "-A")
    if added.returncode != 0:
        out.error("task %s: git add failed: %s", ids, added.stderr.strip())
        return "failed"
    if _git(workspace, "diff", "--cached", "--quiet").returncode == 0:
        out.info("task %s: no changes to commit", ids)
        return "nothing"
    identity = () if _git(workspace, "config", "user.email").stdout.strip() else _FALLBACK_IDENTITY
    done = _git(workspace, *identity, "commit", "--quiet", "-m", commit_message(tasks))
    if done.returncode != 0:
        out.error("task %s: git commit failed: %s", ids, (done.stderr or done.stdout).strip())
        return "failed"
    sha = _git(workspace, "rev-parse", "--short", "HEAD").stdout.strip()
    out.info("task %s: committed %s", ids, sha)
    if settings.pipeline_auto_push:
        push(settings)
    return "committed"


def push(settings: Settings) -> bool:
    """Push the current branch (all local commits, never forced); a failure is logged, the commits stay queued."""
    out = progress_log(settings)
    workspace = settings.coherence_workspace.resolve()
    remote = settings.pipeline_git_remote
    done = _git(workspace, "push", "--porcelain", remote, "HEAD")
    if done.returncode != 0:
        out.error("push to %s failed (commits stay local and go with the next push): %s", remote,
                  (done.stderr or done.stdout).strip()[-500:])
        return False
    out.info("pushed to %s", remote)
    return True


def after_task_completed(task: dict[str, Any], settings: Settings, busy_count: int) -> str:
    """The runner's hook, called after a task's result was delivered; ``busy_count``: other tasks still running in
    this workspace. A busy workspace defers the commit: the next idle commit includes these changes."""
    if not settings.pipeline_auto_commit or task.get("status") != "completed" or task["task_type"] not in COMMIT_TYPES:
        return "skipped"
    if busy_count:
        progress_log(settings).info("task %s: %d other task(s) running; commit deferred", task["id"], busy_count)
        return "deferred"
    return commit_workspace(settings, [task])


class CompletedTaskWatcher:
    """Auto-commit driven from the supervisor: polls the API for newly completed tasks and commits when nothing
    runs. Tasks already completed when it starts are not committed again."""

    def __init__(self, settings: Settings, client: ApiClient) -> None:
        self.settings = settings
        self.client = client
        self.seen: set[int] | None = None
        self.waiting: list[dict[str, Any]] = []

    def poll(self) -> str | None:
        """One pass; returns commit_workspace's outcome when it committed (or tried), else None."""
        try:
            completed = self.client.list_tasks(status="completed", limit=200)["items"]
            running = self.client.count_tasks()["by_status"].get("running", 0)
        except ApiError as exc:
            progress_log(self.settings).debug("auto-commit poll skipped: %s", exc)
            return None
        ids = {t["id"] for t in completed}
        if self.seen is None:
            self.seen = ids
            return None
        fresh = sorted((t for t in completed if t["id"] not in self.seen and t["task_type"] in COMMIT_TYPES),
                       key=lambda t: t["finished_at"] or "")
        self.seen = ids  # the newest completed tasks; older ones cannot reappear as new
        self.waiting += fresh
        if not self.waiting:
            return None
        if running:
            if fresh:
                progress_log(self.settings).info("task %s completed; %d task(s) running, commit deferred",
                                                 ", ".join(str(t["id"]) for t in fresh), running)
            return None
        batch, self.waiting = self.waiting, []
        return commit_workspace(self.settings, batch)
