"""TaskStore: the one way into the store. Every query of the project is one of its methods (SQLite or PostgreSQL
alike), built from the store's rooms: task reads and moves, cancels, bulk acts, the registry, the issue book, pauses,
type policies, the audit trail, figures and backlog items, all on one engine that nothing outside store/ sees."""

from __future__ import annotations

from coherence_network.store.bulk import BulkBook
from coherence_network.store.figures import StoreFigures
from coherence_network.store.issues import IssueBook
from coherence_network.store.items import ItemReads
from coherence_network.store.pauses import PauseBook
from coherence_network.store.registry import Registry
from coherence_network.store.type_policies import PolicyBook


class TaskStore(BulkBook, Registry, IssueBook, PauseBook, PolicyBook, StoreFigures, ItemReads):
    """Tasks, the runner and component registry, monitor and fatal issues, pauses, the figures and the backlog
    items' reads, on one engine."""
