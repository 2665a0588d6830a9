"""A passing review lands its item: the item's branch is merged (``git merge --no-ff``) into the target branch where
that branch is checked out (the workspace, usually; else ``var/worktrees/_target``), then the target is pushed when
PIPELINE_AUTO_PUSH is on. Nothing is lost on the way: a conflicting merge is aborted (the target stays as it was) and
a failed push leaves the merge local; either one asks the operator (the review task waits in needs_decision), and
the answer runs the task again without its agent: ``retry`` merges or pushes again (done when the operator merged
the branch by hand meanwhile), ``abandon`` fails the review and keeps the branch.

Merges, pushes and new worktrees take ``var/run/worktrees.lock`` (flock), so two items' reviews never merge at
once, also from two runners of one home.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coherence_network.contract import ErrorCategory, TaskStatus
from coherence_network.gitops import GitError, git, identity
from coherence_network.logfiles import RUN_FILES
from coherence_network.phase_evidence import Ending
from coherence_network.settings import Settings

if TYPE_CHECKING:
    from coherence_network.item_worktree import ItemWork

TARGET_FOLDER = "_target"  # no slug starts with an underscore
RETRY, ABANDON = "retry", "abandon"
CONFLICTS_NAMED = 20  # in a question; the evidence keeps up to 100
_UNKNOWN_ANSWER = re.compile(r"^The answer .* is neither `retry` nor `abandon`\. ", re.DOTALL)


@contextmanager
def worktrees_lock(settings: Settings) -> Iterator[None]:
    """Hold var/run/worktrees.lock (flock; the kernel releases it however its holder ends)."""
    path = RUN_FILES["worktrees.lock"].path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def target_checkout(work: ItemWork) -> Path:
    """The checkout of the target branch the merge happens in: wherever it is checked out, else _target."""
    listing = git(work.workspace, "worktree", "list", "--porcelain").stdout
    path = None
    for line in listing.splitlines():
        if line.startswith("worktree "):
            path = Path(line.removeprefix("worktree "))
        elif line == f"branch refs/heads/{work.base}" and path is not None:
            return path
    spare = work.path.parent / TARGET_FOLDER
    if (spare / ".git").exists():
        git(spare, "switch", "--quiet", work.base)  # made for another target branch once
    else:
        git(work.workspace, "worktree", "add", "--quiet", str(spare), work.base)
    return spare


def merged(work: ItemWork) -> bool:
    """The item's branch is part of the target branch (merged by us or by hand)."""
    return git(work.workspace, "merge-base", "--is-ancestor", work.branch, f"refs/heads/{work.base}",
               check=False).returncode == 0


def land(work: ItemWork, evidence: dict[str, Any]) -> Ending:
    """Merge the item's branch into the target and push it (when asked); a conflict or a failed push asks."""
    with worktrees_lock(work.settings):
        try:
            return _land(work, evidence)
        except GitError as exc:  # git could not run or answer (a timeout, a broken repository): nothing is lost
            evidence["merge"] = {"into": work.base, "error": str(exc)[:500]}
            return _ask(work, evidence, f"merging {work.branch} into {work.base} failed: {exc}", "merges again")


def _land(work: ItemWork, evidence: dict[str, Any]) -> Ending:
    into = work.base
    checkout = target_checkout(work)
    if not merged(work):
        message = f"[pipeline] merge {work.branch} into {into} (review {work.task.id} passed)"
        done = git(checkout, *identity(work.workspace), "merge", "--no-ff", "--no-edit", "-m", message, work.branch,
                   check=False)
        if done.returncode != 0:
            return _refused(work, evidence, checkout, (done.stderr or done.stdout).strip())
    evidence["merge"] = {"into": into, "commit": git(work.workspace, "rev-parse", f"refs/heads/{into}").stdout.strip()}
    notes = [f"=== merged {work.branch} into {into}: {evidence['merge']['commit'][:12]}"]
    if not work.settings.pipeline_auto_push:
        evidence["push"] = "off"
        return Ending(TaskStatus.COMPLETED, evidence, notes)
    remote = work.settings.pipeline_git_remote
    try:
        git(work.workspace, "push", "--porcelain", remote, f"refs/heads/{into}:refs/heads/{into}")
    except GitError as exc:
        evidence["push"] = "failed"
        ending = _ask(work, evidence, f"{work.branch} is merged into {into}, but pushing {into} to {remote} "
                      f"failed: {exc}. The merge stays local", "pushes again")
        ending.notes[:0] = notes
        return ending
    evidence["push"] = "pushed"
    return Ending(TaskStatus.COMPLETED, evidence, [*notes, f"=== pushed {into} to {remote}"])


def _refused(work: ItemWork, evidence: dict[str, Any], checkout: Path, said: str) -> Ending:
    """A merge that did not go through: the conflicting files (the merge aborted, the target clean again), or
    git's reason when nothing was merged (local changes in the checkout would be overwritten)."""
    conflicts = git(checkout, "diff", "--name-only", "--diff-filter=U", check=False).stdout.splitlines()
    if git(checkout, "rev-parse", "--verify", "--quiet", "MERGE_HEAD", check=False).returncode == 0:
        git(checkout, "merge", "--abort")
    if not conflicts:
        evidence["merge"] = {"into": work.base, "error": said[-500:]}
        return _ask(work, evidence, f"merging {work.branch} into {work.base} in {checkout} failed: {said[-500:]}",
                    "merges again")
    evidence["merge"] = {"into": work.base, "conflict": conflicts[:100]}
    named = ", ".join(conflicts[:CONFLICTS_NAMED]) + (f" and {len(conflicts) - CONFLICTS_NAMED} more"
                                                      if len(conflicts) > CONFLICTS_NAMED else "")
    return _ask(work, evidence, f"merging {work.branch} into {work.base} conflicts in {named}. The merge was "
                f"aborted: {work.base} is as it was. Resolve it by hand (merge {work.branch} into {work.base}, or "
                f"fix the branch in {work.path})", "merges again, done when the branch is already merged")


def _ask(work: ItemWork, evidence: dict[str, Any], what: str, retry_does: str) -> Ending:
    question = (f"Item {work.slug} (review task {work.task.id}): {what}. Answer `{RETRY}` ({retry_does}) or "
                f"`{ABANDON}` (the review fails, the item is blocked, the branch {work.branch} is kept).")
    return Ending(TaskStatus.NEEDS_DECISION, evidence, [f"=== {what}"], question=question[:5000])


def asked_to_land(evidence: dict[str, Any] | None) -> bool:
    """The task's last run asked about its merge or push (its evidence says so)."""
    merge = (evidence or {}).get("merge") or {}
    return "conflict" in merge or "error" in merge or (evidence or {}).get("push") == "failed"


def answer(work: ItemWork) -> Ending | None:
    """A review that asked about its merge or push and got its answer: act on it without the agent. None: this run
    is no such answer (the agent runs)."""
    task = work.task
    if not task.decision or task.task_type != "review" or not asked_to_land(task.evidence):
        return None
    evidence = {**(task.evidence or {}), **work.evidence}
    said = task.decision.strip().lower()
    if said == ABANDON:  # the question's marks go: an operator's retry of the failed review runs it afresh
        why = f"abandoned by {task.decided_by or 'the operator'}: {work.branch} is kept, not merged into {work.base}"
        for key in ("merge", "push"):
            evidence.pop(key, None)
        return Ending(TaskStatus.FAILED, evidence, [f"=== {why}"], ErrorCategory.CANCELLED, why[:300])
    if said != RETRY:  # the same question again, with what was wrong with the answer
        asked = _UNKNOWN_ANSWER.sub("", task.decision_prompt or "")
        why = f"The answer {task.decision.strip()[:100]!r} is neither `{RETRY}` nor `{ABANDON}`. "
        return Ending(TaskStatus.NEEDS_DECISION, evidence, [f"=== {why}"], question=(why + asked)[:5000])
    for key in ("merge", "push"):
        evidence.pop(key, None)
    ending = land(work, evidence)
    ending.notes.insert(0, f"=== answer {RETRY} from {task.decided_by or 'the operator'}: the agent is not run again")
    return ending
