"""`coherence stop`: stop a running pipeline by the locks its components hold, or the coherence process that
listens on a port, and leave nothing behind.

What runs is decided by the locks in var/run/ (pidfiles), never by a pid read from a PID file: only a lock's holder
is signalled; a PID file or runner lock that nobody holds is stale and removed. The supervisor goes first (it stops
its children), then the runners started by hand, the API last (runners release their tasks through it), then every
task process group still recorded (no runner is left to own one).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

from coherence_network.pidfiles import (
    RUNNERS,
    SUPERVISOR,
    components,
    holder,
    instances,
    lock_path,
    read_pid,
    remove_pid,
)
from coherence_network.ports import listener
from coherence_network.settings import Settings
from coherence_network.taskgroups import kill_orphaned_task_groups, start_time

log = logging.getLogger("coherence.supervisor")  # the supervisor stops its children through this module


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


def stop_groups(groups: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
    """Stop process groups led by our children (by name): SIGTERM to each, SIGKILL to what is left of one after
    ``grace`` seconds; returns when every group is gone and each leader reaped."""
    for name, proc in groups.items():
        log.info("stopping %s (pid %d)", name, proc.pid)
        signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for name, proc in groups.items():
        if not wait_group_gone(proc, deadline):
            log.warning("%s did not stop within %.0f s: SIGKILL", name, grace)
            signal_group(proc.pid, signal.SIGKILL)
            wait_group_gone(proc, time.monotonic() + 10)
        proc.wait()


def _terminate(settings: Settings, name: str, pid: int, grace: float) -> str:
    """SIGTERM (to the group when ``pid`` leads one), SIGKILL after ``grace``; done when the lock is released."""
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return "already gone"
    send = (lambda sig: signal_group(pid, sig)) if group else (lambda sig: os.kill(pid, sig))
    send(signal.SIGTERM)
    if _lock_released(settings, name, time.monotonic() + grace):
        return "stopped"
    send(signal.SIGKILL)
    _lock_released(settings, name, time.monotonic() + 10)
    return "killed after the grace period"


def _lock_released(settings: Settings, name: str, deadline: float) -> bool:
    while holder(settings, name) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop_pipeline(settings: Settings, grace: float) -> list[str]:
    """Stop every component whose lock is held in var/run/: the supervisor first (it stops its children), then every
    runner still running (started by hand: each holds its own lock under var/run/runners/), the API last (runners
    release their tasks through it); then kill every recorded task process group (no runner is left to own one).
    Only lock holders are signalled; a PID file or runner lock nobody holds is stale and removed."""
    names = sorted(components(settings) - {"api"}, key=lambda n: (n != SUPERVISOR, n))
    done = [line for name in names if (line := _stop_component(settings, name, grace))]
    done += _stop_runners(settings, grace)
    api = _stop_component(settings, "api", grace)
    return done + ([api] if api else []) + kill_orphaned_task_groups(settings, all_groups=True)


def _stop_component(settings: Settings, name: str, grace: float) -> str | None:
    """Stop the holder of ``name``'s lock; what happened, or None when nothing ran and nothing was stale."""
    pid = holder(settings, name)
    if pid is None:
        stale = read_pid(settings, name)
        if stale is None:
            return None
        remove_pid(settings, name, stale)  # unless a starting holder has just written its own
        return f"{name}: stale PID file removed"
    if pid == 0:
        return f"{name}: starting (its pid is not recorded yet); run coherence stop again"
    wait = grace + settings.supervisor_stop_grace_seconds + 15 if name == SUPERVISOR else grace
    line = f"{name} (pid {pid}): {_terminate(settings, name, pid, wait)}"
    remove_pid(settings, name, pid)  # left behind only by a SIGKILL
    return line


def _stop_runners(settings: Settings, grace: float) -> list[str]:
    """Every runner still holding its instance lock (the supervised one has gone with its supervisor by now)."""
    done: list[str] = []
    for name in instances(settings, RUNNERS):
        pid = holder(settings, name)
        if pid is None:
            lock_path(settings, name).unlink(missing_ok=True)  # its runner was killed: nobody holds it
        elif pid:
            done.append(f"runner (pid {pid}): {_terminate(settings, name, pid, grace)}")
    return done


def stop_port(port: int, grace: float) -> tuple[bool, str]:
    """Stop the coherence process of this user that listens on ``port`` (a stray API): found by the socket it
    holds, never by a name pattern; a process that is not ours is reported, not signalled. (stopped?, what happened)"""
    found = listener(port)
    if found is None:
        return False, f"nothing of yours listens on port {port}"
    if not found.is_ours:
        return False, (f"port {port} is held by pid {found.pid} ({found.command[:160]}), not a coherence process: "
                       "not stopped")
    os.kill(found.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while start_time(found.pid) is not None and time.monotonic() < deadline:  # None: gone, or a zombie
        time.sleep(0.1)
    if start_time(found.pid) is None:
        return True, f"port {port}: pid {found.pid} ({found.command[:160]}) stopped"
    os.kill(found.pid, signal.SIGKILL)
    return True, f"port {port}: pid {found.pid} ({found.command[:160]}) killed after the grace period"

