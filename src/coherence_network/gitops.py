"""Auto-commit and auto-push of the workspace the pipeline edits (PIPELINE_AUTO_COMMIT, PIPELINE_AUTO_PUSH).

A commit is made only when no other task is running, so one task's half-written change never lands in another's
commit; a workspace that is not a git repository is logged and skipped. Pushes are never forced: a push that fails
leaves the commits local and the next push (after the next commit) carries them. Everything is logged to
var/logs/commit_progress.log; var/logs/auto_commit.json keeps the failures in a row and the last error for the
operator's checks.

git runs unattended: stdin closed, its own process group (killed whole on timeout), no terminal prompts, no askpass
program, ssh in batch mode. A credential prompt, a hang, a missing git or a failing command is a failed commit or
push, logged and recorded, never an exception for the caller.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from coherence_network.client import ApiClient, ApiError
from coherence_network.contract import Task, TaskStatus, TaskType
from coherence_network.errors import CoherenceError
from coherence_network.logfiles import REGISTRY, open_log, operator_umask, write_json_atomic
from coherence_network.settings import Settings, get_settings
from coherence_network.task_env import task_environment

COMMIT_TYPES = frozenset({TaskType.SPEC, TaskType.TEST, TaskType.IMPL, TaskType.REVIEW})
SUBJECT_DIRECTION_CHARS = 60
GIT_TIMEOUT_SECONDS = 60.0
_FALLBACK_IDENTITY = ("-c", "user.name=Coherence pipeline", "-c", "user.email=pipeline@coherence.invalid")
# Empty askpass variables stop git from falling back to core.askPass or SSH_ASKPASS (a GUI prompt nobody answers).
_NO_PROMPTS = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "", "GCM_INTERACTIVE": "never"}


class GitError(CoherenceError):
    """git could not run, timed out, or a command failed; the message says which and why."""


def progress_log(settings: Settings) -> logging.Logger:
    """The gitops logger, writing (also) to commit_progress.log: its registered writer is the supervisor, the one
    process that runs auto-commit (CompletedTaskWatcher), which has these lines in its own log too."""
    return open_log(REGISTRY["commit_progress.log"], settings)


def _git_env() -> dict[str, str]:
    """What a task would get: git runs hooks and config commands from the workspace, which tasks write."""
    env = {**task_environment(get_settings(), os.environ).env, **_NO_PROMPTS}
    env["GIT_SSH_COMMAND"] = f"{env.get('GIT_SSH_COMMAND') or 'ssh'} -o BatchMode=yes"
    return env


def git(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run git unattended (see the module docstring); raises GitError when it cannot run, times out, or (with
    ``check``) exits non-zero."""
    try:
        proc = subprocess.Popen(["git", *args], cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_git_env(), start_new_session=True,
                                umask=operator_umask())  # our own umask is private (see logfiles)
    except OSError as exc:
        raise GitError(f"git cannot run: {exc}") from exc
    try:
        out, err = proc.communicate(timeout=GIT_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # git and whatever it started (ssh, a credential helper)
        proc.communicate()
        raise GitError(f"git {args[0]} timed out after {GIT_TIMEOUT_SECONDS:g} s") from None
    if check and proc.returncode != 0:
        raise GitError(f"git {args[0]} failed (exit {proc.returncode}): {(err or out).strip()[-500:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def identity(repo: Path) -> tuple[str, ...]:
    """git options for a commit in ``repo``: none when the repository has an identity, else the pipeline's own."""
    return () if git(repo, "config", "user.email", check=False).stdout.strip() else _FALLBACK_IDENTITY


def commit_all(repo: Path, tasks: Sequence[Task]) -> bool:
    """Stage every change in ``repo`` (a checkout or a worktree of it) and commit it for ``tasks``; False when there
    was nothing to commit."""
    git(repo, "add", "-A")
    if git(repo, "diff", "--cached", "--quiet", check=False).returncode == 0:
        return False
    git(repo, *identity(repo), "commit", "--quiet", "-m", commit_message(tasks))
    return True


def commit_message(tasks: Sequence[Task]) -> str:
    """``[pipeline] {type} {id}: {direction, shortened}`` for the newest task; earlier ones listed in the body."""
    newest = tasks[-1]
    direction = " ".join(newest.direction.split())
    if len(direction) > SUBJECT_DIRECTION_CHARS:
        direction = direction[: SUBJECT_DIRECTION_CHARS - 3].rstrip() + "..."
    subject = f"[pipeline] {newest.task_type} {newest.id}: {direction}"
    earlier = [f"- {t.task_type} {t.id}: {' '.join(t.direction.split())[:100]}" for t in tasks[:-1]]
    return subject if not earlier else subject + "\n\nAlso includes:\n" + "\n".join(earlier)


def record_outcome(settings: Settings, outcome: str, error: str | None = None) -> None:
    """auto_commit.json: failures in a row (0 after a success), the last error and when, the last outcome."""
    path = REGISTRY["auto_commit.json"].path(settings)
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        status = {"failures": 0, "last_error": None, "last_error_at": None}
    now = datetime.now(UTC).isoformat()
    status.update(last_outcome=outcome, last_outcome_at=now)
    if error is None:
        status["failures"] = 0
    else:
        status.update(failures=status.get("failures", 0) + 1, last_error=error, last_error_at=now)
    write_json_atomic(path, status)


def commit_workspace(settings: Settings, tasks: Sequence[Task]) -> str:
    """Commit every change in the workspace for these completed tasks (and push if asked); returns what happened:
    ``committed``, ``nothing``, ``not-a-repo`` or ``failed``. A failed push still returns ``committed`` (the commit
    is made) but counts as a failure in auto_commit.json."""
    out = progress_log(settings)
    ids = ", ".join(str(t.id) for t in tasks)
    try:
        outcome = _commit(settings, tasks, ids)
    except GitError as exc:
        out.error("task %s: auto-commit failed, the changes stay in the workspace: %s", ids, exc)
        record_outcome(settings, "failed", str(exc))
        return "failed"
    if outcome == "committed" and settings.pipeline_auto_push:
        push(settings)
    else:
        record_outcome(settings, outcome)
    return outcome


def _commit(settings: Settings, tasks: Sequence[Task], ids: str) -> str:
    out = progress_log(settings)
    workspace = settings.coherence_workspace.resolve()
    if git(workspace, "rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        out.warning("task %s: %s is not a git repository; auto-commit skipped", ids, workspace)
        return "not-a-repo"
    if not commit_all(workspace, tasks):
        out.info("task %s: no changes to commit", ids)
        return "nothing"
    out.info("task %s: committed %s", ids, git(workspace, "rev-parse", "--short", "HEAD").stdout.strip())
    return "committed"


def push(settings: Settings) -> bool:
    """Push the current branch (all local commits, never forced); a failure is logged, the commits stay queued."""
    out = progress_log(settings)
    remote = settings.pipeline_git_remote
    try:
        git(settings.coherence_workspace.resolve(), "push", "--porcelain", remote, "HEAD")
    except GitError as exc:
        out.error("push to %s failed (commits stay local and go with the next push): %s", remote, exc)
        record_outcome(settings, "push-failed", str(exc))
        return False
    out.info("pushed to %s", remote)
    record_outcome(settings, "pushed")
    return True


# A finish is stamped before its transaction commits, so one stamped earlier can become visible after a later one
# was read: each look reaches back this far before the newest finish seen, and skips the ids it already saw.
WATCH_OVERLAP = timedelta(seconds=5)
WATCH_PAGE = 500  # the API's largest page
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CompletedTaskWatcher:
    """Auto-commit driven from the supervisor (on its own thread): asks the API only for tasks completed since its
    last look (a cursor on ``finished_at``, every page of them) and commits when nothing runs. Tasks already
    completed when it starts are not committed. The running count is asked only while a commit waits."""

    def __init__(self, settings: Settings, client: ApiClient) -> None:
        self.settings = settings
        self.client = client
        self.started = False  # the first look only marks what is already completed
        self.cursor = _EPOCH  # the newest finish seen
        self.seen: dict[int, datetime] = {}  # ids finished within WATCH_OVERLAP of the cursor, already taken
        self.waiting: list[Task] = []

    def _completed_after(self, after: datetime) -> list[Task]:
        """Every task completed after ``after``, oldest finish first."""
        found: list[Task] = []
        while True:
            page = self.client.list_tasks(status=TaskStatus.COMPLETED, finished_after=after.isoformat(),
                                          order="oldest", limit=WATCH_PAGE, offset=len(found))
            found += page.items
            if len(page.items) < WATCH_PAGE:
                return found

    def _take(self, done: list[Task]) -> list[Task]:
        """Move the cursor past ``done``; returns those not seen before."""
        fresh = [t for t in done if t.id not in self.seen]
        for t in done:
            self.seen[t.id] = t.finished_at or t.updated_at
        if self.seen:
            self.cursor = max(self.seen.values())
            self.seen = {i: at for i, at in self.seen.items() if at >= self.cursor - WATCH_OVERLAP}
        return fresh

    def poll(self) -> str | None:
        """One pass; returns commit_workspace's outcome when it committed (or tried), else None."""
        first = not self.started
        try:
            if first:
                newest = self.client.list_tasks(status=TaskStatus.COMPLETED, finished_after=_EPOCH.isoformat(),
                                                order="newest", limit=1)
                latest = newest.items[0].finished_at if newest.items else None
                done = self._completed_after(latest - WATCH_OVERLAP) if latest else []
            else:
                done = self._completed_after(self.cursor - WATCH_OVERLAP)
            fresh = self._take(done)
            running = self.client.count_tasks().by_status.get(TaskStatus.RUNNING, 0) if (
                not first and (fresh or self.waiting)) else 0
        except ApiError as exc:
            progress_log(self.settings).debug("auto-commit poll skipped: %s", exc)
            return None
        if first:
            self.started = True
            progress_log(self.settings).info("auto-commit on: watching %s for completed tasks (%d completed before "
                                             "are not committed)", self.settings.coherence_workspace, newest.total)
            return None
        # A phase that ran in its item's worktree committed there (item_worktree): nothing of it is in the workspace.
        fresh = [t for t in fresh if t.task_type in COMMIT_TYPES and not (t.evidence or {}).get("worktree")]
        self.waiting += fresh
        if not self.waiting:
            return None
        if running:
            if fresh:
                progress_log(self.settings).info("task %s completed; %d task(s) running, commit deferred",
                                                 ", ".join(str(t.id) for t in fresh), running)
            return None
        batch, self.waiting = self.waiting, []
        return commit_workspace(self.settings, batch)
