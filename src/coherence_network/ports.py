"""Which process listens on a TCP port, by identity: the processes whose open sockets listen on it (psutil's
net_connections of each process, which matches the kernel's socket table to its file descriptors; the system-wide
one names a single process per socket, and an API's workers share theirs). Only the operator's own processes can be
inspected, so this can never point at, let alone stop, another user's process; `pkill -f` matched command lines of
everyone's processes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psutil

_PYTHON = re.compile(r"python(?:[0-9]+(?:\.[0-9]+)*)?")
_APP_FACTORY = "coherence_network.api.app:create_app"  # what plain uvicorn is given (the runbook shows it)


@dataclass(frozen=True)
class Listener:
    pid: int
    argv: tuple[str, ...]  # the process's command line, word by word as it was started

    @property
    def command(self) -> str:
        """The command line for people."""
        return " ".join(self.argv)

    @property
    def is_ours(self) -> bool:
        """Runs this project's code, by its whole command line (see coherence_command), not a name in it."""
        return coherence_command(self.argv) is not None


def coherence_command(argv: tuple[str, ...] | list[str]) -> list[str] | None:
    """The `coherence` arguments a process was started with (["api", "--port", "8000"]), or None when it is not a
    coherence process. Recognised, word by word: ``coherence ARGS`` and ``python .../coherence ARGS`` (the console
    script, as the runbook starts it), ``python -m coherence_network.cli ARGS``, the supervisor's ``python -m
    coherence_network.cli.supervised COMPONENT PARENT ARGS``, and ``uvicorn coherence_network.api.app:create_app ...``
    (the API, as ``api``). A word merely containing "coherence" is not enough."""
    words = list(argv)
    if words and _PYTHON.fullmatch(Path(words[0]).name):
        words = words[1:]
        if words[:1] == ["-m"] and len(words) > 1:
            module, words = words[1], words[2:]
            if module in ("coherence_network", "coherence_network.cli"):
                return words
            if module == "coherence_network.cli.supervised":
                return words[2:] if len(words) > 2 else None
            return ["api"] if module == "uvicorn" and _APP_FACTORY in words else None
    if not words:
        return None
    name = Path(words[0]).name
    if name == "coherence":
        return words[1:]
    return ["api"] if name == "uvicorn" and _APP_FACTORY in words[1:] else None


def listener(port: int) -> Listener | None:
    """The process of this user that listens on ``port``, or None (nobody, or someone we may not look at). When
    several hold the socket (an API with --workers: its workers inherit it), the one that started the others. A
    supervisor holds its API's socket across restarts without serving it: the API it started is the listener."""
    holders: dict[int, tuple[Listener, int]] = {}
    for process in psutil.process_iter():
        try:
            with process.oneshot():
                if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                       for c in process.net_connections(kind="tcp")):
                    holders[process.pid] = (Listener(process.pid, tuple(process.cmdline())), process.ppid())
        except psutil.Error:  # gone meanwhile, or another user's
            continue
    serving = {pid: held for pid, held in holders.items()
               if (coherence_command(held[0].argv) or [""])[:1] != ["supervise"]}
    holders = serving or holders
    for found, parent in holders.values():
        if parent not in holders:
            return found
    return next((found for found, _ in holders.values()), None)
