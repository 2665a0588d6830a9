"""The store: tables, migrations and the one gateway to them (TaskStore) on SQLite or PostgreSQL."""

from coherence_network.settings import Settings
from coherence_network.store.costs import CapDefaults
from coherence_network.store.db import create_store_engine
from coherence_network.store.errors import Conflict, NotFound
from coherence_network.store.failures import TypeDefaults
from coherence_network.store.gateway import TaskStore


def open_task_store(settings: Settings) -> TaskStore:
    """A TaskStore on the configured database (the schema is not touched; see TaskStore.migrate)."""
    engine = create_store_engine(settings.store_url)
    store = TaskStore(
        engine,
        lease_seconds=settings.coherence_lease_seconds,
        max_attempts=settings.coherence_max_attempts,
        tail_bytes=settings.coherence_output_tail_bytes,
        count_cache_seconds=settings.coherence_count_cache_seconds,
    )
    store.type_defaults = TypeDefaults(
        retry_delay_seconds=settings.coherence_retry_delay_seconds,
        retry_max_delay_seconds=settings.coherence_retry_max_delay_seconds,
        breaker_failures=settings.coherence_breaker_failures,
    )
    store.cap_defaults = CapDefaults(task=settings.coherence_cost_cap_task_usd,
                                     item=settings.coherence_cost_cap_item_usd,
                                     day=settings.coherence_cost_cap_day_usd)
    return store


__all__ = ["Conflict", "NotFound", "TaskStore", "open_task_store"]
