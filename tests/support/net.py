"""Ephemeral loopback ports and waiting for a server to answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listens_on(pid: int, port: int) -> bool:
    """Does process ``pid`` (or a child of it) listen on loopback ``port``? A port from ``free_port`` is free only
    until someone binds it: another test's server may take it first and answer in its place."""
    try:
        parent = psutil.Process(pid)
        tree = [parent, *parent.children(recursive=True)]
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                   for process in tree for c in process.net_connections("tcp"))
    except psutil.NoSuchProcess:
        return False


POLL_FIRST = 0.02
POLL_LONGEST = 0.25


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` (each call is a real check, e.g. an HTTP request) until it holds or time runs out.

    The pause between checks grows from 20 ms to a quarter second: a condition that holds soon is seen soon, and a
    long wait (a lease running out, a restart) does not spend the machine's CPU asking the same question 20 times a
    second while the suite's other tests wait for it."""
    deadline = time.monotonic() + timeout
    pause = POLL_FIRST
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(pause)
        pause = min(pause * 1.5, POLL_LONGEST)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
