"""The pipeline driving a real coding agent: the Claude Code CLI installed from npm (.ci/run), pointed at a scripted
model server on 127.0.0.1 (tests/support/scripted_model.py), started by a real runner process through the `claude`
preset; and the same pipeline with the tests' own small agent (tests/support/stub_agent.py) as the fast version.

Both agents do the same work (stub_agent.plan): per backlog item a spec, a unittest, the module that passes it and a
review ending in ``VERDICT: pass``. Without Claude Code installed its tests fail in CI and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coherence_network.agents import read_usage
from coherence_network.backlog import PHASES, parse_backlog
from coherence_network.client import ApiClient
from coherence_network.contract import Task
from coherence_network.phase_evidence import verdict
from tests.support.api import ServedApi
from tests.support.claude_code import claude_env, claude_or_missing
from tests.support.runner import RunnerProcess
from tests.support.scripted_model import CHECK_ID, ScriptedModel, prompt_of
from tests.support.stub_agent import module_name, plan
from tests.support.worktrees import git, make_repo

STUB_AGENT = Path(__file__).parents[1] / "support" / "stub_agent.py"
BACKLOG = "# Backlog\n\n1. Greet the operator by name\n2. Count the words of a title\n"


@pytest.fixture
def scripted_model() -> Iterator[ScriptedModel]:
    with ScriptedModel(plan) as model:
        yield model


def agent_env(agent: str, tmp_path: Path, model: ScriptedModel) -> dict[str, str]:
    """The runner's environment for ``agent``: Claude Code against the scripted model, or the stub agent as the
    custom template."""
    if agent == "claude":
        return claude_env(dict(os.environ), claude_or_missing(), model.url, tmp_path / "agent-home")
    command = shlex.join([sys.executable, str(STUB_AGENT), "--file"]) + " {prompt_file}"
    return {**os.environ, "COHERENCE_AGENT": "custom", "COHERENCE_AGENT_COMMAND": command}


@pytest.mark.long
def test_claude_code_does_an_impl_task_for_a_real_runner(served_api: ServedApi, scripted_model: ScriptedModel,
                                                         tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    direction = "Backlog item 1: Greet the operator by name\n\nPhase: impl (round 1 of 3)\nImplement it; 'quotes' stay."
    env = agent_env("claude", tmp_path, scripted_model)
    with ApiClient(served_api.url, token="", retries=0) as client:
        created = client.create_task(direction, "impl")
        unscripted = client.create_task("Do something the model has no script for", "impl", max_attempts=1)
        done = RunnerProcess(served_api.home, served_api.url, "--once", "--workers", "2", base_env=env,
                             env={"COHERENCE_WORKSPACE": str(repo)}).run(timeout=120)
        assert done.returncode == 1, done.stdout + done.stderr  # one task failed
        task, refused = client.get_task(created.id), client.get_task(unscripted.id)
    assert task.status == "completed", task.output
    # the model's refusal fails the task, and its reason reaches the output
    assert (refused.status, refused.exit_code, refused.error_category) == ("failed", 1, "nonzero_exit")
    assert "API Error: 400 the script has no answer for this prompt" in (refused.output or "")
    assert [r.why[:41] for r in scripted_model.refused] == ["the script has no answer for this prompt:"]
    work = plan(direction)
    assert work is not None and list(work.files) == ["greet_the_operator_by_name.py"]
    assert (repo / "greet_the_operator_by_name.py").read_text() == work.files["greet_the_operator_by_name.py"]
    turns = scripted_model.of_kind("turn")
    assert len(turns) == 2  # the Write call, then the final word after its result
    assert direction in prompt_of(turns[0].body or {})  # the prompt arrived whole
    assert all(t.headers.get("x-api-key") == "sk-test-scripted-model" for t in turns)  # passed on to the agent
    [result] = turns[1].tool_results
    assert "is_error" not in result or not result["is_error"], result
    # Claude Code reported what the model server said it used, and the runner sent it with the finish
    used = tuple(sum(t.answer["usage"][kind] for t in turns) for kind in ("input_tokens", "output_tokens"))
    assert (task.agent, task.tokens_in, task.tokens_out) == ("claude", *used)
    assert task.cost_usd is not None and task.cost_usd > 0
    usage = read_usage("claude", task.output or "")
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (*used, task.cost_usd)


@pytest.mark.parametrize("agent", ["stub", pytest.param("claude", marks=pytest.mark.long)])
def test_the_pipeline_takes_two_items_through_every_phase_to_done(agent: str, served_api: ServedApi,
                                                                  scripted_model: ScriptedModel,
                                                                  tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    backlog = tmp_path / "backlog.md"
    backlog.write_text(BACKLOG)
    env = {**agent_env(agent, tmp_path, scripted_model), "COHERENCE_HOME": str(served_api.home),
           "AGENT_API_BASE": served_api.url, "COHERENCE_WORKSPACE": str(repo)}
    runner = RunnerProcess(served_api.home, served_api.url, "--workers", "2", base_env=env,
                           env={"COHERENCE_WORKSPACE": str(repo)}).start()
    try:
        manager = subprocess.run(
            [sys.executable, "-m", "coherence_network.cli", "pm", "--backlog", str(backlog), "--parallel",
             "--until-done", "--interval", "0.1"], env=env, capture_output=True, text=True, timeout=240)
    finally:
        runner.stop()
    assert manager.returncode == 0, manager.stdout + manager.stderr
    with ApiClient(served_api.url, token="", retries=0) as client:
        tasks = client.list_tasks(limit=100, order="oldest").items
    items = parse_backlog(backlog).items
    state = json.loads((served_api.home / "logs" / "project_manager_state.json").read_text())
    assert {key: s["status"] for key, s in state["items"].items()} == {i.key: "done" for i in items}
    by_item = {i.slug: [t for t in tasks if t.context["item"] == i.slug] for i in items}
    assert {slug: [t.task_type for t in ts] for slug, ts in by_item.items()} == dict.fromkeys(by_item, list(PHASES))
    assert all(t.status == "completed" and not t.command for t in tasks)  # the agent ran each phase, no command
    reviews = [t for t in tasks if t.task_type == "review"]
    assert [verdict(t.output) for t in reviews] == ["pass"] * len(items)
    for item in items:  # what each phase said reaches the later phases' prompts
        review = next(t for t in reviews if t.context["item"] == item.slug)
        assert f"impl: wrote {module_name(item.text)}.py" in review.direction
    expected = "claude" if agent == "claude" else "custom"
    assert all(t.agent == expected and t.tokens_in and t.tokens_out and t.cost_usd is not None for t in tasks)
    with ApiClient(served_api.url, token="", retries=0) as client:  # the item page sums and shows the same
        for item in items:
            view = client.get_item(item.slug)
            own = by_item[item.slug]
            assert (view.branch, view.tokens_in) == (f"coherence/{item.slug}", sum(t.tokens_in or 0 for t in own))
            assert view.merge is not None and view.merge["into"] == "main"
            assert [c.task_id for c in view.commits] == [t.id for t in own if t.evidence and "commit" in t.evidence]
    if agent == "claude":
        turns = scripted_model.of_kind("turn")
        assert scripted_model.refused == [] and len(turns) == 2 * len(tasks)
        checks = [r for t in turns for r in t.tool_results if r["tool_use_id"].startswith(CHECK_ID)]
        assert len(checks) == len(items) and not any(r.get("is_error") for r in checks)  # each review ran its test
    else:
        assert all("Ran 1 test" in (t.output or "") for t in reviews)
    assert_work_on_target(repo, items=[i.text for i in items], tasks=tasks)


def assert_work_on_target(repo: Path, items: list[str], tasks: list[Task]) -> None:
    """Where the items' work ends up, and that it works: each item's phases committed on its own branch, each commit
    holding only its own phase's files, both branches merged into main by their passing reviews, the checkout clean,
    and the project's own tests passing in a fresh clone of main."""
    slugs = {task.item for task in tasks}
    assert len(slugs) == len(items)
    written = set()
    for task in tasks:
        work, evidence = plan(task.direction), task.evidence or {}
        assert work is not None, task.direction
        assert evidence.get("branch") == f"coherence/{task.item}", (task.id, evidence)
        if work.files:  # its commit on the item's branch holds its own files and nothing else
            assert sorted(evidence.get("files", [])) == sorted(work.files), (task.task_type, evidence)
            commit = evidence["commit"]
            assert set(git(repo, "show", "--name-only", "--format=", commit).split()) == set(work.files)
            for relative, content in work.files.items():
                assert git(repo, "show", f"main:{relative}") == content.strip(), (task.task_type, relative)
        written |= set(work.files)
        if task.task_type == "review":
            assert evidence.get("verdict") == "pass" and evidence["merge"]["into"] == "main", evidence
            merged = evidence["merge"]["commit"]
            assert git(repo, "merge-base", "--is-ancestor", merged, "main") == ""
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""  # the merges left main clean
    on_main = set(git(repo, "ls-tree", "-r", "--name-only", "main").split())
    assert on_main == written | {"README.md"}  # and nothing else: no agent's state
    assert len(git(repo, "log", "--merges", "--format=%H", "main").split()) == len(items)
    clone = repo.parent / "fresh-clone"
    subprocess.run(["git", "clone", "-q", "--branch", "main", str(repo), str(clone)], check=True, timeout=60)
    tests = subprocess.run([sys.executable, "-m", "unittest", "discover", "-s", "tests", "-v"], cwd=clone,
                           capture_output=True, text=True, timeout=60)
    assert tests.returncode == 0 and f"Ran {len(items)} tests" in tests.stderr, tests.stderr


def test_the_scripted_model_answers_plain_json_and_refuses_out_loud(scripted_model: ScriptedModel,
                                                                   tmp_path: Path) -> None:
    turn = {"model": "m", "max_tokens": 9, "tools": [{"name": "Write"}], "system": " - Primary working directory: /w",
            "messages": [{"role": "user", "content": "Backlog item 3: Add a flag\n\nPhase: spec (round 1 of 3)"}]}
    with httpx.Client(base_url=scripted_model.url, timeout=10) as http:
        answer = http.post("/v1/messages", json=turn).json()
        assert [(b["name"], b["input"]["file_path"]) for b in answer["content"]] == [
            ("Write", "/w/docs/specs/add_a_flag.md")] and answer["stop_reason"] == "tool_use"
        unscripted = http.post("/v1/messages", json={**turn, "messages": [{"role": "user", "content": "Hello"}]})
        assert unscripted.status_code == 400 and "no answer for this prompt" in unscripted.json()["error"]["message"]
        assert http.get("/v1/models").status_code == 404
        assert http.post("/v1/messages", content=b"{not json").status_code == 400
    assert [(r.path, r.status) for r in scripted_model.refused] == [
        ("/v1/messages", 400), ("/v1/models", 404), ("/v1/messages", 400)]
    # the stub agent, too, says when a prompt is not one it has a plan for
    refused = subprocess.run([sys.executable, str(STUB_AGENT), "Hello"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode == 2 and "no plan for this prompt: 'Hello'" in refused.stderr
    assert list(tmp_path.iterdir()) == []
