"""Following logs for `coherence logs`: a component's file under var/logs like ``tail -F`` (it survives rotation),
and a task's log through the API, so it works from any host, until the task is settled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from coherence_network.client import ApiClient
from coherence_network.contract import ACTIVE_STATUSES, Task
from coherence_network.logfiles import REGISTRY

POLL_SECONDS = 0.5


def component_logs() -> dict[str, Path]:
    """Component name -> its log's name under var/logs, from the registry (``api``, ``agent_runner``...)."""
    return {name.removesuffix(".log"): Path(name) for name, f in REGISTRY.items() if f.kind == "log"}


def last_lines(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text`` (all with 0), ending with a newline when text has any."""
    if not text:
        return ""
    kept = text.splitlines()[-lines:] if lines else text.splitlines()
    return "\n".join(kept) + "\n"


def follow_file(path: Path, lines: int, emit: Callable[[str], None], poll: float = POLL_SECONDS) -> None:
    """Print the last ``lines`` lines of ``path``, then each new line as it is written, until interrupted.

    Like ``tail -F``: a file that does not exist yet is waited for, and one that was rotated (renamed away, or
    truncated) is read again from its start, so a rotation loses no line. Only whole lines are printed."""
    position, inode, partial = 0, None, ""
    try:
        with path.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            text = handle.read().decode("utf-8", errors="replace")
            position, inode = stat.st_size, stat.st_ino
        whole, _, partial = text.rpartition("\n")
        emit(last_lines(whole, lines) if whole else "")
    except FileNotFoundError:
        pass
    while True:
        time.sleep(poll)
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if stat.st_ino != inode or stat.st_size < position:  # rotated or truncated: a new file, from its start
            position, inode, partial = 0, stat.st_ino, ""
        if stat.st_size == position:
            continue
        with path.open("rb") as handle:
            handle.seek(position)
            chunk = handle.read()
        position += len(chunk)
        whole, _, partial = (partial + chunk.decode("utf-8", errors="replace")).rpartition("\n")
        if whole:
            emit(whole + "\n")


def follow_task_log(client: ApiClient, task_id: int, lines: int, emit: Callable[[str], None],
                    poll: float = POLL_SECONDS) -> Task:
    """Print the task's log (its last ``lines`` lines), then what is added, until the task is settled (no longer
    pending or running); returns the task as it ended. The status is read before the log, so the last read holds
    the runner's footer."""
    shown = 0
    first = True
    while True:
        task = client.get_task(task_id)
        text = client.task_log(task_id)
        if len(text) < shown:  # the API switched from the stored tail to the file (or back): start again
            shown = 0
        emit(last_lines(text, lines) if first else text[shown:])
        shown, first = len(text), False
        if task.status not in ACTIVE_STATUSES:
            return task
        time.sleep(poll)
