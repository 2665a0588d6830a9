"""Costs and caps in the contract: the caps an operator sets (task, item, day, in US dollars; 0 = none) and the
spend read (today against the day cap, per agent, per day, per item). Imported by the API, the client, the CLI and
the console, so each reads one shape."""

from __future__ import annotations

from datetime import datetime

from coherence_network.contract import Returned


class CostCap(Returned):
    """One cap: the one in force (``usd``: the operator's, else the setting's default; 0 = none), the default, and
    who set it when (None: nobody; the default applies)."""

    usd: float
    default_usd: float
    set_by: str | None = None
    set_at: datetime | None = None


class CostCaps(Returned):
    """``GET /api/agent/caps``."""

    task: CostCap
    item: CostCap
    day: CostCap


class CostCapsChange(Returned):
    """``PUT /api/agent/caps``: whether anything changed, and every cap as it is now."""

    changed: bool
    caps: CostCaps


class SpendSums(Returned):
    """What runs reported: their cost (US dollars; a run that reported none adds 0), tokens, and how many."""

    cost_usd: float
    tokens_in: int
    tokens_out: int
    runs: int


class DaySpend(SpendSums):
    day: str  # YYYY-MM-DD, a UTC day


class Today(DaySpend):
    """Today's spend against the day cap (0: none): the finished runs' (``cost_usd``) and what the runs going on
    reported so far (``running_usd``); ``reached``: together they reached the cap, and claims hand out no agent
    task."""

    running_usd: float = 0.0
    cap_usd: float
    reached: bool


class AgentSpend(SpendSums):
    agent: str | None  # None: a task with its own command that reported usage


class ItemSpend(SpendSums):
    """One backlog item's spend over all its tasks' runs, against the item cap."""

    item: str
    cap_usd: float
    reached: bool


class Spend(Returned):
    """``GET /api/agent/spend``: today, today per agent, the last days (newest first), and the item asked for."""

    today: Today
    agents: list[AgentSpend]
    days: list[DaySpend]
    item: ItemSpend | None = None
