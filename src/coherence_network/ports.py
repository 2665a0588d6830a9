"""Which process listens on a TCP port, by identity: the socket's inode in /proc/net/tcp{,6} and the process whose
file descriptors hold it (Linux). Only the operator's own processes can be inspected, so this can never point at,
let alone stop, another user's process; `pkill -f` matched command lines of everyone's processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # TCP state code of a listening socket in /proc/net/tcp


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str  # the process's command line, for people

    @property
    def is_ours(self) -> bool:
        """Runs this project's code (a coherence command or module), not merely something on the port."""
        return "coherence_network" in self.command or Path(self.command.split(" ", 1)[0]).name == "coherence"


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listener(port: int) -> Listener | None:
    """The process of this user that listens on ``port``, or None (nobody, or someone we may not look at)."""
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not sockets:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            held = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or another user's
            continue
        if held & sockets:
            return Listener(int(entry.name), command)
    return None
