"""A run's usage as its output streams by: what the agent has reported so far, read line by line, so a usage report
is never lost to the bounded output tail (a long run's tail no longer holds its first turns, nor a result printed
before pages of other output), and so the task's cost cap (COHERENCE_COST_CAP_TASK_USD) can stop it while it runs.

Only the lines that carry usage are kept: ``COHERENCE_USAGE {...}`` lines, and for a preset the lines (or the
pretty-printed JSON block, e.g. Gemini's) its own reader finds usage in. The usage so far is ``agents.read_usage``
over those lines: the same reading the whole output would get, summed or last-wins as the preset reports.
"""

from __future__ import annotations

import threading

from coherence_network.agents import PRESETS, USAGE_LINE, Usage, line_usage, read_usage
from coherence_network.client import ApiClient, ApiError

KEPT_CHARS = 1 << 20  # usage lines kept per run; past it the oldest go (a preset's events are each a few hundred)
BLOCK_CHARS = 1 << 20  # a pretty-printed JSON block longer than this is not a usage report


def task_cap(client: ApiClient, agent: str | None, default: float) -> float:
    """The task cap for a run: for an agent task the one in force at the API (an operator may have changed it
    since this runner started), else, or when the API does not answer, this runner's own setting. A task with its
    own command costs no extra call."""
    if agent is None:
        return default
    try:
        return client.caps(retries=0).task.usd  # a task waits for no API outage
    except ApiError:
        return default


class UsageMeter:
    """The usage one run reported so far (``usage``), and whether its cost passed ``cap_usd`` (0: no cap)."""

    def __init__(self, agent: str | None, cap_usd: float = 0.0) -> None:
        self.agent = agent  # None: a task with its own command (only COHERENCE_USAGE lines count)
        self.cap_usd = cap_usd
        self.usage: Usage | None = None
        self._kept: list[str] = []
        self._kept_chars = 0
        self._block: list[str] | None = None  # a JSON object spread over lines, being read
        self._block_chars = 0
        self._lock = threading.Lock()  # the pump writes, the watching thread reads

    def feed(self, line: str) -> None:
        """One line of the task's output, as it arrives."""
        if self._block is not None:
            self._block.append(line)
            self._block_chars += len(line)
            if line.startswith("}"):
                block, self._block = "".join(self._block), None
                self._consider(block)
            elif self._block_chars > BLOCK_CHARS:
                self._block = None
            return
        if line.startswith(USAGE_LINE):
            if line_usage(line) is not None:
                self._keep(line)
            return
        preset = PRESETS.get(self.agent or "")
        if preset is None:
            return
        if preset.usage(line) is not None:
            self._keep(line)
        elif line.rstrip() == "{":
            self._block, self._block_chars = [line], len(line)

    def _consider(self, text: str) -> None:
        preset = PRESETS.get(self.agent or "")
        if preset is not None and preset.usage(text) is not None:
            self._keep(text if text.endswith("\n") else text + "\n")

    def _keep(self, text: str) -> None:
        with self._lock:
            self._kept.append(text)
            self._kept_chars += len(text)
            while self._kept_chars > KEPT_CHARS and len(self._kept) > 1:
                self._kept_chars -= len(self._kept.pop(0))
            kept = "".join(self._kept)
            self.usage = read_usage(self.agent, kept) if self.agent else line_usage(kept)

    @property
    def cost_usd(self) -> float | None:
        """The cost reported so far (None: nothing said)."""
        with self._lock:
            return self.usage.cost_usd if self.usage else None

    def over_cap(self) -> str | None:
        """Why the run must stop (its cost passed the cap), or None."""
        cost = self.cost_usd
        if self.cap_usd > 0 and cost is not None and cost > self.cap_usd:
            return (f"over budget: the agent reported ${cost:.4f}, past the task cap ${self.cap_usd:g} "
                    "(COHERENCE_COST_CAP_TASK_USD, or `coherence caps set --task N`)")
        return None
