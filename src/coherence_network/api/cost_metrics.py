"""The cost figures of /metrics, read from the store's spend ledger at scrape time: what agents reported using
since the ledger began (counters: the ledger only grows, so every replica reports the same value; use max() over
replicas, not sum()), today's spend, the day cap, and whether it is reached."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from coherence_network.store import TaskStore


def cost_families(store: TaskStore, today: dict[str, Any] | None) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """coherence_agent_cost_usd_total{agent}, coherence_agent_tokens_total{agent,direction},
    coherence_cost_today_usd, coherence_cost_cap_day_usd (0: none), coherence_day_cap_reached."""
    cost = CounterMetricFamily("coherence_agent_cost_usd", "US dollars agents reported their finished runs cost",
                               labels=["agent"])
    tokens = CounterMetricFamily("coherence_agent_tokens", "Tokens agents reported their finished runs used "
                                 "(direction in: read, out: written)", labels=["agent", "direction"])
    for row in store.spend_per_agent():
        agent = row["agent"] or "command"
        cost.add_metric([agent], float(row["cost_usd"]))
        tokens.add_metric([agent, "in"], float(row["tokens_in"]))
        tokens.add_metric([agent, "out"], float(row["tokens_out"]))
    yield cost
    yield tokens
    today = today or {"cost_usd": 0.0, "cap_usd": 0.0, "reached": False}
    yield GaugeMetricFamily("coherence_cost_today_usd", "US dollars of the runs finished since 00:00 UTC",
                            value=float(today["cost_usd"]))
    yield GaugeMetricFamily("coherence_cost_cap_day_usd", "The day cap in force in US dollars (0: none)",
                            value=float(today["cap_usd"]))
    yield GaugeMetricFamily("coherence_day_cap_reached", "1 while today's spend has reached the day cap (claims "
                            "hand out no agent task), else 0", value=1 if today["reached"] else 0)
