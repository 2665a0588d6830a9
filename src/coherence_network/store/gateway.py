"""TaskStore: the one way into the store. Every query of the project is one of its methods (SQLite or PostgreSQL
alike), built from the store's rooms: task reads and moves, the registry, the issue book, pauses, type policies and
figures, all on one engine that nothing outside store/ sees."""

from __future__ import annotations

from coherence_network.store.figures import StoreFigures
from coherence_network.store.issues import IssueBook
from coherence_network.store.pauses import PauseBook
from coherence_network.store.registry import Registry
from coherence_network.store.task_moves import TaskMoves
from coherence_network.store.type_policies import PolicyBook


class TaskStore(TaskMoves, Registry, IssueBook, PauseBook, PolicyBook, StoreFigures):
    """Tasks, the runner and component registry, monitor and fatal issues, pauses and the figures, on one engine."""
