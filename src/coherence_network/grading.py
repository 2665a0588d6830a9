"""How serious a flag is, and who is alive: the grading every view shares (status, doctor, the console, /metrics,
Telegram). Pure and free of the store, so the CLI's views import it cheaply; coherence_network.health applies it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coherence_network.contract import Severity

# Registry row states: heartbeating; said it stopped on its way out (info.stopped: why); silent past its limit.
ALIVE, STOPPED, DEAD = "alive", "stopped", "dead"

SEVERITIES = tuple(Severity)  # most serious first


@dataclass(frozen=True)
class Grade:
    """What a severity means in every view."""

    attention: bool  # a person must act: status and doctor exit 1, Telegram alerts
    health: float  # the goal figure's health term while this is the worst open severity
    label: str  # how status, doctor and the console name it


GRADES: dict[str, Grade] = {  # by Severity; keyed by text, as flags and issues carry it
    Severity.CRITICAL: Grade(True, 0.0, "ATTENTION"),
    Severity.HIGH: Grade(True, 0.5, "ATTENTION"),
    Severity.MEDIUM: Grade(False, 0.75, "WARNING"),
    Severity.LOW: Grade(False, 1.0, "INFO"),
}


def grade(severity: str) -> Grade:
    """The grade of a severity; an unknown one (a newer monitor's) counts as high rather than being ignored."""
    return GRADES.get(severity.lower(), GRADES[Severity.HIGH])


def needs_attention(items: Iterable[dict[str, Any]]) -> bool:
    """Whether any flag or issue (anything with a ``severity``) needs a person: the exit code of status and doctor."""
    return any(grade(i["severity"]).attention for i in items)


def health_term(items: Iterable[dict[str, Any]], fatal: int) -> float:
    """The goal figure's health: 1 with nothing open (or only low), the worst open grade's figure otherwise, 0 with a
    fatal issue."""
    return 0.0 if fatal else min((grade(i["severity"]).health for i in items), default=1.0)


def state_of(row: dict[str, Any]) -> str:
    """A marked row's state (a row from an older API has only ``seen``)."""
    return row.get("state") or (ALIVE if row["seen"] else DEAD)


def count_states(rows: Iterable[dict[str, Any]]) -> str:
    """"1 alive, 1 stopped, 1 dead": how status, doctor and Telegram sum up the runners."""
    states = [state_of(r) for r in rows]
    return ", ".join(f"{states.count(state)} {state}" for state in (ALIVE, STOPPED, DEAD))


def forgotten_runner(last_seen: datetime, info: dict[str, Any] | None, seen_before: datetime,
                     stopped_before: datetime) -> bool:
    """A runner row past its time: unseen since ``seen_before``, or stopped (info.stopped) and unseen since
    ``stopped_before``. The one rule: the registry pass deletes such rows, and the views hide them until it does."""
    return last_seen < seen_before or (last_seen < stopped_before and bool((info or {}).get("stopped")))
