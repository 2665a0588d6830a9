"""Single instance per host, by a lock the kernel releases, and PID files under var/run/ for operators.

A component runs only while it holds an exclusive ``flock`` on ``var/run/<component>.lock``; the lock is kept open
for the life of the process, so the kernel releases it however the process ends (even SIGKILL), and two processes
racing for it can never both win. What the process spawns does not inherit it (Python opens files close-on-exec), so
a task left running never keeps a dead runner's lock. Only the holder writes ``<component>.pid`` (after winning),
so a loser neither runs nor touches the winner's PID file. What runs is decided by the lock, never by a pid read
from a file: a pid in a stale file may belong to any process by now.

The supervisor starts each child as ``python -m coherence_network.cli.supervised <component> <supervisor pid>
<coherence command ...>`` (``run_as``): the child itself takes its lock and owns its PID file, whatever command it
runs, and ends with its supervisor. Several runners may run per home: only the supervised runner holds
``agent_runner``, and every runner, however started, holds its own ``runners/<pid>.lock`` (``hold_instance``), so
`coherence stop` finds them all.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from coherence_network.errors import CoherenceError
from coherence_network.logfiles import RUN_FILES
from coherence_network.settings import Settings, get_settings

# A probe (``holder``) holds a shared lock for microseconds; a starting process retries this long so that a probe
# can never make it lose. A real holder keeps the lock for its whole life, so the loser of a real race still loses.
PROBE_TOLERANCE_SECONDS = 0.2
PR_SET_PDEATHSIG = 1  # linux/prctl.h
RUNNERS = RUN_FILES["runners/"].name.rstrip("/")  # the instance locks of every runner on this host
SUPERVISOR = "supervisor"  # the lock of the supervisor (one per COHERENCE_HOME)

_held: dict[str, int] = {}  # component -> the open lock file this process holds until it exits


class AlreadyRunning(CoherenceError, RuntimeError):
    """Another process holds the component's lock."""

    def __init__(self, component: str, pid: int | None) -> None:
        super().__init__(f"{component} already runs (pid {pid or 'not recorded yet'}); stop it first: coherence stop")
        self.component, self.pid = component, pid


def pid_path(settings: Settings, component: str) -> Path:
    return RUN_FILES["{component}.pid"].path(settings, component=component)


def lock_path(settings: Settings, component: str) -> Path:
    return RUN_FILES["{component}.lock"].path(settings, component=component)


def write_pid(settings: Settings, component: str) -> Path:
    """Record this process's pid atomically (a reader never sees half a file)."""
    path = pid_path(settings, component)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)
    return path


def read_pid(settings: Settings, component: str) -> int | None:
    """The recorded pid if the file exists and holds a number, else None. A hint for people, not proof of life."""
    try:
        return int(pid_path(settings, component).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def remove_pid(settings: Settings, component: str, pid: int | None = None) -> None:
    """Remove the PID file, but only if it still names ``pid`` (default: this process)."""
    if read_pid(settings, component) == (pid or os.getpid()):
        pid_path(settings, component).unlink(missing_ok=True)


def _pid_in(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except ValueError:
        return None


def _lock(settings: Settings, component: str) -> int:
    """The open, exclusively locked lock file, with this pid written in it; raises AlreadyRunning."""
    path = lock_path(settings, component)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # never truncated or removed: see the module docstring
    deadline = time.monotonic() + PROBE_TOLERANCE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                pid = _pid_in(fd)
                os.close(fd)
                raise AlreadyRunning(component, pid) from None
            time.sleep(0.01)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextmanager
def hold(settings: Settings, component: str) -> Iterator[None]:
    """Run as the single instance of ``component``: take its lock (or raise AlreadyRunning, touching nothing), write
    its PID file, and on the way out remove the PID file, then release the lock. Re-entrant within a process (the
    supervised API holds it through the wrapper, and `coherence api` asks again)."""
    if component in _held:
        yield
        return
    fd = _lock(settings, component)
    _held[component] = fd
    try:
        write_pid(settings, component)
        yield
    finally:
        remove_pid(settings, component)
        del _held[component]
        os.close(fd)


@contextmanager
def hold_instance(settings: Settings, group: str) -> Iterator[None]:
    """Run as one of several instances of ``group`` (runners: several may run per COHERENCE_HOME): hold the lock
    ``var/run/{group}/{pid}.lock`` for this process's life, so `coherence stop` finds every instance, however it was
    started. The file goes when the process ends; a killed one's is removed by the next `coherence stop`."""
    name = f"{group}/{os.getpid()}"
    fd = _lock(settings, name)
    try:
        yield
    finally:
        lock_path(settings, name).unlink(missing_ok=True)  # named by our pid: nobody else ever locks it
        os.close(fd)


def instances(settings: Settings, group: str) -> list[str]:
    """The names (``group/pid``) of every instance lock of ``group``, held or left behind."""
    return sorted(f"{group}/{path.stem}" for path in (settings.run_dir / group).glob("*.lock"))


def holder(settings: Settings, component: str) -> int | None:
    """The pid of the process holding ``component``'s lock, or None when none does (whatever a PID file says).
    0 when it is held but the holder has not written its pid yet."""
    if component in _held:
        return os.getpid()
    try:
        fd = os.open(lock_path(settings, component), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close below
    except BlockingIOError:
        return _pid_in(fd) or read_pid(settings, component) or 0
    finally:
        os.close(fd)
    return None


def components(settings: Settings) -> set[str]:
    """Every component with a lock or a PID file on this host (running or not)."""
    return {p.stem for p in settings.run_dir.glob("*.lock")} | {p.stem for p in settings.run_dir.glob("*.pid")}


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies, however it dies (SIGKILL, the OOM killer): a supervised child must
    not outlive its supervisor, or it would keep its lock and a new supervisor could not start it again.

    Linux's PR_SET_PDEATHSIG fires when the thread that forked us ends; the supervisor forks its children from its
    main thread, which lives as long as it does. Exits at once if the parent is already gone (the race before prctl).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        sys.exit(f"the supervisor (pid {parent}) is gone; not starting")


def run_as(component: str, main: Callable[[list[str]], object], argv: list[str], parent: int | None = None) -> None:
    """``main(argv)`` (the ``coherence`` CLI) as the single instance of ``component``; exits with the command's exit
    code, or 1 (saying who holds the lock) when another process runs it. With ``parent``, it also ends when that
    dies. The CLI is passed in (by coherence_network.cli.supervised), not imported: the CLI imports this module."""
    if parent is not None:
        die_with_parent(parent)
    try:
        with hold(get_settings(), component):
            main(argv)
    except AlreadyRunning as exc:
        sys.exit(str(exc))
    except SystemExit as exc:
        _exit_now(exc.code)


def _exit_now(code: str | int | None) -> None:
    """Exit with ``code`` without the interpreter's teardown when nothing is left to wait for (no thread but this
    one): freeing every object of the API took 0.4-0.9 s, measured, and its supervisor restarts it only once the
    process is gone, while clients wait. The lock and PID file are released already; the logs are flushed here."""
    if any(not t.daemon and t is not threading.main_thread() for t in threading.enumerate()):
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
