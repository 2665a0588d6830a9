"""Auto-commit and auto-push against a temporary repository with a bare remote."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coherence_network import gitops
from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskStatus
from coherence_network.settings import Settings
from tests.support.api import ServedApi
from tests.support.net import wait_until


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", str(remote))
    (work / "README.md").write_text("start\n")
    git(work, "add", "README.md")
    git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "initial")
    return work


def settings_for(tmp_path: Path, workspace: Path, **fields: object) -> Settings:
    return Settings(_env_file=None, coherence_home=tmp_path / "home", coherence_workspace=workspace,
                    pipeline_auto_commit=True, **fields)


def task(task_id: int, task_type: str = "impl") -> Task:
    now = datetime.now(UTC)
    return Task(id=task_id, task_type=task_type, status=TaskStatus.COMPLETED, direction=f"Do step {task_id}",
                created_at=now, updated_at=now)


def test_commit_and_push_with_a_failed_push_retried(tmp_path: Path, repo: Path) -> None:
    settings = settings_for(tmp_path, repo, pipeline_auto_push=True)
    remote = tmp_path / "remote.git"
    (repo / "a.txt").write_text("1\n")
    assert gitops.commit_workspace(settings, [task(1)]) == "committed"
    assert git(repo, "log", "-1", "--format=%s") == "[pipeline] impl 1: Do step 1"
    assert git(remote, "log", "-1", "--format=%s", "main") == "[pipeline] impl 1: Do step 1"

    remote.rename(tmp_path / "away.git")  # the remote is unreachable: the commit stays, the push fails
    (repo / "b.txt").write_text("2\n")
    assert gitops.commit_workspace(settings, [task(2, "test")]) == "committed"
    log = (tmp_path / "home" / "logs" / "commit_progress.log").read_text()
    assert "push to origin failed" in log

    (tmp_path / "away.git").rename(remote)
    (repo / "c.txt").write_text("3\n")
    assert gitops.commit_workspace(settings, [task(3, "review")]) == "committed"
    pushed = git(remote, "log", "--format=%s", "main").splitlines()
    assert pushed[:3] == ["[pipeline] review 3: Do step 3", "[pipeline] test 2: Do step 2",
                          "[pipeline] impl 1: Do step 1"]  # the failed push went with the next one


def test_no_commit_outside_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert gitops.commit_workspace(settings_for(tmp_path, plain), [task(3)]) == "not-a-repo"
    assert "not a git repository" in (tmp_path / "home" / "logs" / "commit_progress.log").read_text()


def test_watcher_commits_tasks_completed_through_the_api(tmp_path: Path, repo: Path,
                                                          served_api: ServedApi) -> None:
    settings = settings_for(tmp_path, repo, agent_api_base=served_api.url)
    with ApiClient(settings=settings, retries=0) as client:
        watcher = gitops.CompletedTaskWatcher(settings, client)
        assert watcher.poll() is None  # baseline: nothing older is committed
        created = client.create_task("Write the spec", "spec")
        claimed = client.claim("t:1")
        assert claimed is not None and claimed.id == created.id
        (repo / "spec.md").write_text("spec\n")
        other = client.create_task("Another", "impl")
        busy = client.claim("t:2")
        client.finish(created.id, claimed.claim_token, "completed", output="ok")
        assert watcher.poll() is None  # another task still runs in the workspace
        client.finish(other.id, busy.claim_token, "completed", output="ok")
        assert watcher.poll() == "committed"
        subject, _, body = git(repo, "log", "-1", "--format=%B").partition("\n\n")
        assert subject == f"[pipeline] impl {other.id}: Another" and f"spec {created.id}" in body
        head = git(repo, "rev-parse", "HEAD")
        heal = client.create_task("Heal", "heal")  # a type that is not committed (COMMIT_TYPES)
        healing = client.claim("t:1")
        assert healing is not None and healing.id == heal.id
        (repo / "healed.txt").write_text("heal\n")
        client.finish(heal.id, healing.claim_token, "completed", output="ok")
        assert watcher.poll() is None
        phase = client.create_task("Impl in its worktree", "impl")  # its commit is on its item's branch
        running = client.claim("t:1")
        assert running is not None and running.id == phase.id
        client.finish(phase.id, running.claim_token, "completed", output="ok",
                      evidence={"worktree": str(tmp_path / "wt"), "branch": "coherence/x-00000000"})
        assert watcher.poll() is None
    assert git(repo, "rev-parse", "HEAD") == head


def _status(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "home" / "logs" / "auto_commit.json").read_text())


def test_git_missing_is_a_failure_reported_not_raised(tmp_path: Path, repo: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path, repo)
    (repo / "a.txt").write_text("1\n")
    real_path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no git here
    assert gitops.commit_workspace(settings, [task(1)]) == "failed"
    assert gitops.commit_workspace(settings, [task(2)]) == "failed"
    status = _status(tmp_path)
    assert status["failures"] == 2 and "git cannot run" in str(status["last_error"])
    assert "auto-commit failed" in (tmp_path / "home" / "logs" / "commit_progress.log").read_text()
    monkeypatch.setenv("PATH", real_path)
    assert gitops.commit_workspace(settings, [task(3)]) == "committed"
    assert _status(tmp_path)["failures"] == 0 and _status(tmp_path)["last_outcome"] == "committed"


def test_a_hanging_git_is_killed_with_what_it_started(tmp_path: Path, repo: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    started = tmp_path / "child.pid"
    (fake / "git").write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {started}\nwait\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr(gitops, "GIT_TIMEOUT_SECONDS", 1.0)
    begun = time.monotonic()
    assert gitops.commit_workspace(settings_for(tmp_path, repo), [task(1)]) == "failed"
    assert time.monotonic() - begun < 10
    assert "timed out after 1 s" in str(_status(tmp_path)["last_error"])
    child = int(started.read_text())
    wait_until(lambda: not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text()
               .rsplit(")", 1)[1].split()[0], 10, "the sleep git started killed too")


class _AskForPassword(BaseHTTPRequestHandler):
    """An HTTP git remote that wants credentials."""

    def do_GET(self) -> None:  # noqa: N802 (the handler API)
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_a_remote_that_asks_for_credentials_never_prompts(tmp_path: Path, repo: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AskForPassword)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    asked = tmp_path / "asked"
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho \"$1\" >> {asked}\necho secret\n")
    askpass.chmod(0o755)
    for variable in ("GIT_ASKPASS", "SSH_ASKPASS"):  # a desktop session's password dialog, nobody to answer it
        monkeypatch.setenv(variable, str(askpass))
    try:
        git(repo, "remote", "set-url", "origin", f"http://127.0.0.1:{server.server_port}/repo.git")
        settings = settings_for(tmp_path, repo, pipeline_auto_push=True)
        (repo / "a.txt").write_text("1\n")
        assert gitops.commit_workspace(settings, [task(1)]) == "committed"  # the commit is made
    finally:
        server.shutdown()
    assert not asked.exists()
    status = _status(tmp_path)
    assert status["last_outcome"] == "push-failed" and status["failures"] == 1
    assert "push to origin failed" in (tmp_path / "home" / "logs" / "commit_progress.log").read_text()
