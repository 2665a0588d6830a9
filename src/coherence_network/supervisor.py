"""Supervisor (watchdog): starts the API, runner, project manager and monitor as child processes, restarts the ones
that exit, acts on restart requests, holds back a component that keeps crashing (a fatal issue), and on
SIGTERM/SIGINT stops everything it started, leaving no process behind.

Any exit of a child while the pipeline runs is restarted; the one exception is `--until-done`, where the project
manager's exit ends the pipeline. A clean exit (code 0: a component stopped with SIGTERM by someone) is restarted at
once and is not a crash (nor is a SIGTERM that came before the component installed its handler), nor is a restart
an operator asked for. A crash (any other exit, a death by signal) is
restarted after a backoff that doubles with each crash in SUPERVISOR_FATAL_WINDOW_SECONDS; SUPERVISOR_FATAL_RESTARTS
of them make a fatal issue (recorded once) and hold that component back alone: it is tried again only every
SUPERVISOR_MAX_BACKOFF_SECONDS, at once when the operator clears its fatal issue, while every other component, the
API included, keeps running. The supervisor itself never exits because a component flaps. One-shot flags such as
the project manager's ``--reset`` go to a child's first start only.

The supervisor binds the API's port itself and hands the listening socket to each API it starts (``coherence api
--fd``): while one API exits and the next starts, connections wait in the kernel's backlog instead of being
refused.

Each child is ``python -m coherence_network.cli.supervised <component> <supervisor pid> <coherence command>`` in its own
process group: the child takes its single-instance lock, writes its own PID file and ends when the supervisor dies
(see pidfiles), and stopping its group stops everything it spawned. The supervisor holds its own lock, so two
supervisors never run at once. Auto-commit runs on a thread of its own: git can be slow or fail, and supervision
never waits for it. A port held by something that is not a Coherence API stops the supervisor before it starts
anything.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

from coherence_network import __version__, fatal
from coherence_network.client import ApiClient, ApiError
from coherence_network.contract import Component
from coherence_network.fatal import held_issue_cleared
from coherence_network.gitops import GIT_TIMEOUT_SECONDS, CompletedTaskWatcher
from coherence_network.logfiles import REGISTRY, write_json_atomic
from coherence_network.pidfiles import SUPERVISOR, AlreadyRunning, hold, remove_pid
from coherence_network.ports import listener
from coherence_network.process_hygiene import without_store_secrets
from coherence_network.settings import Settings
from coherence_network.stopping import signal_group, stop_groups
from coherence_network.taskgroups import kill_orphaned_task_groups
from coherence_network.versioning import running_version, source_sha_on_disk

log = logging.getLogger("coherence.supervisor")

COMPONENTS = (Component.API, Component.RUNNER, Component.MANAGER, Component.MONITOR)
CLI_COMMANDS: dict[str, str] = {
    Component.API: "api", Component.RUNNER: "runner", Component.MANAGER: "pm", Component.MONITOR: "monitor",
}
ONE_SHOT_FLAGS = frozenset({"--reset"})  # given to a child's first start only: a restart must not redo them
SELF = SUPERVISOR  # the supervisor's own lock
TICK_SECONDS = 0.2
COMMIT_POLL_SECONDS = 2.0
BACKLOG_CHECK_SECONDS = 2.0  # how often the supervisor asks whether the backlog is through
API_START_SECONDS = 60.0
STDERR_LINES = 30
TAIL_CHARS = 2000  # of a child's last output, logged when it exits
STOPPED_CODES = frozenset({0, -signal.SIGTERM, -signal.SIGINT})  # clean, or stopped by someone before its handler
CLEAN_RESTART_SECONDS = 1.0  # a component that exits 0 again and again is started at most once in this time
FATAL_SYNC_SECONDS = 5.0  # how often fatal issues the store has not heard of are told to it while the API runs
API_BACKLOG = 2048  # connections that wait in the kernel while the API restarts


@dataclass
class SupervisorOptions:
    components: tuple[str, ...] = COMPONENTS
    restart: bool = True
    stop_when_manager_exits: bool = False  # `--until-done`: the pipeline ends when the backlog is settled
    args: dict[str, list[str]] = field(default_factory=dict)  # extra CLI arguments per component


@dataclass
class Child:
    """One supervised component and its crash history."""

    name: str
    args: list[str]  # the `coherence` command and its arguments, on every start
    first_start_args: list[str] = field(default_factory=list)  # one-shot flags, on the first start only
    starts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    started_at: float = 0.0  # time.monotonic() of the last start
    held: dict[str, object] | None = None  # the fatal issue holding this component back, until it is cleared
    finished: bool = False  # not (or no longer) run by this supervisor: --no-restart, or an API it found running
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_LINES))

    @classmethod
    def of(cls, name: str, extra: list[str]) -> Child:
        return cls(name, [CLI_COMMANDS[name], *(a for a in extra if a not in ONE_SHOT_FLAGS)],
                   [a for a in extra if a in ONE_SHOT_FLAGS])

    def next_args(self) -> list[str]:
        return self.args + (self.first_start_args if self.starts == 0 else [])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _drain(stream: IO[bytes], tail: deque[str]) -> None:
    """Keep the last lines a child wrote to stderr: the reason it died, for the log and fatal issues."""
    for raw in stream:
        tail.append(raw.decode("utf-8", errors="replace").rstrip())
    stream.close()


class Supervisor:
    def __init__(self, settings: Settings, options: SupervisorOptions) -> None:
        self.settings = settings
        self.options = options
        self.stopping = threading.Event()
        self.exit_code = 0
        self.client = ApiClient(settings=settings, retries=0, timeout=2.0)
        self.api_external = False
        self.api_socket: socket.socket | None = None  # the API's listening socket, held across its restarts
        self._next_backlog_check = 0.0
        self._next_fatal_sync = 0.0
        self._backlog_announced = False
        self.children: dict[str, Child] = {
            name: Child.of(name, options.args.get(name, [])) for name in COMPONENTS if name in options.components
        }

    # --- children -------------------------------------------------------------------------------------------
    def api_answers(self) -> bool:
        try:
            self.client.health(retries=0)
        except ApiError:
            return False
        return True

    def api_running(self) -> bool:
        """Whether asking the API can be answered now. While the supervisor holds the port and no API of its own
        runs, a request would wait in the backlog until it times out, so it is not made."""
        api = self.children.get("api")
        return self.api_external or api is None or api.alive

    def start(self, child: Child) -> None:
        child.restart_at = None
        # an API found before the supervisor started
        if child.name == Component.API and self.api_socket is None and self.api_answers():
            log.warning("an API already answers at %s: using it, not starting one (it is not supervised: restart it "
                        "where it runs)", self.client.base_url)
            self.api_external, child.finished = True, True
            return
        child.stderr_tail.clear()
        args = child.next_args()
        inherited: tuple[int, ...] = ()
        if child.name == Component.API and self.api_socket is not None:
            inherited = (self.api_socket.fileno(),)
            args = [*args, "--fd", str(inherited[0])]
        child.proc = subprocess.Popen([sys.executable, "-m", "coherence_network.cli.supervised", child.name,
                                       str(os.getpid()), *args],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True, pass_fds=inherited,
                                      env=None if child.name == Component.API else without_store_secrets(os.environ))
        child.starts += 1
        child.started_at = time.monotonic()
        assert child.proc.stderr is not None
        threading.Thread(target=_drain, args=(child.proc.stderr, child.stderr_tail), daemon=True).start()
        log.info("started %s (pid %d): %s", child.name, child.proc.pid, " ".join(args))
        if child.name == Component.API:
            self._wait_api(child)

    def _wait_api(self, child: Child) -> None:
        """Dependents start once the API answers (or the API died, which the loop handles)."""
        deadline = time.monotonic() + API_START_SECONDS
        while child.alive and time.monotonic() < deadline and not self.stopping.is_set():
            if self.api_answers():
                log.info("API answers at %s", self.client.base_url)
                return
            time.sleep(0.1)

    def _reaped(self, child: Child) -> None:
        """After a child is gone: remove the PID file only if the dead child left its own behind (SIGKILL)."""
        assert child.proc is not None
        remove_pid(self.settings, child.name, child.proc.pid)

    def stop_children(self, children: list[Child]) -> None:
        """Stop each running child's process group (stopping.stop_groups: SIGTERM, SIGKILL after the grace period);
        reaps."""
        running = {c.name: c.proc for c in children if c.alive and c.proc is not None}
        stop_groups(running, self.settings.supervisor_stop_grace_seconds)
        for child in children:
            if child.name in running:
                self._reaped(child)

    def _exited(self, child: Child) -> None:
        """A child exited on its own: restart it (any exit code: the pipeline is not stopping). A clean exit at once;
        a crash after a backoff, and once it keeps crashing it is held back (see the module docstring)."""
        assert child.proc is not None
        code = child.proc.returncode
        self._reaped(child)
        signal_group(child.proc.pid, signal.SIGKILL)  # whatever the dead leader left in its group
        tail = "\n".join(child.stderr_tail)
        _log_output(child.name, code, tail)
        if child.name == Component.MANAGER and self.options.stop_when_manager_exits:
            log.info("the project manager is done (exit %s): stopping the pipeline", code)
            self.exit_code = code if code >= 0 else 1
            self.stopping.set()
            return
        if self.stopping.is_set():
            return
        if not self.options.restart:
            log.info("%s is not restarted (--no-restart)", child.name)
            child.finished = True
            if code != 0:
                self.exit_code = 1
            return
        now = time.monotonic()
        if code in STOPPED_CODES:
            child.restart_at = max(now, child.started_at + CLEAN_RESTART_SECONDS)
            log.info("restarting %s now (a clean exit, not counted as a crash)", child.name)
            return
        child.crashes.append(now)
        while child.crashes and now - child.crashes[0] > self.settings.supervisor_fatal_window_seconds:
            child.crashes.popleft()
        limit, window = self.settings.supervisor_fatal_restarts, self.settings.supervisor_fatal_window_seconds
        if child.held is None and len(child.crashes) >= limit:
            self._fatal(child, code, tail)
        if child.held is not None:
            delay = self.settings.supervisor_max_backoff_seconds
            log.warning("%s is held back by its fatal issue: next try in %.0f s, or at once after coherence fatal "
                        "--clear; the other components keep running", child.name, delay)
        else:
            delay = min(self.settings.supervisor_backoff_seconds * 2 ** (len(child.crashes) - 1),
                        self.settings.supervisor_max_backoff_seconds)
            log.info("restarting %s in %.1f s (crash %d of %d allowed in %.0f s)", child.name, delay,
                     len(child.crashes), limit, window)
        child.restart_at = now + delay

    def _fatal(self, child: Child, code: int, tail: str) -> None:
        """Record the fatal issue once: it holds the component back until cleared (or the next supervisor)."""
        window = self.settings.supervisor_fatal_window_seconds
        child.held = fatal.record(
            self.settings, child.name,
            reason=f"{child.name} crashed {len(child.crashes)} times within {window:.0f} s (last exit code {code}); "
                   f"held back, tried again every {self.settings.supervisor_max_backoff_seconds:g} s",
            detail=tail or "(no output)",
            recovery_tried=f"{len(child.crashes) - 1} restarts with exponential backoff from "
                           f"{self.settings.supervisor_backoff_seconds:g} s",
            client=self.client if child.name != Component.API and self.api_running() else None,
        )

    def _release_cleared(self) -> None:
        """A held-back component whose fatal issue the operator cleared starts again at once, its crash count
        reset; and what the store has not heard of fatal issues is told to it (every FATAL_SYNC_SECONDS)."""
        for child in self.children.values():
            if child.held is not None and held_issue_cleared(self.settings, child.held):
                log.info("the fatal issue of %s was cleared: starting it again", child.name)
                child.held = None
                child.crashes.clear()
                if not child.alive and not child.finished:
                    child.restart_at = time.monotonic()
        if time.monotonic() >= self._next_fatal_sync and self.api_running():
            self._next_fatal_sync = time.monotonic() + FATAL_SYNC_SECONDS
            fatal.sync(self.settings, self.client)

    # --- restart requests -----------------------------------------------------------------------------------
    def handle_restart_request(self) -> None:
        """var/logs/restart_requested.json {reason, component, at}: restart that component ("all": every one, the
        API first), then delete the request."""
        path = REGISTRY["restart_requested.json"].path(self.settings)
        try:
            request = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except ValueError as exc:
            log.error("restart request unreadable (%s); removed", exc)
            path.unlink(missing_ok=True)
            return
        component = request.get("component")
        targets = list(self.children.values()) if component == "all" else (
            [self.children[component]] if component in self.children else [])
        log.warning("restart requested for %s: %s", component, request.get("reason"))
        if not targets:
            log.warning("%s is not supervised here; request ignored", component)
        for child in targets:  # children are in COMPONENTS order: the API first
            if child.name == Component.API and self.api_external:
                log.warning("the API was not started by this supervisor; restart it where it runs")
                continue
            if child.held is not None:
                log.warning("%s is held back by a fatal issue: fix the cause, then coherence fatal --clear starts it",
                            child.name)
                continue
            self.stop_children([child])
            child.finished = False
            self.start(child)
        if component == "all":  # every child now runs the code on disk; without this stale_version would loop
            self._write_version(source_sha_on_disk())
        path.unlink(missing_ok=True)

    def _write_version(self, git_sha: str | None) -> None:
        """pipeline_version.json: the code the children were started from (the monitor's stale_version input)."""
        write_json_atomic(REGISTRY["pipeline_version.json"].path(self.settings), {
            "version": __version__, "git_sha": git_sha, "started_at": datetime.now(UTC).isoformat(),
            "supervisor_pid": os.getpid(), "components": list(self.children)})

    # --- the loop -------------------------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        if not self.stopping.is_set():
            log.info("signal %s: stopping the pipeline", signum)
        self.stopping.set()

    def run(self) -> int:
        """Supervise until stopped; 1 when another supervisor holds the lock (nothing is touched then)."""
        try:
            with hold(self.settings, SELF):
                return self._supervise()
        except AlreadyRunning as exc:
            log.error("a %s", exc)
            return 1

    def _supervise(self) -> int:
        self._write_version(running_version()["git_sha"])
        _log_lines(kill_orphaned_task_groups(self.settings))  # tasks of runners that died with a previous pipeline
        committer = None
        if self.settings.pipeline_auto_commit:
            committer = threading.Thread(target=self._commit_loop, name="auto-commit", daemon=True)
            committer.start()
        try:
            busy = self._bind_api_port()
            if busy:
                log.error("%s: nothing started. Free the port (coherence stop --port %d, if it is a stray API of "
                          "yours) or choose another with COHERENCE_API_PORT", busy, self.settings.coherence_api_port)
                self.exit_code = 2
                return self.exit_code
            for child in self.children.values():
                if not self.stopping.is_set():
                    self.start(child)
            self._say_where_to_look()
            while not self.stopping.is_set():
                self._tick()
                self._announce_backlog_done()
                if all(c.finished for c in self.children.values()):
                    log.info("every component has finished")
                    break
                self.stopping.wait(TICK_SECONDS)
        finally:
            self.stopping.set()  # also when every component finished: ends the auto-commit thread
            api = [c for c in self.children.values() if c.name == Component.API]
            self.stop_children([c for c in self.children.values() if c.name != Component.API])
            self.stop_children(api)  # last: the others release their tasks through it
            if self.api_socket is not None:
                self.api_socket.close()
            _log_lines(kill_orphaned_task_groups(self.settings))
            if committer is not None:
                committer.join(GIT_TIMEOUT_SECONDS)  # a git command under way ends by its timeout at the latest
            self.client.close()
            log.info("supervisor stopped (exit %d)", self.exit_code)
        return self.exit_code

    def _bind_api_port(self) -> str | None:
        """Bind the API's port for every API this supervisor starts (see the module docstring); why not, when it is
        held by something that is not a Coherence API (a foreign server would make the API crash-loop into a
        fatal issue). None too when a Coherence API already answers there: that one is used, not supervised."""
        host, port = self.settings.coherence_api_host, self.settings.coherence_api_port
        if "api" not in self.children or self.api_answers():
            return None
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self.api_socket = socket.create_server((host, port), family=family, backlog=API_BACKLOG)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return f"cannot bind {host}:{port}: {exc.strerror or exc}"
            found = listener(port)
            who = f"pid {found.pid} ({found.command[:120]})" if found else "another user's process"
            return f"port {port} is held by {who}, which does not answer as a Coherence API"
        return None

    def _say_where_to_look(self) -> None:
        """The operator's next steps, once everything is started (make run shows this log on its terminal)."""
        base = self.client.base_url
        log.info("pipeline running: API %s (reference %s/docs); watch it: coherence status --watch, or in a "
                 "browser: %s/ (the console); logs: %s; stop: Ctrl-C or coherence stop", base, base, base,
                 self.settings.logs_dir)

    def _announce_backlog_done(self) -> None:
        """One line when the project manager reports every backlog item settled (again after the backlog grows)."""
        if Component.MANAGER not in self.children or time.monotonic() < self._next_backlog_check \
                or not self.api_running():
            return
        self._next_backlog_check = time.monotonic() + BACKLOG_CHECK_SECONDS
        try:
            manager = self.client.pipeline_status().project_manager
        except ApiError:
            return
        info = manager.info if manager is not None and manager.info else {}
        settled = bool(info.get("settled"))
        if settled and not self._backlog_announced:
            counts = ", ".join(f"{status} {n}" for status, n in sorted(info.get("by_status", {}).items()))
            log.info("backlog done: %s items (%s); details: coherence status", info.get("items"), counts)
        self._backlog_announced = settled

    def _commit_loop(self) -> None:
        """Auto-commit, off the supervision loop: git may take up to its timeout or fail (gitops logs that to
        commit_progress.log, this log and auto_commit.json); nothing it raises stops the pipeline."""
        with ApiClient(settings=self.settings, retries=0, timeout=10.0) as client:
            watcher = CompletedTaskWatcher(self.settings, client)
            while not self.stopping.wait(COMMIT_POLL_SECONDS):
                try:
                    watcher.poll()
                except Exception:  # a bug in auto-commit is logged and retried, never fatal to the pipeline
                    log.exception("auto-commit pass failed; next pass in %g s", COMMIT_POLL_SECONDS)

    def _tick(self) -> None:
        for child in self.children.values():
            if child.proc is not None and child.restart_at is None and not child.finished and not child.alive:
                self._exited(child)
                if self.stopping.is_set():
                    return
        self._release_cleared()
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None and now >= child.restart_at:
                self.start(child)
        self.handle_restart_request()


def _log_output(name: str, code: int, tail: str) -> None:
    """A child's exit and its last output, each line a record of its own: one clock (ours) opens every line of
    supervisor.log, so its lines stay in time order; the child's own log lines, quoted after ``name |``, keep theirs
    (they were written before the exit, some long before)."""
    lines = tail[-TAIL_CHARS:].splitlines()
    log.warning("%s exited with %s%s", name, code, "; its last output:" if lines else " (no output)")
    for line in lines:
        log.warning("%s | %s", name, line)


def _log_lines(lines: list[str]) -> None:
    for line in lines:
        log.warning("%s", line)
