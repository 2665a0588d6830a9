"""Task process groups that never outlive their runner, and the per-host record of them.

Why this mechanism:

- Each task starts through a guard (this file, run as a script): the guard leads the task's own session and process
  group (pgid == guard pid), starts the task in it, and holds one end of a "lifeline" socket whose other end only
  the runner holds. However the runner dies (SIGKILL of it or of its whole process group, from any of its
  threads), the kernel closes the runner's end; the guard reads EOF and stops the whole group: TERM, then KILL
  after the grace, grandchildren included. PR_SET_PDEATHSIG would not do: it fires on the death of the thread that
  forked, and reaches only the direct child, never the agent CLI's own children; cgroups need privileges a runner
  does not have everywhere.
- Each group has a record, ``var/run/task_groups/<pgid>.json`` (task, run, runner pid and the start times of the
  runner and the guard), written before the task starts and removed once the group is gone. It covers what the
  lifeline cannot: a guard killed along with its runner, or a frozen runner whose lease ran out while its run goes
  on. A starting runner (and ``coherence stop``, and the supervisor) kills recorded groups whose runner is dead,
  and a runner stops any recorded group still running a task before it starts that task again. A process is known
  by its pid *and* its start time, so a recycled pid is never signalled.
- The guard passes the task through unchanged: its stdout and stderr are the task's, and it exits with the task's
  exit code, or dies of the task's signal.

Processes are looked at through psutil (imported when first needed: the guard starts with the standard library
only), start times excepted (``start_time``); a zombie counts as gone. A process that leaves the group on purpose
(``setsid``) is out of reach, as it is for any process-group kill.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coherence_network.errors import CoherenceError

if TYPE_CHECKING:  # the guard runs this file as a script and must start fast: standard library only at import
    from coherence_network.contract import Task
    from coherence_network.settings import Settings

POLL_SECONDS = 0.05
KILL_WAIT_SECONDS = 10.0  # after SIGKILL only a process stuck in the kernel (state D) can linger
GO, STARTED, FAILED = b"go\n", "started", "error "
GONE = frozenset({"zombie", "dead"})  # psutil.STATUS_ZOMBIE and STATUS_DEAD: a process that no longer runs


class NewerRunRecorded(CoherenceError):
    """A run of the same task from a newer claim is recorded on this host: the claim at hand must not start."""


class TaskStartError(CoherenceError, OSError):
    """The guard could not start the task (for instance the program does not exist); the message is the OS's."""


# --- processes -------------------------------------------------------------------------------------------------
def start_time(pid: int) -> int | None:
    """When a live process started, in clock ticks since boot: with the pid, what identifies it. None when it is
    gone or a zombie.

    Read from /proc/<pid>/stat, the one place psutil does not replace here: its public create_time adds the boot
    time, which follows the wall clock (an NTP step moves it), while a start time is compared with one recorded by
    another process, possibly long before, and must match exactly."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0].decode() in "ZX" else int(fields[19])


def members(pgids: Iterable[int], *, spare: int = 0) -> list[int]:
    """Live (non-zombie) processes in any of these process groups, except ``spare``."""
    import psutil

    wanted = set(pgids)
    found = []
    for process in psutil.process_iter():
        if process.pid == spare:
            continue
        try:
            if os.getpgid(process.pid) in wanted and process.status() not in GONE:
                found.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):  # gone meanwhile
            continue
    return found


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pgids: Sequence[int], seconds: float, spare: int) -> list[int]:
    deadline = time.monotonic() + seconds
    left = members(pgids, spare=spare)
    while left and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        left = members(pgids, spare=spare)
    return left


def stop_groups(pgids: Sequence[int], grace: float, *, spare: int = 0) -> list[int]:
    """TERM every process of these groups, KILL what is left after ``grace`` seconds, and wait until all are gone.

    ``spare`` is a process left out (the guard stopping its own group). Returns what could not be killed."""
    if not pgids:
        return []
    _signal_all(members(pgids, spare=spare), signal.SIGTERM)
    left = _wait_gone(pgids, grace, spare)
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while left and time.monotonic() < deadline:  # KILL again what forked meanwhile
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(pgids, POLL_SECONDS * 4, spare)
    return left


# --- the guard (this file as a script) ----------------------------------------------------------------------------
def _ignore(_signum: int, _frame: object) -> None:
    """A TERM sent to the group is meant for the task: the guard lives on to report how the task ended."""


def guard(lifeline: int, grace: float, records: Path, argv: list[str]) -> int:
    """Start the task when the runner says go, stop the group when the runner goes; returns the task's status."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)  # a handler, not SIG_IGN: the task must not inherit an ignored signal
    if _receive(lifeline, len(GO)) != GO:
        (records / f"{os.getpid()}.json").unlink(missing_ok=True)
        return 0  # the runner went before the task started
    try:
        task = subprocess.Popen(argv, stdin=subprocess.DEVNULL)  # close_fds: the task never holds the lifeline
    except OSError as exc:
        _tell(lifeline, f"{FAILED}{exc}\n")
        return 127
    runner_there = _tell(lifeline, f"{STARTED}\n")  # False: the runner died between its go and now
    ended = os.pidfd_open(task.pid)
    while runner_there and task.poll() is None:
        ready, _, _ = select.select([lifeline, ended], [], [])
        if lifeline in ready and not _receive(lifeline, 64):  # EOF: the runner is gone, however it died
            runner_there = False
    if not runner_there:
        stop_groups([os.getpgrp()], grace, spare=os.getpid())
        (records / f"{os.getpid()}.json").unlink(missing_ok=True)
    status = task.wait()
    stop_groups([os.getpgrp()], 0.0, spare=os.getpid())  # whatever the task left running goes with it
    return status


def _receive(lifeline: int, size: int) -> bytes:
    """What the runner sent; b"" once it is gone (EOF, or the connection reset by its death)."""
    try:
        return os.read(lifeline, size)
    except OSError:
        return b""


def _tell(lifeline: int, text: str) -> bool:
    """Send the runner a line; False when it is gone (its end closed: EPIPE), which must not end the guard: the
    guard then stops the task, which would otherwise run on without its runner."""
    try:
        os.write(lifeline, text.encode())
    except OSError:
        return False
    return True


def _exit_as(status: int) -> None:
    """Exit as the task did: the same code, or death by the same signal."""
    if status < 0:
        try:
            signal.signal(-status, signal.SIG_DFL)  # ours or Python's (SIGPIPE is ignored by Python) alike
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP take no handler: nothing to reset
        os.kill(os.getpid(), -status)
        time.sleep(1)  # the signal arrives here; a signal that does not end a process falls through
    sys.exit(status if status >= 0 else 128 - status)


# --- the runner's side ------------------------------------------------------------------------------------------
class TaskGroup:
    """A task started through a guard: its process group, the lifeline that ends it with the runner, its record."""

    def __init__(
        self, argv: list[str], settings: Settings, task: Task, runner_id: str, *,
        cwd: Path, env: dict[str, str], before_start: Callable[[], None] = lambda: None,
    ) -> None:
        """Start the guard, record the group, then (``before_start()`` permitting: it raises to call the start
        off, and the guard goes without starting anything) tell the guard to start the task."""
        from coherence_network.logfiles import RUN_FILES, operator_umask, write_json_atomic

        records = RUN_FILES["task_groups/"].path(settings)
        records.mkdir(parents=True, exist_ok=True)
        self.lifeline, theirs = socket.socketpair()
        try:
            guard_argv = [sys.executable, "-I", __file__, str(theirs.fileno()),
                          str(settings.agent_kill_grace_seconds), str(records), "--", *argv]
            self.proc = subprocess.Popen(
                guard_argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(theirs.fileno(),),
                umask=operator_umask(),  # the runner's own is private (see logfiles); the workspace keeps the usual
            )
        except BaseException:
            self.lifeline.close()
            raise
        finally:
            theirs.close()
        self.pgid = self.proc.pid
        self.record = records / f"{self.pgid}.json"
        try:
            write_json_atomic(self.record, {
                "pgid": self.pgid, "guard_start": start_time(self.pgid), "task_id": task.id,
                "claim_token": task.claim_token, "runner_id": runner_id, "runner_pid": os.getpid(),
                "runner_start": start_time(os.getpid()), "started_at": datetime.now(UTC).isoformat(),
            })
            before_start()
            self.lifeline.sendall(GO)
            answer = self._answer()
        except BaseException:
            self.close()
            raise
        if answer != STARTED:
            self.close()
            raise TaskStartError(answer.removeprefix(FAILED) if answer else
                                 f"the task guard exited with {self.proc.returncode} before starting it")

    def _answer(self) -> str:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.lifeline.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode("utf-8", errors="replace").strip()

    def stop(self, grace: float) -> None:
        """TERM the whole group, KILL what is left after ``grace`` seconds."""
        stop_groups([self.pgid], grace)

    def close(self) -> None:
        """After the guard: stop whatever is left, cut the lifeline, drop the record."""
        self.lifeline.close()  # a guard still running stops its group now
        self.proc.wait()
        stop_groups([self.pgid], 0.0)
        self.record.unlink(missing_ok=True)


# --- recorded groups ----------------------------------------------------------------------------------------------
def _running(record: dict[str, Any]) -> bool:
    """Is the recorded group still there, and is it the one recorded (not a recycled pid)?"""
    pgid = int(record["pgid"])
    leader = start_time(pgid)
    if leader is not None:
        return leader == record.get("guard_start")
    return bool(members([pgid]))  # the guard is gone; the pgid stays taken while any member lives


def runner_alive(record: dict[str, Any]) -> bool:
    started = start_time(int(record["runner_pid"]))
    return started is not None and started == record.get("runner_start")


def _recorded(settings: Settings) -> list[dict[str, Any]]:
    """The readable records of this host's task groups, running or not."""
    from coherence_network.logfiles import RUN_FILES

    found = []
    for path in sorted(RUN_FILES["task_groups/"].path(settings).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            continue
        if isinstance(record, dict) and "pgid" in record:
            found.append(record)
    return found


def _stop_recorded(settings: Settings, chosen: Callable[[dict[str, Any]], bool], why: str) -> list[str]:
    """Stop the recorded groups ``chosen`` picks and wait until they are gone; drop records of groups that are."""
    from coherence_network.logfiles import RUN_FILES

    targets: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(RUN_FILES["task_groups/"].path(settings).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            running = _running(record)
        except FileNotFoundError:
            continue  # its runner removed it meanwhile
        except (ValueError, KeyError, TypeError):
            running = False  # unreadable: nothing safe to signal
        if not running:
            path.unlink(missing_ok=True)
        elif chosen(record):
            targets.append((path, record))
    left = stop_groups([int(record["pgid"]) for _, record in targets], settings.agent_kill_grace_seconds)
    done = []
    for path, record in targets:
        pgid = int(record["pgid"])
        still = members([pgid]) if left else []
        if not still:
            path.unlink(missing_ok=True)
        done.append(f"task {record['task_id']} (run {record['claim_token']}): process group {pgid} of runner "
                    f"{record['runner_id']} (pid {record['runner_pid']}) "
                    + (f"could not be killed: {still} remain" if still else f"killed ({why})"))
    return done


def kill_orphaned_task_groups(settings: Settings, *, all_groups: bool = False) -> list[str]:
    """Kill recorded task process groups whose runner is gone (``all_groups``: every recorded one), wait until they
    are gone and drop their records; one line per group acted on."""
    return _stop_recorded(settings, lambda record: all_groups or not runner_alive(record),
                          "every task group" if all_groups else "its runner is gone")


def stop_previous_runs(settings: Settings, task_id: int, claim_token: int) -> list[str]:
    """Before a task's claim ``claim_token`` starts: stop any recorded group on this host still running an earlier
    run of it (an older claim token: a frozen runner's). A group of the same or a newer claim is the current run of
    the task and is never stopped: the claim about to start is the stale one (NewerRunRecorded)."""
    newer = [record for record in _recorded(settings) if record.get("task_id") == task_id
             and int(record.get("claim_token") or 0) >= claim_token and _running(record)]
    if newer:
        raise NewerRunRecorded(f"run {newer[0].get('claim_token')} of task {task_id} is running on this host "
                               f"(process group {newer[0].get('pgid')}); run {claim_token} is stale")
    return _stop_recorded(settings, lambda record: record.get("task_id") == task_id
                          and int(record.get("claim_token") or 0) < claim_token, "the task runs again")


if __name__ == "__main__":
    _fd, _grace, _records, _dash, *_argv = sys.argv[1:]
    _exit_as(guard(int(_fd), float(_grace), Path(_records), _argv))
