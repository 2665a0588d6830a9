"""Each backlog item in its own git worktree, its phases judged by their evidence, its branch merged when the review
passes: real runner processes against a served API, real git in temporary repositories, a small agent program."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from tests.support.api import ServedApi
from tests.support.worktrees import ALPHA, BETA, PY, diverge, git, make_repo, phase, refusing_remote, run_runner


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


@pytest.fixture
def client(served_api: ServedApi) -> Iterator[ApiClient]:
    with ApiClient(served_api.url, token="", retries=0) as c:
        yield c


def files_of(repo: Path, commit: str) -> list[str]:
    return sorted(git(repo, "show", "--name-only", "--format=", commit).splitlines())


def test_two_items_at_once_work_in_their_own_worktrees_and_both_merge(served_api: ServedApi, client: ApiClient,
                                                                       repo: Path, tmp_path: Path) -> None:
    meet = tmp_path / "meet"
    meet.mkdir()
    alpha = phase(client, ALPHA, "impl", "WRITE src/alpha.py A = 1", f"MEET {meet}/a {meet}/b")
    beta = phase(client, BETA, "impl", "WRITE src/beta.py B = 2", f"MEET {meet}/b {meet}/a")
    run = client.create_task("in the workspace", "run", command=f"{PY} -c \"open('plain.txt', 'w').write('x')\"")
    reviews = [phase(client, slug, "review", f"MEET {meet}/{mine} {meet}/{other}", "SAY VERDICT: pass")
               for slug, mine, other in ((ALPHA, "ra", "rb"), (BETA, "rb", "ra"))]
    run_runner(served_api, repo, tmp_path, "--workers", "2")
    alpha, beta = client.get_task(alpha.id), client.get_task(beta.id)
    assert (alpha.status, beta.status) == ("completed", "completed"), (alpha.output, beta.output)
    assert "met" in alpha.output.split() and "met" in beta.output.split()  # they ran at the same time
    home = served_api.home
    for task, slug, name in ((alpha, ALPHA, "src/alpha.py"), (beta, BETA, "src/beta.py")):
        evidence = task.evidence
        assert evidence["branch"] == f"coherence/{slug}" and evidence["base"] == "main"
        assert evidence["worktree"] == str(home / "worktrees" / slug)
        assert evidence["files"] == [name] and evidence["diffstat"] == "1 file changed, 1 insertion(+)"
        assert files_of(repo, evidence["commit"]) == [name]  # its commit holds its own file only
        assert f"[pipeline] impl {task.id}:" in git(repo, "log", "-1", "--format=%s", evidence["commit"])
        assert git(repo, "log", "-1", "--format=%ae", evidence["commit"]) == "tester@example.invalid"
        assert not (home / "worktrees" / slug / "plain.txt").exists()
    assert (repo / "plain.txt").exists()  # a run task keeps to the workspace
    assert client.get_task(run.id).evidence is None
    # both reviews passed at once; their merges took turns (var/run/worktrees.lock), neither was lost
    done = [client.get_task(r.id) for r in reviews]
    assert [r.status for r in done] == ["completed", "completed"], [r.output for r in done]
    assert all("met" in r.output.split() for r in done)
    merges = git(repo, "log", "--merges", "--format=%s", "main").splitlines()
    assert sorted(merges) == sorted(f"[pipeline] merge coherence/{slug} into main (review {r.id} passed)"
                                    for slug, r in ((ALPHA, done[0]), (BETA, done[1])))
    assert sorted(git(repo, "ls-files", "src").splitlines()) == ["src/alpha.py", "src/beta.py"]
    assert git(repo, "status", "--porcelain") == "?? plain.txt"


def test_a_phase_that_changes_nothing_fails_with_no_change(served_api: ServedApi, client: ApiClient, repo: Path,
                                                           tmp_path: Path) -> None:
    idle = phase(client, ALPHA, "impl", "SAY I looked and all is fine")
    elsewhere = phase(client, BETA, "test", "WRITE src/beta.py B = 2")
    run_runner(served_api, repo, tmp_path, COHERENCE_PHASE_PATHS_TEST="tests/*,*_test.py")
    idle, elsewhere = client.get_task(idle.id), client.get_task(elsewhere.id)
    assert (idle.status, idle.error_category) == ("failed", "no_change")
    assert idle.error_summary == "the impl phase made no commit with a diff (nothing changed in the item's worktree)"
    assert "no commit" in idle.output and "made no commit with a diff" in idle.output
    assert "commit" not in idle.evidence and idle.evidence["branch"] == f"coherence/{ALPHA}"
    assert (elsewhere.status, elsewhere.error_category) == ("failed", "no_change")
    assert elsewhere.evidence["required"] == ["tests/*", "*_test.py"]
    assert elsewhere.evidence["missing"] == ["tests/*", "*_test.py"] and elsewhere.evidence["files"] == ["src/beta.py"]
    assert "touched no file matching tests/*, *_test.py" in elsewhere.error_summary


def test_a_review_without_a_verdict_fails_one_that_passes_is_merged_and_cleanup_keeps_unmerged_work(
        served_api: ServedApi, client: ApiClient, repo: Path, tmp_path: Path) -> None:
    phase(client, ALPHA, "impl", "WRITE src/alpha.py A = 1")
    phase(client, BETA, "impl", "WRITE src/beta.py B = 2")  # never reviewed: its branch is not merged
    mute = phase(client, ALPHA, "review", "SAY looks fine to me")
    passing = phase(client, ALPHA, "review", "WRITE REVIEW.md ok", "SAY VERDICT: pass")
    run_runner(served_api, repo, tmp_path)  # one after another, oldest first
    mute = client.get_task(mute.id)
    assert (mute.status, mute.error_category) == ("failed", "no_verdict")
    assert "VERDICT" in mute.error_summary and "verdict" not in mute.evidence and "merge" not in mute.evidence
    passing = client.get_task(passing.id)
    assert passing.status == "completed", passing.output
    assert passing.evidence["verdict"] == "pass" and passing.evidence["push"] == "off"
    assert passing.evidence["merge"] == {"into": "main", "commit": git(repo, "rev-parse", "main")}
    assert git(repo, "log", "-1", "--format=%s", "main") == (
        f"[pipeline] merge coherence/{ALPHA} into main (review {passing.id} passed)")
    assert (repo / "src" / "alpha.py").read_text() == "A = 1\n" and (repo / "REVIEW.md").exists()
    assert git(repo, "status", "--porcelain") == ""

    cleanup = subprocess.run([PY, "-m", "coherence_network.cli", "cleanup", "--days", "0"], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "COHERENCE_HOME": str(served_api.home),
                                                         "AGENT_API_BASE": served_api.url,
                                                         "COHERENCE_WORKSPACE": str(repo)})
    assert cleanup.returncode == 0, cleanup.stderr
    assert f"removed worktree var/worktrees/{ALPHA} and its merged branch" in cleanup.stdout
    assert f"kept worktree var/worktrees/{BETA}: coherence/{BETA} is not merged into main" in cleanup.stdout
    worktrees = served_api.home / "worktrees"
    assert not (worktrees / ALPHA).exists() and (worktrees / BETA / "src" / "beta.py").exists()
    branches = git(repo, "branch", "--format=%(refname:short)").splitlines()
    assert f"coherence/{ALPHA}" not in branches and f"coherence/{BETA}" in branches


def test_a_conflicting_merge_asks_and_leaves_the_target_clean(served_api: ServedApi, client: ApiClient, repo: Path,
                                                              tmp_path: Path) -> None:
    diverge(repo)
    before = git(repo, "rev-parse", "main")
    review = phase(client, ALPHA, "review", "SAY VERDICT: pass")
    run_runner(served_api, repo, tmp_path)
    review = client.get_task(review.id)
    assert review.status == "needs_decision", review.output
    prompt = review.decision_prompt
    assert ALPHA in prompt and f"coherence/{ALPHA}" in prompt and "README.md" in prompt
    assert "`retry`" in prompt and "`abandon`" in prompt
    assert review.evidence["merge"] == {"into": "main", "conflict": ["README.md"]}
    assert git(repo, "rev-parse", "main") == before and git(repo, "status", "--porcelain") == ""
    assert (repo / "README.md").read_text() == "from main\n"

    client.decide(review.id, "maybe later", "cli:tester")  # no answer it knows: the same question again
    run_runner(served_api, repo, tmp_path)
    again = client.get_task(review.id)
    assert again.status == "needs_decision"
    assert again.decision_prompt == "The answer 'maybe later' is neither `retry` nor `abandon`. " + prompt
    assert "VERDICT" not in again.output  # the agent did not run again

    client.decide(review.id, "retry", "cli:tester")  # nothing resolved yet: it asks again, the agent not run
    run_runner(served_api, repo, tmp_path)
    again = client.get_task(review.id)
    assert again.status == "needs_decision" and again.decision_prompt == prompt
    assert "the agent is not run again" in again.output

    git(repo, "merge", "-q", "--no-ff", "-X", "theirs", "-m", "merged by hand", f"coherence/{ALPHA}")
    client.decide(review.id, "retry", "cli:tester")
    run_runner(served_api, repo, tmp_path)
    done = client.get_task(review.id)
    assert done.status == "completed", done.output
    assert done.evidence["merge"] == {"into": "main", "commit": git(repo, "rev-parse", "main")}
    assert git(repo, "log", "-1", "--format=%s", "main") == "merged by hand"


def test_a_failed_push_asks_and_retry_pushes(served_api: ServedApi, client: ApiClient, repo: Path,
                                            tmp_path: Path) -> None:
    hook = refusing_remote(tmp_path, repo)
    remote = hook.parent.parent
    phase(client, ALPHA, "impl", "WRITE src/alpha.py A = 1")
    review = phase(client, ALPHA, "review", "SAY VERDICT: pass")
    run_runner(served_api, repo, tmp_path, PIPELINE_AUTO_PUSH="1")
    review = client.get_task(review.id)
    assert review.status == "needs_decision", review.output
    assert review.evidence["push"] == "failed" and "commit" in review.evidence["merge"]
    assert "refused by policy" in review.decision_prompt and ALPHA in review.decision_prompt
    assert git(remote, "log", "--format=%s", "main") == "initial"  # the merge stays local

    hook.unlink()
    client.decide(review.id, "retry", "cli:tester")
    run_runner(served_api, repo, tmp_path, PIPELINE_AUTO_PUSH="1")
    done = client.get_task(review.id)
    assert done.status == "completed" and done.evidence["push"] == "pushed", done.output
    assert git(remote, "rev-parse", "main") == git(repo, "rev-parse", "main") == done.evidence["merge"]["commit"]


def test_abandon_fails_the_review_and_keeps_the_branch(served_api: ServedApi, client: ApiClient, repo: Path,
                                                       tmp_path: Path) -> None:
    diverge(repo)
    review = phase(client, ALPHA, "review", "SAY VERDICT: pass")
    run_runner(served_api, repo, tmp_path)
    client.decide(client.get_task(review.id).id, "abandon", "cli:tester")
    run_runner(served_api, repo, tmp_path)
    done = client.get_task(review.id)
    assert (done.status, done.error_category) == ("failed", "cancelled")
    assert "abandoned by cli:tester" in done.error_summary and "merge" not in done.evidence
    assert git(repo, "rev-parse", "--verify", f"coherence/{ALPHA}")  # the branch is kept


def test_a_target_branch_checked_out_nowhere_is_merged_in_its_own_worktree(served_api: ServedApi, client: ApiClient,
                                                                           repo: Path, tmp_path: Path) -> None:
    git(repo, "branch", "release")
    (repo / "README.md").write_text("main only\n")
    git(repo, "commit", "-q", "-am", "main moves on")  # the item starts from release, without this
    phase(client, ALPHA, "impl", "WRITE src/alpha.py A = 1")
    review = phase(client, ALPHA, "review", "SAY VERDICT: pass")
    run_runner(served_api, repo, tmp_path, PIPELINE_TARGET_BRANCH="release")
    review = client.get_task(review.id)
    assert review.status == "completed", review.output
    assert review.evidence["base"] == "release" and review.evidence["merge"]["into"] == "release"
    assert git(repo, "rev-parse", "release") == review.evidence["merge"]["commit"]
    assert git(repo, "show", "release:README.md") == "start"  # made off release, not off the checked-out main
    assert git(repo, "show", "release:src/alpha.py") == "A = 1"
    assert git(repo, "log", "-1", "--format=%s", "main") == "main moves on"  # the workspace's branch untouched
    assert (served_api.home / "worktrees" / "_target" / "src" / "alpha.py").exists()


def test_a_workspace_that_is_no_repository_fails_phases_at_their_start(served_api: ServedApi, client: ApiClient,
                                                                       tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    spec = phase(client, ALPHA, "spec", "WRITE spec.md s")
    run_runner(served_api, plain, tmp_path)
    spec = client.get_task(spec.id)
    assert (spec.status, spec.error_category) == ("failed", "config_error")
    assert spec.error_summary.startswith(f"not started: {plain} has no branch checked out")
    assert "PIPELINE_TARGET_BRANCH" in spec.error_summary and not (plain / "spec.md").exists()
    assert spec.evidence == {"branch": f"coherence/{ALPHA}", "worktree": str(served_api.home / "worktrees" / ALPHA)}
