"""PID files under var/run/: how `coherence stop` finds a component without matching process names."""

from __future__ import annotations

import os
from pathlib import Path

from coherence_network.logfiles import RUN_FILES
from coherence_network.settings import Settings


def pid_path(settings: Settings, component: str) -> Path:
    return RUN_FILES["{component}.pid"].path(settings, component=component)


def write_pid(settings: Settings, component: str, pid: int | None = None) -> Path:
    """Record ``pid`` (default: this process) atomically."""
    path = pid_path(settings, component)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{pid or os.getpid()}\n")
    os.replace(tmp, path)
    return path


def read_pid(settings: Settings, component: str) -> int | None:
    """The recorded pid if the file exists and holds a number, else None."""
    try:
        return int(pid_path(settings, component).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_ours(pid: int) -> bool:
    """True when ``pid`` is alive and runs this project's code (so a recycled pid is never signalled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"coherence" in cmdline


def remove_pid(settings: Settings, component: str, pid: int | None = None) -> None:
    """Remove the PID file, but only if it still names ``pid`` (default: this process)."""
    if read_pid(settings, component) == (pid or os.getpid()):
        pid_path(settings, component).unlink(missing_ok=True)
