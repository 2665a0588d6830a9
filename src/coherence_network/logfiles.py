"""Registry of every file under ``var/logs`` and the one logging setup all components share.

A file that any component writes is declared here once, with its purpose; the runbook's Log Locations table is
checked against this registry by a test, so adding a file here is how it gets documented. A log names its one
writer: the component whose process opens it (through ``open_log``, the one place a log file is opened), and the
logger whose records it takes; no other process writes or rotates it.

Everything under ``COHERENCE_HOME`` is private to its owner (it holds task output): each component, as it sets up
its logging, takes umask 077 for itself, so whatever it creates later (rotated logs, task logs, the outbox, PID
and lock files, prompts, the SQLite -wal and -shm files) is too. Tasks and git in the workspace keep the
operator's umask (``operator_umask``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import re
import secrets
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coherence_network.settings import Settings

ROTATE_BYTES = 5 * 1024 * 1024
ROTATE_BACKUPS = 3
PRIVATE_UMASK = 0o077
# write_json_atomic's temp files carry their writer's pid: ``.{name}.{pid}.{random}.tmp``
_TEMP_FILE = re.compile(r"^\..+\.(?P<pid>\d+)\.[^.]+\.tmp$")


def _umask_now() -> int:
    mask = os.umask(PRIVATE_UMASK)
    os.umask(mask)
    return mask


_started_umask = _umask_now()  # read once, at import, before this process creates anything
_operator_umask: int | None = None  # recorded by keep_private
_swept: set[Path] = set()  # folders whose dead writers' temp files this process has removed


@dataclass(frozen=True)
class LogFile:
    """One file under var/: its name (a pattern for per-task logs), kind, purpose, rotation and folder; a log also
    names its writer (the component, as ``setup_logging`` names it, whose process alone opens it) and the logger
    whose records it takes ("" for the root: everything that process logs)."""

    name: str
    kind: str  # "log" (component log), "task" (per-task output), "state" (JSON state/report) or "run" (host-local)
    purpose: str
    rotation: str
    folder: str = "logs"
    writer: str = ""
    logger: str = ""

    def path(self, settings: Settings, **fields: Any) -> Path:
        return settings.home / self.folder / self.name.format(**fields)


_ROTATED = f"{ROTATE_BYTES // (1024 * 1024)} MiB, {ROTATE_BACKUPS} backups"

REGISTRY: dict[str, LogFile] = {
    f.name: f
    for f in (
        LogFile("api.log", "log", "API server: startup, failed requests, store errors, Telegram webhook calls",
                _ROTATED, writer="api"),
        LogFile("agent_runner.log", "log", "Agent runner: claims, task starts and results, API outages", _ROTATED,
                writer="agent_runner"),
        LogFile("project_manager.log", "log", "Project manager: backlog parsing, phase tasks created", _ROTATED,
                writer="project_manager"),
        LogFile("monitor.log", "log", "Monitor: one STATUS line per check, issues opened and resolved", _ROTATED,
                writer="monitor"),
        LogFile("supervisor.log", "log", "Supervisor: child starts, exits, restarts, fatal issues", _ROTATED,
                writer="supervisor"),
        LogFile("telegram.log", "log", "Telegram bot (`coherence telegram`): commands it polled, refused senders, "
                "messages sent; in webhook mode the webhook's commands are in api.log", _ROTATED, writer="telegram"),
        LogFile("commit_progress.log", "log", "Auto-commit and auto-push of the workspace (written by the supervisor, "
                "which also has these lines in supervisor.log)", _ROTATED, writer="supervisor",
                logger="coherence.gitops"),
        LogFile("indexer.log", "log", "npm and PyPI indexers: progress lines, failures, summaries", _ROTATED,
                writer="indexer"),
        LogFile("task_{id}.log", "task", "Full output of one task, with header and footer",
                "none; removed with its task (COHERENCE_RETAIN_TASKS_DAYS)"),
        LogFile("project_manager_state.json", "state", "Project manager state: backlog position, items", "none"),
        LogFile("monitor_issues.json", "state", "Open monitor issues with first-seen time", "none"),
        LogFile("monitor_resolutions.jsonl", "state", "Monitor issues that cleared, one JSON line each",
                "none; trimmed by COHERENCE_RETAIN_RESOLUTIONS_DAYS"),
        LogFile("pipeline_status_report.json", "state", "Layered status report written by the monitor", "none"),
        LogFile("pipeline_status_report.txt", "state", "The same report for humans", "none"),
        LogFile("pipeline_version.json", "state", "Code version (git SHA) the running pipeline started with", "none"),
        LogFile("restart_requested.json", "state", "Restart request for the supervisor {reason, component, at}",
                "none"),
        LogFile("fatal_issues.json", "state", "Fatal issues: components that could not be kept running", "none"),
        LogFile("fatal_clear_pending.json", "state", "A `coherence fatal --clear` the store has not applied yet "
                "(the API was unreachable) {before, by}", "none; removed once applied"),
        LogFile("auto_commit.json", "state", "Auto-commit health: git failures in a row, the last error, last outcome",
                "none"),
    )
}


# Host-local files under var/run/: locks and PID files, undelivered results, prompts, bot state.
RUN_FILES: dict[str, LogFile] = {
    f.name: f
    for f in (
        LogFile("{component}.lock", "run",
                "Single-instance lock (flock) of a component, held for its life; holds its pid", "none; kept", "run"),
        LogFile("{component}.pid", "run",
                "PID of a running component (api, agent_runner, ...), written by its lock holder", "none", "run"),
        LogFile("runners/", "run", "One {pid}.lock per running runner, locked (flock) for its life, however it was "
                "started; `coherence stop` stops each", "none; removed when its runner ends (a killed one's by "
                "`coherence stop`)", "run"),
        LogFile("runner_outbox/", "run",
                "Task results the runner could not deliver yet (API down); sent when it is back",
                "none; emptied on delivery (a killed runner's temp files go at the next start)", "run"),
        LogFile("task_groups/", "run", "One {pgid}.json per running task's process group (task, run, runner, guard); "
                "a starting runner and `coherence stop` kill groups whose runner is gone",
                "none; removed when the group ends", "run"),
        LogFile("prompts/", "run", "Prompt files the runner hands to the agent command ({prompt_file})",
                "none; removed with their task (COHERENCE_RETAIN_TASKS_DAYS)", "run"),
        LogFile("worktrees.lock", "run", "Lock (flock) a runner holds while it adds an item's worktree, or merges a "
                "branch into the target branch and pushes it, so two reviews never merge at once", "none; kept", "run"),
        LogFile("{slug}/", "run", "One git worktree per backlog item (branch coherence/{slug}), where its phase "
                "tasks run; `_target/` holds the target branch when no other checkout does",
                "none; `coherence cleanup` removes those of settled items whose branch is merged", "worktrees"),
        LogFile("telegram_state.json", "run", "Telegram bot: update offset, alerts already sent, outgoing queue",
                "none", "run"),
        LogFile("console_session_key", "run", "Generated key (mode 0600) that signs console sessions, CSRF tokens and "
                "bulk-action tokens when COHERENCE_API_TOKEN is unset, shared by the API's workers",
                "none; delete it to sign everyone out", "run"),
        LogFile("telegram_webhook_secret", "run", "Generated webhook secret (mode 0600) when "
                "TELEGRAM_WEBHOOK_SECRET and COHERENCE_API_TOKEN are unset (with a token it is derived from it)",
                "none", "run"),
    )
}


def component_log(component: str) -> LogFile:
    """The registered component log ``{component}.log``; unknown names are a programming error."""
    return REGISTRY[f"{component}.log"]


def task_log_path(settings: Settings, task_id: int) -> Path:
    return REGISTRY["task_{id}.log"].path(settings, id=task_id)


def operator_umask() -> int:
    """The umask tasks and git run with in the workspace: COHERENCE_TASK_UMASK as ``keep_private`` found it, else
    the umask this process started with."""
    return _started_umask if _operator_umask is None else _operator_umask


def keep_private(settings: Settings) -> None:
    """From now on this process creates files and folders only its owner can use (umask 077), and what an older
    version left loses group and other access: COHERENCE_HOME itself, everything under logs/ and run/, and the
    SQLite files. Nothing else in COHERENCE_HOME is walked (it may hold the workspace); symlinks are not followed.

    The operator's umask is recorded for tasks, and handed to the components this process starts (they inherit
    umask 077) in COHERENCE_TASK_UMASK."""
    global _operator_umask
    _operator_umask = int(settings.coherence_task_umask, 8) if settings.coherence_task_umask else _started_umask
    os.environ["COHERENCE_TASK_UMASK"] = f"{_operator_umask:03o}"
    os.umask(PRIVATE_UMASK)
    settings.ensure_dirs()
    ours = [settings.home, *settings.home.glob("coherence.db*")]
    for top in (settings.logs_dir, settings.run_dir):
        for folder, _dirs, files in os.walk(top):
            ours += [Path(folder), *(Path(folder, name) for name in files)]
    for path in ours:
        try:
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
                path.chmod(stat.S_IMODE(mode) & 0o700)
        except OSError:  # removed meanwhile by a running component, or not ours to change
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_dead_writers_temps(folder: Path) -> list[Path]:
    """Remove the temp files ``write_json_atomic`` left in ``folder`` when its writer died between creating and
    renaming one (a SIGKILL mid-write); a live writer's are left alone. Returns what was removed."""
    removed = []
    for path in folder.glob(".*.tmp"):
        found = _TEMP_FILE.match(path.name)
        if found and not _alive(int(found["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def _written_temp(path: Path, text: str) -> Iterator[Path]:
    """``text`` in a temp file beside ``path``, whole and on disk, for the caller to move into place; removed
    afterwards if it is still there. Its name carries this process's pid (see ``remove_dead_writers_temps``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp makes it 0600
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and rename, so a reader never sees half a file."""
    with _written_temp(path, text) as tmp:
        os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` atomically (``write_text_atomic``).

    A writer killed mid-write leaves a temp file that can be told from a live writer's: the first write into a
    folder in each process removes those of dead writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent not in _swept:
        _swept.add(path.parent)
        remove_dead_writers_temps(path.parent)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def shared_secret(path: Path) -> str:
    """The random secret stored at ``path`` (mode 0600), made by the first process to ask: every process of this
    COHERENCE_HOME (uvicorn workers, the bot and the API) then holds the same one. The file appears whole and only
    once (a temp file hard-linked into place, which fails if another process got there first)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with _written_temp(path, secrets.token_urlsafe(32) + "\n") as tmp, contextlib.suppress(FileExistsError):
        os.link(tmp, path)  # another process made it first: theirs is the one
    return path.read_text(encoding="utf-8").strip()


class UTCFormatter(logging.Formatter):
    """``2026-11-25T06:00:00.123Z LEVEL component: message`` — one line format everywhere."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        self.converter = time.gmtime


class JSONFormatter(logging.Formatter):
    """One JSON object per line with a UTC ISO timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_opened: dict[Path, logging.Handler] = {}  # the file handler of each log this process writes: one per file


def _formatter(json_lines: bool) -> logging.Formatter:
    return JSONFormatter() if json_lines else UTCFormatter()


def open_log(log_file: LogFile, settings: Settings, *, json_lines: bool | None = None,
             rotate: bool = True) -> logging.Logger:
    """Attach ``log_file``'s rotated file handler to its logger, once per process and file (a second call returns
    the logger as it is), and return the logger. The one place a log file is opened: call it only in the process of
    the file's registered writer, so that each file has one writer and one rotation. ``rotate=False``: the file is
    appended to and reopened once someone else rotated it (``RotateWhenFull``), for processes that share one log
    (the API's workers) and leave its rotation to one of them."""
    path = log_file.path(settings)
    logger = logging.getLogger(log_file.logger or None)
    if _opened.get(path) not in logger.handlers:  # never opened, or its handler was taken off (setup_logging)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.FileHandler = (
            logging.handlers.RotatingFileHandler(path, maxBytes=ROTATE_BYTES, backupCount=ROTATE_BACKUPS,
                                                 encoding="utf-8")
            if rotate else logging.handlers.WatchedFileHandler(path, encoding="utf-8"))
        handler.setFormatter(_formatter(settings.coherence_log_json if json_lines is None else json_lines))
        logger.addHandler(handler)
        if log_file.logger and logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)  # its own file gets INFO and up, whatever the root's level
        _opened[path] = handler
    return logger


def setup_logging(
    component: str, settings: Settings, *, json_lines: bool | None = None, verbose: bool = False, console: bool = True,
    rotate: bool = True,
) -> Path:
    """Send the root logger to the component's rotated log file (and stderr); returns the log path. ``rotate``: see
    ``open_log``.

    Every component calls this first, so this is where its files under COHERENCE_HOME become private."""
    keep_private(settings)
    log_file = component_log(component)
    use_json = settings.coherence_log_json if json_lines is None else json_lines
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    open_log(log_file, settings, json_lines=use_json, rotate=rotate)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(_formatter(use_json))
        root.addHandler(stream)
    root.setLevel(logging.DEBUG if verbose else settings.coherence_log_level)
    # Alembic says "Context impl ..." each time a revision is read (every /api/ready): only with -v; the API and
    # `coherence migrate` say themselves what a migration changed.
    for noisy in ("httpx", "httpcore", *(() if verbose else ("alembic",))):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return log_file.path(settings)


class RotateWhenFull:
    """The one rotator of a log several processes append to (``open_log(rotate=False)``): every ``every`` seconds,
    once the file holds ``max_bytes``, it shifts ``name.1`` .. ``name.N`` up (the oldest goes) and renames the file to
    ``name.1``; the writers notice the new file at their next line and reopen it, so a line lands in the old file or
    the new one, never nowhere, and no two processes rotate one file."""

    def __init__(self, path: Path, *, max_bytes: int = ROTATE_BYTES, backups: int = ROTATE_BACKUPS,
                 every: float = 5.0) -> None:
        self.path, self.max_bytes, self.backups, self.every = path, max_bytes, backups, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coherence-log-rotation", daemon=True)

    def start(self) -> RotateWhenFull:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.every + 1)

    def rotate_if_full(self) -> bool:
        try:
            if self.path.stat().st_size < self.max_bytes:
                return False
            for number in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{number + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        except OSError:
            return False  # gone or unreadable now: tried again at the next look
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.rotate_if_full()
