"""What a backlog item's phase must leave before it counts as done (the agent protocol's evidence): spec, test and
impl a commit with a diff, in the files the phase must touch when those are configured (COHERENCE_PHASE_PATHS_*);
a review a ``VERDICT: pass|fail`` line. The runner checks it (item_worktree); the project manager reads the verdict
with the same rule."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from coherence_network.agents import said
from coherence_network.contract import ErrorCategory, TaskStatus, TaskType
from coherence_network.settings import Settings

CHANGE_PHASES = frozenset({TaskType.SPEC, TaskType.TEST, TaskType.IMPL})  # must commit a diff
ITEM_PHASES = CHANGE_PHASES | {TaskType.REVIEW}  # run in their item's worktree
FILES_KEPT = 100  # paths listed in the evidence
_VERDICT = re.compile(r"^\s*VERDICT:\s*(pass|fail)\b", re.IGNORECASE | re.MULTILINE)


def verdict(output: str | None) -> str | None:
    """``pass`` or ``fail`` from the last VERDICT line of a review's output, or of the agent's words its CLI put in
    JSON (agents.said); None when there is none."""
    found = _VERDICT.findall(said(output or ""))
    return found[-1].lower() if found else None


def required_globs(settings: Settings, task_type: str) -> list[str]:
    """The globs a phase's commit must touch (COHERENCE_PHASE_PATHS_<PHASE>); empty: any file will do."""
    if task_type not in CHANGE_PHASES:
        return []
    value: str = getattr(settings, f"coherence_phase_paths_{task_type}")
    return [glob.strip() for glob in value.split(",") if glob.strip()]


def missing_globs(globs: list[str], files: list[str]) -> list[str]:
    """The globs no file matches (``*`` matches across ``/``, as in fnmatch)."""
    return [glob for glob in globs if not any(fnmatchcase(path, glob) for path in files)]


def change_shortfall(task_type: str, files: list[str], globs: list[str]) -> str | None:
    """Why a spec, test or impl phase's change does not count (None: it does)."""
    if not files:
        return f"the {task_type} phase made no commit with a diff (nothing changed in the item's worktree)"
    missing = missing_globs(globs, files)
    if missing:
        return (f"the {task_type} phase touched no file matching {', '.join(missing)} "
                f"(COHERENCE_PHASE_PATHS_{task_type.upper()}); it changed: {', '.join(files[:10])}")
    return None


@dataclass
class Ending:
    """How a phase task ends once its evidence is looked at: the status, why (a failure's category and summary, or
    the question), the evidence, and the runner's lines for the task's output."""

    status: TaskStatus
    evidence: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    category: ErrorCategory | None = None
    summary: str | None = None
    question: str | None = None
