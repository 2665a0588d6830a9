"""Why a run ended badly, as a runner tells the API with its finish: an error category (contract.ErrorCategory: it
decides whether a retry could ever succeed) and a one-line summary an operator reads wherever the task is shown."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from coherence_network.contract import ErrorCategory

SUMMARY_CHARS = 300  # the API takes 500; one line stays readable in a table


@dataclass(frozen=True)
class RunEnd:
    """What a run knows of how it ended."""

    returncode: int | None  # None: nothing was started
    last_line: str  # the task's last non-empty output line (not the runner's own notes)
    timed_out: bool = False
    timeout: float = 0.0
    cancelled: str | None = None  # the cancel request's words, when an operator cancelled it
    not_started: str | None = None  # why it could not start (a missing or refused command)
    agent: bool = False  # run by the agent template (no command of its own)
    stalled: float | None = None  # stopped after printing nothing for this many seconds (COHERENCE_STALL_STOP_SECONDS)
    over_budget: str | None = None  # why its reported cost stopped it (usage_meter)


def _line(text: str) -> str:
    return " ".join(text.split())[:SUMMARY_CHARS]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def failure_of(end: RunEnd) -> tuple[ErrorCategory, str]:
    """The category and summary of a run that did not complete: cancelled by an operator, could not start (a
    configuration error: no retry helps), went silent (stalled), passed its cost cap (over budget), ran out of
    time, was killed by a signal, or exited non-zero (an agent run that exits non-zero without a word is the agent
    failing before the work, e.g. bad flags or no credentials)."""
    said = f": {end.last_line}" if end.last_line else ""
    if end.cancelled is not None:
        return ErrorCategory.CANCELLED, _line(end.cancelled)
    if end.not_started is not None:
        return ErrorCategory.CONFIG_ERROR, _line(f"not started: {end.not_started}")
    if end.stalled is not None:
        return ErrorCategory.STALLED, _line(f"stalled: no output for {end.stalled:.0f}s, stopped{said}")
    if end.over_budget is not None:
        return ErrorCategory.OVER_BUDGET, _line(end.over_budget)
    if end.timed_out:
        return ErrorCategory.TIMEOUT, _line(f"timed out after {end.timeout:g}s{said}")
    if end.returncode is not None and end.returncode < 0:
        return ErrorCategory.KILLED, _line(f"killed by {_signal_name(-end.returncode)}{said}")
    if end.agent and not end.last_line:
        return ErrorCategory.AGENT_ERROR, _line(f"the agent exited {end.returncode} without output")
    return ErrorCategory.NONZERO_EXIT, _line(f"exit {end.returncode}{said}")
