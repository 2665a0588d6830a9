"""What the npm and PyPI adapters share: the malformed-document error and field clean-up."""

from __future__ import annotations

from typing import Any

from coherence_network.errors import CoherenceError
from coherence_network.store.graph import Dependency

MAX_TEXT = 2000


class MalformedMetadata(CoherenceError, ValueError):
    """The registry answered, but the document is not the shape the ecosystem defines."""


def text_field(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A stripped string cut to ``limit`` characters; other types and blanks are None."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:limit]


def first_text(value: Any, limit: int) -> str | None:
    """The first line of a text field (licenses are sometimes the whole licence text)."""
    text = text_field(value, MAX_TEXT)
    return text.splitlines()[0].strip()[:limit] if text else None


def merge_edges(edges: list[Dependency], *, optional_wins: bool) -> list[Dependency]:
    """One edge per (name, kind); several requirements on one name are kept as alternatives (``a || b``).

    With ``optional_wins`` a name both runtime and optional is optional only (npm's rule for
    optionalDependencies)."""
    merged: dict[tuple[str, str], list[str]] = {}
    optional = {e.name for e in edges if e.kind == "optional"} if optional_wins else set()
    for edge in edges:
        if edge.kind == "runtime" and edge.name in optional:
            continue
        requirements = merged.setdefault((edge.name, edge.kind), [])
        if edge.requirement not in requirements:
            requirements.append(edge.requirement)
    return [Dependency(name, " || ".join(reqs), kind) for (name, kind), reqs in merged.items()]
