"""How a runner ends its claim: the fields a finish carries to the store (``TaskMoves.finish``), kept apart from
the moves so the API and the tests can name them without the store's machinery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coherence_network.agents import Usage
from coherence_network.contract import TaskStatus


@dataclass(frozen=True)
class Ending:
    """How a runner ends its claim (a finish's fields)."""

    status: TaskStatus
    output: str | None
    exit_code: int | None
    decision_prompt: str | None
    error_category: str | None
    error_summary: str | None
    usage: AgentRun | None = None
    evidence: dict[str, Any] | None = None

    def alone(self) -> bool:
        """Is the finish one UPDATE (a refused one reads why), which may commit by itself? Not when a failure settles
        by its policy (store/failures.py) or a run reported usage to book (store/costs.py). The API hands every
        finish an AgentRun, empty when the runner reported nothing (a command's run)."""
        books = self.usage is not None and self.usage.usage not in (None, Usage())
        return self.status is not TaskStatus.FAILED and not books


@dataclass(frozen=True)
class AgentRun:
    """Which agent ran it and what it reported using (any part may be unknown)."""

    agent: str | None = None
    model: str | None = None
    usage: Usage | None = None

    def values(self) -> dict[str, Any]:
        used = self.usage or Usage()
        return {"agent": self.agent, "model": self.model, "tokens_in": used.input_tokens,
                "tokens_out": used.output_tokens, "cost_usd": used.cost_usd}
