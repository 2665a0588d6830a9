"""STUB until merge: the real module (recorded task process groups, killed when their runner is gone) is written
in another branch and replaces this file. Only the signature the supervisor and `coherence stop` call is here."""

from __future__ import annotations

from coherence_network.settings import Settings


def kill_orphaned_task_groups(settings: Settings, *, all_groups: bool = False) -> list[str]:
    """Kill recorded task process groups whose runner is gone (every recorded one with ``all_groups``); returns
    what was done, one line each. The stub records nothing, so there is nothing to kill."""
    return []
