"""Ephemeral loopback ports and waiting for a server to answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
