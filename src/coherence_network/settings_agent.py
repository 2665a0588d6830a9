"""The coding agent's settings, declared apart so settings.py stays one screenful per part; Settings inherits them,
so they are read, described and checked like every other field."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_settings import BaseSettings

from coherence_network.agents import AGENT_NAMES, CUSTOM

AGENT_PHASES = ("spec", "test", "impl", "review")  # the phases that may have an agent of their own


def _known_agent(value: str) -> str:
    value = value.strip().lower()
    if value and value not in AGENT_NAMES:
        raise ValueError(f"unknown agent {value!r}; one of: {', '.join(AGENT_NAMES)}")
    return value


AgentName = Annotated[str, AfterValidator(_known_agent)]


def _cap(value: object) -> object:
    """A cap as an operator writes it: empty means none (0)."""
    return 0.0 if value is None or (isinstance(value, str) and not value.strip()) else value


CapUsd = Annotated[float, BeforeValidator(_cap), Field(ge=0, le=1e9, allow_inf_nan=False)]
_PHASE_AGENT = "Agent for {} tasks; empty = COHERENCE_AGENT"
_PHASE_MODEL = ("Model for {} tasks; empty = COHERENCE_AGENT_MODEL when the phase runs COHERENCE_AGENT, else the "
                "agent's own default")

_PHASE_PATHS = ("Comma-separated globs a {} task's commit must touch, each at least once (* crosses folders); "
                "empty = any file")


class AgentSettings(BaseSettings):
    """Which coding-agent CLI runs the agent tasks (agents.PRESETS), with which model, per phase."""

    coherence_agent: AgentName = Field(
        CUSTOM, description="Coding agent for tasks without a command: claude, codex, aider, gemini, opencode, or "
        "custom (COHERENCE_AGENT_COMMAND)"
    )
    coherence_agent_command: str = Field(
        "", description="Agent command template for tasks without a command, e.g. 'claude -p {prompt_file}'"
    )
    coherence_agent_model: str = Field("", description="Model the agent is given (its --model); empty = the agent's "
                                       "own default; custom ignores it")
    coherence_agent_spec: AgentName = Field("", description=_PHASE_AGENT.format("spec"))
    coherence_agent_test: AgentName = Field("", description=_PHASE_AGENT.format("test"))
    coherence_agent_impl: AgentName = Field("", description=_PHASE_AGENT.format("impl"))
    coherence_agent_review: AgentName = Field("", description=_PHASE_AGENT.format("review"))
    coherence_agent_model_spec: str = Field("", description=_PHASE_MODEL.format("spec"))
    coherence_agent_model_test: str = Field("", description=_PHASE_MODEL.format("test"))
    coherence_agent_model_impl: str = Field("", description=_PHASE_MODEL.format("impl"))
    coherence_agent_model_review: str = Field("", description=_PHASE_MODEL.format("review"))
    coherence_cost_cap_task_usd: CapUsd = Field(
        0.0, description="Cost cap per task run in US dollars, as its agent reports it while it runs; past it the "
        "runner stops the task (failed: over_budget, not retried). 0 or empty = no cap")
    coherence_cost_cap_item_usd: CapUsd = Field(
        0.0, description="Cost cap per backlog item in US dollars (its tasks' costs summed); at it the project "
        "manager starts none of the item's phases and the item is blocked. 0 or empty = no cap")
    coherence_cost_cap_day_usd: CapUsd = Field(
        0.0, description="Cost cap per UTC day in US dollars (runs finished since 00:00 UTC); at it claims hand out "
        "no agent task (run tasks go on) until the day turns or the cap is raised (coherence caps set --day N). "
        "0 or empty = no cap")

    pipeline_target_branch: str = Field(
        "", description="Branch each backlog item's branch (coherence/<item>) is made from and merged into when its "
        "review passes; empty = the branch checked out in COHERENCE_WORKSPACE"
    )
    coherence_phase_paths_spec: str = Field("", description=_PHASE_PATHS.format("spec"))
    coherence_phase_paths_test: str = Field("", description=_PHASE_PATHS.format("test"))
    coherence_phase_paths_impl: str = Field("", description=_PHASE_PATHS.format("impl"))

    def agent_for(self, task_type: str) -> tuple[str, str]:
        """(agent, model) a task of this type runs: the phase's own when set, else COHERENCE_AGENT's. The default
        model goes only with the default agent: a model of one CLI means nothing to another."""
        phase = task_type if task_type in AGENT_PHASES else None
        agent = (getattr(self, f"coherence_agent_{phase}") if phase else "") or self.coherence_agent
        model = getattr(self, f"coherence_agent_model_{phase}") if phase else ""
        if not model and agent == self.coherence_agent:
            model = self.coherence_agent_model
        return agent, model

    @property
    def agentless_types(self) -> frozenset[str]:
        """The agent task types that cannot run here: their agent is custom and COHERENCE_AGENT_COMMAND is empty."""
        return frozenset(t for t in (*AGENT_PHASES, "heal")
                         if self.agent_for(t)[0] == CUSTOM and not self.coherence_agent_command)

    @property
    def agents_configured(self) -> dict[str, list[str]]:
        """Each agent some task type runs, with those types (heal runs COHERENCE_AGENT)."""
        used: dict[str, list[str]] = {}
        for task_type in (*AGENT_PHASES, "heal"):
            used.setdefault(self.agent_for(task_type)[0], []).append(task_type)
        return used


class StallSettings(BaseSettings):
    """When a running task that prints nothing is flagged (health rule stalled_task) and when its runner stops it
    (error category stalled): an agent waiting on a prompt nobody answers, or hung on the network, holds a slot."""

    coherence_stall_warn_seconds: float = Field(
        600.0, gt=0, description="A running task silent (no line of output) this long is flagged: health rule "
        "stalled_task"
    )
    coherence_stall_stop_seconds: float = Field(
        1800.0, ge=0, description="A running task silent this long is stopped by its runner and fails as stalled; "
        "0 = never"
    )
