"""Drills of "Worktrees and merging": an item stopped on a merge conflict and one stopped on a failed push, resolved
with the runbook's own commands against a served API, a real runner and real git."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from tests.runbook.drill import Drill
from tests.runbook.runbook_doc import Runbook
from tests.support.api import ServedApi
from tests.support.net import free_port
from tests.support.worktrees import ALPHA, diverge, git, make_repo, phase, refusing_remote, run_runner


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


@pytest.fixture
def drill(tmp_path: Path, repo: Path) -> Iterator[Drill]:
    one = Drill(tmp_path / "home", free_port(), env={"COHERENCE_WORKSPACE": str(repo)})
    yield one
    one.close()


@pytest.fixture
def api(drill: Drill) -> Iterator[ServedApi]:
    server = ServedApi(drill.home, port=drill.port).start()
    yield server
    server.stop()


def commands(name: str, task_id: int) -> list[str]:
    return [c.replace("{id}", str(task_id)).replace("{slug}", ALPHA) for c in Runbook().drill(name).commands()]


def test_drill_an_item_stopped_on_a_merge_conflict(drill: Drill, api: ServedApi, repo: Path, tmp_path: Path) -> None:
    diverge(repo)
    with ApiClient(api.url, token="", retries=0) as client:
        review = phase(client, ALPHA, "review", "SAY VERDICT: pass")
        run_runner(api, repo, tmp_path)
        listing, show, merge, status, commit, answer = commands("merge-conflict", review.id)
        assert drill.run(listing).stdout.startswith(f"#{review.id} ")
        assert f"coherence/{ALPHA}" in drill.run(show).stdout
        assert drill.run(merge, check=False).returncode == 1  # stops on the conflict, as the runbook says
        assert "UU README.md" in drill.run(status).stdout
        (repo / "README.md").write_text("both\n")  # the operator's edit
        drill.run(commit)
        drill.run(answer)
        run_runner(api, repo, tmp_path)
        done = client.get_task(review.id)
        assert done.status == "completed", done.output
        assert done.evidence["merge"] == {"into": "main", "commit": git(repo, "rev-parse", "main")}
        assert (repo / "README.md").read_text() == "both\n"


def test_drill_an_item_stopped_on_a_failed_push(drill: Drill, api: ServedApi, repo: Path, tmp_path: Path) -> None:
    hook = refusing_remote(tmp_path, repo)
    with ApiClient(api.url, token="", retries=0) as client:
        phase(client, ALPHA, "impl", "WRITE src/alpha.py A = 1")
        review = phase(client, ALPHA, "review", "SAY VERDICT: pass")
        run_runner(api, repo, tmp_path, PIPELINE_AUTO_PUSH="1")
        assert client.get_task(review.id).status == "needs_decision"
        show, pull, push, answer = commands("failed-push", review.id)
        assert "refused by policy" in drill.run(show).stdout
        hook.unlink()  # the cause fixed
        drill.run(pull)
        drill.run(push)
        drill.run(answer)
        run_runner(api, repo, tmp_path, PIPELINE_AUTO_PUSH="1")
        done = client.get_task(review.id)
        assert done.status == "completed" and done.evidence["push"] == "pushed", done.output
        assert git(hook.parent.parent, "rev-parse", "main") == git(repo, "rev-parse", "main")
