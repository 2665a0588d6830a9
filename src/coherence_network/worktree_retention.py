"""Retention of the items' worktrees (var/worktrees/<slug>): ``coherence cleanup`` removes the worktree of a settled
item (no task of it pending, running or waiting for a decision) whose branch is merged into the target branch and
whose last commit is older than ``--days``, then its branch (``git branch -d``: merged branches only). A worktree whose
branch is not merged, or that holds uncommitted changes, is never removed: it is kept and reported."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus
from coherence_network.gitops import GitError, git
from coherence_network.item_merge import TARGET_FOLDER, worktrees_lock
from coherence_network.item_worktree import branch_of, target_branch, worktrees_root
from coherence_network.settings import Settings

UNSETTLED = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.NEEDS_DECISION)
PAGE = 500


@dataclass
class WorktreeReport:
    removed: list[str] = field(default_factory=list)  # the worktrees' folder names (their items' slugs)
    kept: dict[str, str] = field(default_factory=dict)  # folder name -> why it stays


def unsettled_items(client: ApiClient) -> set[str]:
    """The items with a task still pending, running or waiting for a decision."""
    items: set[str] = set()
    for status in UNSETTLED:
        offset = 0
        while True:
            page = client.list_tasks(status=status, limit=PAGE, offset=offset)
            items |= {t.item for t in page.items if t.item}
            offset += len(page.items)
            if len(page.items) < PAGE:
                break
    return items


def clean_worktrees(settings: Settings, client: ApiClient, days: float, *, dry_run: bool = False,
                    now: float | None = None) -> WorktreeReport:
    """Remove the worktrees (and merged branches) of settled items; API errors propagate (nothing is removed
    without knowing which items are settled)."""
    report = WorktreeReport()
    root = worktrees_root(settings)
    folders = sorted(p for p in root.glob("*") if p.is_dir() and p.name != TARGET_FOLDER) if root.exists() else []
    if not folders:
        return report
    busy = unsettled_items(client)
    workspace = settings.coherence_workspace.resolve()
    base = target_branch(settings, workspace)
    cutoff = (now or time.time()) - days * 86400
    with worktrees_lock(settings):
        for folder in folders:
            branch = branch_of(folder.name)
            why = _why_kept(workspace, folder.name, branch, base, busy, cutoff)
            if why is not None:
                report.kept[folder.name] = why
                continue
            if not dry_run:
                try:
                    git(workspace, "worktree", "remove", str(folder))  # never --force: it refuses local changes
                except GitError as exc:
                    report.kept[folder.name] = f"not removed: {exc}"
                    continue
                git(workspace, "branch", "--quiet", "-d", branch, check=False)
            report.removed.append(folder.name)
    return report


def _why_kept(repo: Path, slug: str, branch: str, base: str, busy: set[str], cutoff: float) -> str | None:
    """Why this worktree stays (None: it may go)."""
    if slug in busy:
        return "its item has a task pending, running or waiting for a decision"
    tip = git(repo, "log", "-1", "--format=%ct", f"refs/heads/{branch}", check=False)
    if tip.returncode != 0:
        return f"no branch {branch}: not a worktree the runner made; remove it by hand if it is not needed"
    if git(repo, "merge-base", "--is-ancestor", branch, f"refs/heads/{base}", check=False).returncode != 0:
        ahead = git(repo, "rev-list", "--count", f"refs/heads/{base}..{branch}", check=False).stdout.strip()
        return f"{branch} is not merged into {base} ({ahead} commit(s) only there): its work is kept"
    if int(tip.stdout.strip()) >= cutoff:
        return "its last commit is newer than --days"
    return None
