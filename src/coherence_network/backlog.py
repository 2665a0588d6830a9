"""The backlog file the project manager works through: numbered items ``N. text``, an item ``run: <command>`` being
one command to run rather than phases for an agent. Items are known by their normalised text, so renumbering or
reordering the backlog keeps their progress."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

PHASES = ("spec", "test", "impl", "review")
RUN_PHASE = "run"
_ITEM = re.compile(r"^\s*(\d+)\.\s+(\S.*?)\s*$")
_RUN = re.compile(r"^run:\s*(.*)$", re.IGNORECASE)
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
SLUG_WORDS_CHARS = 40


def normalise(text: str) -> str:
    """The identity of an item: case, spacing and a trailing full stop do not make it another item."""
    return " ".join(text.lower().split()).rstrip(".")


@dataclass(frozen=True)
class BacklogItem:
    number: int
    line: int
    text: str
    command: str | None  # the command of a `run:` item

    @property
    def key(self) -> str:
        return normalise(self.text)

    @property
    def slug(self) -> str:
        """A short name for the item that is safe in a branch, a folder and a URL, and as stable as its key: its
        first words and 8 hex digits of the key's hash (``add-a-login-page-3f2a9c1b``)."""
        words = _NOT_SLUG.sub("-", self.key)[:SLUG_WORDS_CHARS].strip("-") or "item"
        return f"{words}-{hashlib.sha256(self.key.encode()).hexdigest()[:8]}"

    @property
    def phases(self) -> tuple[str, ...]:
        return (RUN_PHASE,) if self.command is not None else PHASES


@dataclass
class Backlog:
    items: list[BacklogItem]
    problems: list[str]  # "line N: why", for lines that were skipped


def parse_backlog(path: Path) -> Backlog:
    """Numbered items ``N. text``; headings and blank lines are fine; anything else is reported and skipped.

    Raises FileNotFoundError when the file is missing."""
    items: list[BacklogItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = _ITEM.match(raw)
        if not match:
            problems.append(f"line {number}: not an item `N. text`: {raw.strip()[:120]!r}")
            continue
        text = match.group(2)
        run = _RUN.match(text)
        command = run.group(1).strip() if run else None
        if run and not command:
            problems.append(f"line {number}: `run:` without a command")
            continue
        item = BacklogItem(int(match.group(1)), number, text, command)
        if item.key in seen:
            problems.append(f"line {number}: same item as line {seen[item.key]}")
            continue
        seen[item.key] = number
        items.append(item)
    return Backlog(items, problems)
