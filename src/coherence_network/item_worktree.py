"""Each backlog item works in its own git worktree and branch: ``var/worktrees/<slug>`` on ``coherence/<slug>``, made
off the target branch (PIPELINE_TARGET_BRANCH, else the workspace's) by the item's first phase and reused by the
later ones, so items in parallel never share a file. ``run`` tasks and tasks of no item run in the workspace.

After a phase's agent exits 0 the runner commits what it changed in the worktree and checks the evidence the phase
must leave (phase_evidence); a review that passes is merged (item_merge). Every finish of such a task records its
evidence (the keys of docs/RUNBOOK.md#worktrees-and-merging). git runs unattended (gitops.git).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from coherence_network.contract import ErrorCategory, Task, TaskStatus
from coherence_network.gitops import GitError, commit_all, git
from coherence_network.item_merge import land, worktrees_lock
from coherence_network.logfiles import RUN_FILES, write_text_atomic
from coherence_network.phase_evidence import (
    CHANGE_PHASES,
    FILES_KEPT,
    ITEM_PHASES,
    Ending,
    change_shortfall,
    missing_globs,
    required_globs,
    verdict,
)
from coherence_network.settings import Settings

BRANCH_PREFIX = "coherence/"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")  # backlog.BacklogItem.slug: safe in a branch and a folder name


def worktree_path(settings: Settings, slug: str) -> Path:
    return RUN_FILES["{slug}/"].path(settings, slug=slug)


def worktrees_root(settings: Settings) -> Path:
    return settings.home / RUN_FILES["{slug}/"].folder


def branch_of(slug: str) -> str:
    return BRANCH_PREFIX + slug


def target_branch(settings: Settings, workspace: Path) -> str:
    """PIPELINE_TARGET_BRANCH, else the branch checked out in the workspace."""
    if settings.pipeline_target_branch:
        return settings.pipeline_target_branch
    head = git(workspace, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    if head.returncode != 0:
        raise GitError(f"{workspace} has no branch checked out (a detached HEAD, or not a git repository): set "
                       "PIPELINE_TARGET_BRANCH to the branch items are made from and merged into")
    return head.stdout.strip()


def item_of(task: Task) -> str | None:
    """The item slug of a phase task that runs in its item's worktree; None: it runs in the workspace. ValueError
    for an item name that is no slug (it would name a branch and a folder)."""
    slug = (task.context or {}).get("item")
    if task.task_type not in ITEM_PHASES or task.command or slug is None:
        return None
    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise ValueError(f"the task's item {slug!r} is not a slug (lowercase letters, digits and dashes)")
    return slug


class ItemWork:
    """One phase task's work in its item's worktree."""

    def __init__(self, task: Task, settings: Settings, slug: str) -> None:
        self.task = task
        self.settings = settings
        self.slug = slug
        self.workspace = settings.coherence_workspace.resolve()
        self.path = worktree_path(settings, slug)
        self.branch = branch_of(slug)
        self.base = ""  # the target branch, known once prepared
        self.start = ""  # the worktree's HEAD when the phase started
        self.files: list[str] = []  # every file the phase's commits touched

    @classmethod
    def of(cls, task: Task, settings: Settings) -> ItemWork | None:
        slug = item_of(task)
        return None if slug is None else cls(task, settings, slug)

    @property
    def evidence(self) -> dict[str, Any]:
        """Where the phase worked (``base`` once known: a worktree that could not be made has none)."""
        return {"branch": self.branch, "worktree": str(self.path), **({"base": self.base} if self.base else {})}

    def prepare(self) -> Path:
        """The item's worktree, made on its first phase (the branch off the target, or the branch as it is when it
        already exists); the folder the phase runs in. GitError when git cannot make it."""
        self.base = target_branch(self.settings, self.workspace)
        if not (self.path / ".git").exists():
            with worktrees_lock(self.settings):  # git's own files of the repository: one change at a time
                self._add()
        self.start = git(self.path, "rev-parse", "HEAD").stdout.strip()
        return self.path

    def _add(self) -> None:
        git(self.workspace, "worktree", "prune")  # a folder removed by hand leaves a registration behind
        self._exclude_from_workspace()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        known = git(self.workspace, "rev-parse", "--verify", "--quiet", f"refs/heads/{self.branch}", check=False)
        if known.returncode == 0:
            git(self.workspace, "worktree", "add", "--quiet", str(self.path), self.branch)
        else:
            git(self.workspace, "worktree", "add", "--quiet", "-b", self.branch, str(self.path), self.base)

    def _exclude_from_workspace(self) -> None:
        """When var/ lies inside the workspace, its worktrees are kept out of the workspace's `git add -A`."""
        top = Path(git(self.workspace, "rev-parse", "--show-toplevel").stdout.strip())
        root = worktrees_root(self.settings)
        if not root.is_relative_to(top):
            return
        common = Path(git(self.workspace, "rev-parse", "--git-common-dir").stdout.strip())
        exclude = (common if common.is_absolute() else self.workspace / common) / "info" / "exclude"
        line = f"/{root.relative_to(top).as_posix()}/"
        lines = exclude.read_text(encoding="utf-8").splitlines() if exclude.exists() else []
        if line not in lines:
            exclude.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(exclude, "\n".join([*lines, line]) + "\n")

    def conclude(self, output: str) -> Ending:
        """After the agent exited 0: commit every change, then judge the phase by its evidence."""
        evidence = self.evidence
        try:
            evidence |= self._commit()
        except GitError as exc:
            return Ending(TaskStatus.FAILED, evidence, [f"=== the phase's changes could not be committed: {exc}"],
                          ErrorCategory.NO_CHANGE, f"commit in the item's worktree failed: {exc}"[:300])
        notes = [f"=== {self.branch}: " + (f"commit {evidence['commit'][:12]}, {evidence['diffstat']}"
                                             if "commit" in evidence else "no commit")]
        if self.task.task_type in CHANGE_PHASES:
            return self._judge_change(evidence, notes)
        said = verdict(output)
        if said is None:
            why = "the review printed no `VERDICT: pass` or `VERDICT: fail` line"
            return Ending(TaskStatus.FAILED, evidence, [*notes, f"=== {why}"], ErrorCategory.NO_VERDICT, why)
        evidence["verdict"] = said
        if said == "fail":
            return Ending(TaskStatus.COMPLETED, evidence, [*notes, "=== verdict fail: the branch is not merged"])
        ending = land(self, evidence)
        ending.notes[:0] = notes
        return ending

    def _judge_change(self, evidence: dict[str, Any], notes: list[str]) -> Ending:
        globs = required_globs(self.settings, self.task.task_type)
        if globs:
            evidence["required"] = globs
            evidence["missing"] = missing_globs(globs, self.files)
        why = change_shortfall(self.task.task_type, self.files, globs)
        if why is None:
            return Ending(TaskStatus.COMPLETED, evidence, notes)
        return Ending(TaskStatus.FAILED, evidence, [*notes, f"=== {why}"], ErrorCategory.NO_CHANGE, why[:300])

    def _commit(self) -> dict[str, Any]:
        """Commit what the phase left uncommitted; the evidence of everything it committed (the agent's own
        commits too): the last commit, the diffstat and the files since the phase started."""
        commit_all(self.path, [self.task])
        head = git(self.path, "rev-parse", "HEAD").stdout.strip()
        if head == self.start:
            return {}
        self.files = git(self.path, "diff", "--name-only", self.start, head).stdout.splitlines()
        stat = git(self.path, "diff", "--shortstat", self.start, head).stdout.strip()
        return {"commit": head, "diffstat": stat or "no file changed", "files": self.files[:FILES_KEPT]}
