"""Supervisor (watchdog): starts the API, runner, project manager and monitor as child processes, restarts the ones
that die (exponential backoff), acts on restart requests, turns a component that keeps crashing into a fatal issue,
and on SIGTERM/SIGINT stops everything it started, leaving no process behind.

Each child is ``python -m coherence_network.cli <command>`` in its own process group, so stopping a child stops
everything it spawned; PID files in var/run/ let `coherence stop` find them without matching process names.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO

from coherence_network import __version__, fatal
from coherence_network.client import ApiClient, ApiError
from coherence_network.gitops import CompletedTaskWatcher
from coherence_network.logfiles import REGISTRY, write_json_atomic
from coherence_network.pidfiles import is_ours, pid_path, read_pid, remove_pid, write_pid
from coherence_network.settings import Settings
from coherence_network.versioning import running_version, source_sha_on_disk

log = logging.getLogger("coherence.supervisor")

COMPONENTS = ("api", "agent_runner", "project_manager", "monitor")
CLI_COMMANDS = {"api": "api", "agent_runner": "runner", "project_manager": "pm", "monitor": "monitor"}
SELF = "supervisor"
TICK_SECONDS = 0.2
COMMIT_POLL_SECONDS = 2.0
API_START_SECONDS = 60.0
STDERR_LINES = 30


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
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    finished: bool = False
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_LINES))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _drain(stream: IO[bytes], tail: deque[str]) -> None:
    """Keep the last lines a child wrote to stderr: the reason it died, for the log and fatal issues."""
    for raw in stream:
        tail.append(raw.decode("utf-8", errors="replace").rstrip())
    stream.close()


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait until no process of the child's group is left (the leader reaped, whatever it spawned gone too)."""
    while True:
        proc.poll()  # reap the leader, or its zombie keeps the group alive
        if not signal_group(proc.pid, 0):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


class Supervisor:
    def __init__(self, settings: Settings, options: SupervisorOptions) -> None:
        self.settings = settings
        self.options = options
        self.stopping = threading.Event()
        self.exit_code = 0
        self.client = ApiClient(settings=settings, retries=0, timeout=2.0)
        self.api_external = False
        self.children: dict[str, Child] = {
            name: Child(name, [sys.executable, "-m", "coherence_network.cli", CLI_COMMANDS[name],
                               *options.args.get(name, [])])
            for name in COMPONENTS if name in options.components
        }
        self.committer = CompletedTaskWatcher(settings, self.client) if settings.pipeline_auto_commit else None

    # --- children -------------------------------------------------------------------------------------------
    def api_answers(self) -> bool:
        try:
            self.client.request("GET", "/api/health", retries=0)
        except ApiError:
            return False
        return True

    def start(self, child: Child) -> None:
        child.restart_at = None
        child.stderr_tail.clear()
        child.proc = subprocess.Popen(child.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True)
        assert child.proc.stderr is not None
        threading.Thread(target=_drain, args=(child.proc.stderr, child.stderr_tail), daemon=True).start()
        write_pid(self.settings, child.name, child.proc.pid)
        log.info("started %s (pid %d): %s", child.name, child.proc.pid, " ".join(child.argv[3:]))
        if child.name == "api":
            self._wait_api(child)

    def _wait_api(self, child: Child) -> None:
        """Dependents start once the API answers (or the API died, which the loop handles)."""
        deadline = time.monotonic() + API_START_SECONDS
        while child.alive and time.monotonic() < deadline and not self.stopping.is_set():
            if self.api_answers():
                log.info("API answers at %s", self.client.base_url)
                return
            time.sleep(0.1)

    def stop_children(self, children: list[Child]) -> None:
        """SIGTERM to each group, SIGKILL to what is left after the grace period; reaps and removes PID files."""
        running = [c for c in children if c.alive]
        for child in running:
            assert child.proc is not None
            log.info("stopping %s (pid %d)", child.name, child.proc.pid)
            signal_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.supervisor_stop_grace_seconds
        for child in running:
            assert child.proc is not None
            if not wait_group_gone(child.proc, deadline):
                log.warning("%s did not stop within %.0f s: SIGKILL", child.name,
                            self.settings.supervisor_stop_grace_seconds)
                signal_group(child.proc.pid, signal.SIGKILL)
                wait_group_gone(child.proc, time.monotonic() + 10)
            child.proc.wait()
            remove_pid(self.settings, child.name, child.proc.pid)

    def _exited(self, child: Child) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        remove_pid(self.settings, child.name, child.proc.pid)
        signal_group(child.proc.pid, signal.SIGKILL)  # whatever the dead leader left in its group
        tail = "\n".join(child.stderr_tail)
        if code == 0:
            log.info("%s finished (exit 0)", child.name)
            child.finished = True
        else:
            log.warning("%s exited with %s; last output:\n%s", child.name, code, tail[-2000:] or "(none)")
        if child.name == "project_manager" and self.options.stop_when_manager_exits:
            log.info("the project manager is done (exit %s): stopping the pipeline", code)
            self.exit_code = code if code >= 0 else 1
            self.stopping.set()
            return
        if child.finished or self.stopping.is_set():
            return
        if not self.options.restart:
            log.info("%s is not restarted (--no-restart)", child.name)
            child.finished = True
            self.exit_code = 1
            return
        now = time.monotonic()
        child.crashes.append(now)
        while child.crashes and now - child.crashes[0] > self.settings.supervisor_fatal_window_seconds:
            child.crashes.popleft()
        if len(child.crashes) >= self.settings.supervisor_fatal_restarts:
            self._fatal(child, code, tail)
            return
        delay = min(self.settings.supervisor_backoff_seconds * 2 ** (len(child.crashes) - 1),
                    self.settings.supervisor_max_backoff_seconds)
        child.restart_at = now + delay
        log.info("restarting %s in %.1f s (crash %d of %d allowed in %.0f s)", child.name, delay, len(child.crashes),
                 self.settings.supervisor_fatal_restarts, self.settings.supervisor_fatal_window_seconds)

    def _fatal(self, child: Child, code: int, tail: str) -> None:
        window = self.settings.supervisor_fatal_window_seconds
        fatal.record(
            self.settings, child.name,
            reason=f"{child.name} exited {len(child.crashes)} times within {window:.0f} s (last exit code {code})",
            detail=tail or "(no output)",
            recovery_tried=f"{len(child.crashes) - 1} restarts with exponential backoff from "
                           f"{self.settings.supervisor_backoff_seconds:g} s",
            client=self.client if child.name != "api" else None,
        )
        self.exit_code = 1
        self.stopping.set()

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
            if child.name == "api" and self.api_external:
                log.warning("the API was not started by this supervisor; restart it where it runs")
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
            "version": __version__, "git_sha": git_sha, "started_at": datetime.now(timezone.utc).isoformat(),
            "supervisor_pid": os.getpid(), "components": list(self.children)})

    # --- the loop -------------------------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        if not self.stopping.is_set():
            log.info("signal %s: stopping the pipeline", signum)
        self.stopping.set()

    def run(self) -> int:
        other = read_pid(self.settings, SELF)
        if other and other != os.getpid() and is_ours(other):
            log.error("a supervisor already runs (pid %d); stop it first: coherence stop", other)
            return 2
        write_pid(self.settings, SELF)
        self._write_version(running_version()["git_sha"])
        try:
            self._start_all()
            next_commit_poll = time.monotonic()
            while not self.stopping.is_set():
                self._tick()
                if self.committer is not None and time.monotonic() >= next_commit_poll:
                    self.committer.poll()
                    next_commit_poll = time.monotonic() + COMMIT_POLL_SECONDS
                if all(c.finished for c in self.children.values()):
                    log.info("every component has finished")
                    break
                self.stopping.wait(TICK_SECONDS)
        finally:
            api = [c for c in self.children.values() if c.name == "api"]
            self.stop_children([c for c in self.children.values() if c.name != "api"])
            self.stop_children(api)  # last: the others release their tasks through it
            self.client.close()
            remove_pid(self.settings, SELF)
            log.info("supervisor stopped (exit %d)", self.exit_code)
        return self.exit_code

    def _start_all(self) -> None:
        api = self.children.get("api")
        if api is not None and self.api_answers():
            log.info("an API already answers at %s: using it, not starting one", self.client.base_url)
            self.api_external, api.finished = True, True
        for child in self.children.values():
            if not child.finished and not self.stopping.is_set():
                self.start(child)

    def _tick(self) -> None:
        for child in self.children.values():
            if child.proc is not None and child.restart_at is None and not child.finished and not child.alive:
                self._exited(child)
                if self.stopping.is_set():
                    return
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None and now >= child.restart_at:
                self.start(child)
        self.handle_restart_request()


# --- coherence stop ---------------------------------------------------------------------------------------------
def _terminate(pid: int, grace: float) -> str:
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return "already gone"
    send = (lambda sig: signal_group(pid, sig)) if group else (lambda sig: os.kill(pid, sig))
    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_ours(pid):  # gone (a zombie or a recycled pid no longer runs our code either)
            return "stopped"
        time.sleep(0.1)
    send(signal.SIGKILL)
    return "killed after the grace period"


def stop_pipeline(settings: Settings, grace: float) -> list[str]:
    """Stop what the PID files in var/run/ name: the supervisor first (it stops its children), then anything left,
    the API last. Only live processes running this project's code are signalled; stale PID files are removed."""
    names = sorted((p.stem for p in settings.run_dir.glob("*.pid")), key=lambda n: (n != SELF, n == "api", n))
    done: list[str] = []
    for name in names:
        path = pid_path(settings, name)
        if not path.exists():  # removed meanwhile by the supervisor that stopped it
            continue
        pid = read_pid(settings, name)
        if pid is None or not is_ours(pid):
            path.unlink(missing_ok=True)
            done.append(f"{name}: stale PID file removed")
            continue
        wait = grace + settings.supervisor_stop_grace_seconds + 15 if name == SELF else grace
        done.append(f"{name} (pid {pid}): {_terminate(pid, wait)}")
        if read_pid(settings, name) == pid:
            path.unlink(missing_ok=True)
    return done
