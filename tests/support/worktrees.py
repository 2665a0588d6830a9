"""Item worktrees for tests: a workspace repository, a runner with a small agent that follows its prompt, phase tasks
of an item as the project manager creates them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from coherence_network.client import ApiClient
from coherence_network.contract import Task
from tests.support.api import ServedApi
from tests.support.runner import RunnerProcess

PY = sys.executable
# The agent: each prompt line is an instruction. WRITE <path> <text> (relative: in its cwd), SAY <text> (a line of
# output), MEET <mine> <other> (create mine, wait for the other: both items run at once).
AGENT = """
import os, pathlib, sys, time
for line in open(sys.argv[1]).read().splitlines():
    op, _, rest = line.partition(" ")
    if op == "WRITE":
        path, _, text = rest.partition(" ")
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(text + "\\n")
    elif op == "SAY":
        print(rest, flush=True)
    elif op == "MEET":
        mine, other = rest.split()
        pathlib.Path(mine).touch()
        deadline = time.monotonic() + 20
        while not os.path.exists(other) and time.monotonic() < deadline:
            time.sleep(0.02)
        print("met" if os.path.exists(other) else "alone", flush=True)
"""
ALPHA, BETA = "add-alpha-0000000a", "add-beta-0000000b"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def make_repo(tmp_path: Path) -> Path:
    """A repository on main with one commit and its own git identity, as a project's workspace."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    git(work, "config", "user.name", "Tester")
    git(work, "config", "user.email", "tester@example.invalid")
    (work / "README.md").write_text("start\n")
    git(work, "add", "README.md")
    git(work, "commit", "-q", "-m", "initial")
    return work


def run_runner(api: ServedApi, repo: Path, tmp_path: Path, *args: str, **env: str) -> None:
    """A runner until no work is left, with the test agent for phases and ``repo`` as its workspace."""
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    RunnerProcess(api.home, api.url, "--once", *args, env={
        "COHERENCE_WORKSPACE": str(repo), "COHERENCE_AGENT": "custom",
        "COHERENCE_AGENT_COMMAND": f"{PY} {agent} {{prompt_file}}", **env}).run()


def phase(client: ApiClient, item: str, task_type: str, *lines: str) -> Task:
    """A phase task of ``item`` as the project manager makes one; its prompt is the agent's instructions."""
    return client.create_task("\n".join(lines), task_type, max_attempts=1,
                              context={"item": item, "title": item, "phase": task_type, "iteration": 1})


def diverge(repo: Path) -> None:
    """The item's branch (made earlier, as by its impl) and main both change README.md."""
    git(repo, "switch", "-q", "-c", f"coherence/{ALPHA}")
    (repo / "README.md").write_text("from the item\n")
    git(repo, "commit", "-q", "-am", "the item's change")
    git(repo, "switch", "-q", "main")
    (repo / "README.md").write_text("from main\n")
    git(repo, "commit", "-q", "-am", "main moves on")


def refusing_remote(tmp_path: Path, repo: Path) -> Path:
    """A bare ``origin`` holding main whose pre-receive hook refuses every push; delete the hook to accept again."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refused by policy' >&2\nexit 1\n")
    hook.chmod(0o755)
    return hook
