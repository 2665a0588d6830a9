"""The project manager as a real process (`coherence pm`) against a real API, with the real runner executing tasks.

The agent is a small script of the tests' own (COHERENCE_AGENT_COMMAND): it reads its prompt file, prints a result
per phase, fails the first review of any item whose text says "flaky", fails the impl phase of items that say
"fragile" until a file `fixed.flag` is in the workspace, and asks for a decision on items that say "ask" until one
arrives. The workspace is a git repository: each item's phases run in its own worktree, where spec, test and impl
write a file of their own (the evidence they must leave).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from coherence_network.backlog import PHASES, normalise
from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskStatus, TaskType
from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.proxy import HoldingProxy
from tests.support.runner import RunnerProcess

AGENT = r'''
import os, re, sys
prompt = open(sys.argv[1], encoding="utf-8").read()
phase, round_ = re.search(r"^Phase: (\w+) \(round (\d+)", prompt, re.M).groups()
item = re.search(r"^Backlog item \d+: (.*)$", prompt, re.M).group(1)
if "ask" in item and phase == "spec" and not os.environ.get("COHERENCE_DECISION"):
    print("NEEDS_DECISION: which colour should it be?")
    sys.exit(0)
if "fragile" in item and phase == "impl" and not os.path.exists(os.path.join(os.environ["COHERENCE_WORKSPACE"],
                                                                            "fixed.flag")):
    print("impl broke: fixed.flag is missing")
    sys.exit(1)
print(f"{phase} done for {item} (round {round_})")
if phase != "review":
    open(f"{phase}-{re.sub('[^a-z0-9]+', '-', item.lower())}-{round_}.txt", "w").write(item + "\n")
if phase == "review":
    print("VERDICT: " + ("fail" if "flaky" in item and round_ == "1" else "pass"))
'''


def key_of(task: Task) -> str:
    """The backlog item a task belongs to, by its key (the normalised text; its context names it by slug)."""
    return normalise(task.context["title"])


class Pipeline:
    """API (fixture), one runner process and project manager processes, all on one temporary COHERENCE_HOME."""

    def __init__(self, api: ServedApi, tmp_path: Path, settings_env: dict[str, str] | None = None) -> None:
        self.api = api
        self.workspace = tmp_path
        if not (tmp_path / ".git").exists():
            for args in (["init", "-q", "-b", "main"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                                        "--allow-empty", "-m", "initial"]):
                subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
        agent = tmp_path / "agent.py"
        agent.write_text(AGENT)
        self.env = {
            **os.environ, "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url,
            "COHERENCE_WORKSPACE": str(tmp_path),
            "COHERENCE_AGENT_COMMAND": f"{sys.executable} {agent} {{prompt_file}}",
            **(settings_env or {}),
        }
        self.backlog = tmp_path / "backlog.md"
        self.state_file = api.home / "logs" / "project_manager_state.json"
        self.client = ApiClient(api.url, retries=0)
        self.runner = RunnerProcess(api.home, api.url, "--workers", "2", env=self.env)
        self.managers: list[subprocess.Popen[str]] = []

    def pm(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coherence_network.cli", "pm", "--backlog", str(self.backlog), "--interval", "0.1",
             *args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.managers.append(proc)
        return proc

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def item(self, key: str) -> dict[str, Any]:
        return self.state().get("items", {}).get(key, {})

    def tasks(self) -> list[Task]:
        return self.client.list_tasks(limit=500, order="oldest").items

    def close(self) -> None:
        for proc in self.managers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        self.runner.stop()
        self.client.close()


@pytest.fixture
def pipeline(served_api: ServedApi, tmp_path: Path) -> Any:
    made: list[Pipeline] = []

    def make(settings_env: dict[str, str] | None = None) -> Pipeline:
        made.append(Pipeline(served_api, tmp_path, settings_env))
        return made[-1]

    yield make
    for one in made:
        one.close()


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_three_items_to_done_with_a_failed_review_and_a_restart(pipeline: Any) -> None:
    p: Pipeline = pipeline()
    p.backlog.write_text(
        "# Backlog\n\n1. Add a greeting endpoint\n2. Make the flaky parser robust\n3. run: echo ran the build\n"
    )
    p.runner.start()
    first = p.pm("--parallel", "--until-done")
    # restart in the middle: once the first item has passed its test phase
    wait_until(lambda: "test" in p.item("add a greeting endpoint").get("results", {}), 60, "item 1 test phase")
    first.send_signal(signal.SIGTERM)
    code, out = _finish(first)
    assert code == 0, out
    before = Counter((key_of(t), t.context["phase"]) for t in p.tasks())

    code, out = _finish(p.pm("--parallel", "--until-done"))
    assert code == 0, out

    tasks = p.tasks()
    by_phase = Counter((key_of(t), t.context["phase"]) for t in tasks)
    assert by_phase == {
        ("add a greeting endpoint", "spec"): 1, ("add a greeting endpoint", "test"): 1,
        ("add a greeting endpoint", "impl"): 1, ("add a greeting endpoint", "review"): 1,
        ("make the flaky parser robust", "spec"): 1, ("make the flaky parser robust", "test"): 1,
        ("make the flaky parser robust", "impl"): 2, ("make the flaky parser robust", "review"): 2,
        ("run: echo ran the build", "run"): 1,
    }
    assert all(by_phase[key] >= n for key, n in before.items())  # the restart repeated nothing finished
    assert all(t.status == "completed" for t in tasks)
    run_task = next(t for t in tasks if t.task_type == "run")
    assert run_task.command == "echo ran the build" and "ran the build" in run_task.output

    flaky = [t for t in tasks if key_of(t) == "make the flaky parser robust"]
    second_impl = [t for t in flaky if t.task_type == "impl"][1]
    assert second_impl.context["iteration"] == 2
    assert "VERDICT: fail" in second_impl.direction  # the failed review's result reaches the next impl
    review = [t for t in flaky if t.task_type == "review"][0]
    assert "spec done for Make the flaky parser robust" in review.direction
    assert not any(t.command for t in flaky)  # the runner renders the agent template; no prompt in a shell string

    state = p.state()
    assert {k: v["status"] for k, v in state["items"].items()} == dict.fromkeys(
        ["add a greeting endpoint", "make the flaky parser robust", "run: echo ran the build"], "done")
    assert state["in_flight"] == [] and state["blocked"] == [] and state["position"] == 3
    manager = p.client.pipeline_status().project_manager
    assert manager is not None and manager.info["by_status"] == {"done": 3}
    # it ended (--until-done) and said so: stopped, with why, not alive and never dead
    assert (manager.state, manager.seen, manager.info["stopped"]) == (
        "stopped", False, "backlog settled (--until-done)")


def test_review_failing_every_round_blocks_the_item_and_a_failed_task_blocks_its_item(pipeline: Any) -> None:
    p: Pipeline = pipeline()
    p.backlog.write_text("1. run: false\n2. Fix the flaky cache\n")
    p.runner.start()
    code, out = _finish(p.pm("--until-done", "--max-iterations", "1"))
    assert code == 1, out
    state = p.state()
    assert state["items"]["run: false"]["status"] == "blocked"
    assert "failed (exit code 1)" in state["items"]["run: false"]["reason"]
    flaky = state["items"]["fix the flaky cache"]
    assert flaky["status"] == "blocked" and "VERDICT: fail" in flaky["reason"]
    assert [b["item"] for b in state["blocked"]] == ["run: false", "fix the flaky cache"]


def test_a_decision_holds_only_its_own_item_in_parallel_mode(pipeline: Any) -> None:
    p: Pipeline = pipeline()
    p.backlog.write_text("1. ask about the colour\n2. run: echo second\n")
    p.runner.start()
    proc = p.pm("--parallel", "--until-done")
    wait_until(lambda: p.item("run: echo second").get("status") == "done", 60, "item 2 done")
    wait_until(lambda: p.item("ask about the colour").get("status") == "needs_decision", 60, "item 1 waits")
    status = p.client.pipeline_status()
    [waiting] = status.needs_decision
    assert waiting["decision_prompt"] == "which colour should it be?"
    assert "needs_decision" in {f.rule for f in status.attention}
    p.client.decide(waiting["id"], "blue", "test:operator")
    code, out = _finish(proc)
    assert code == 0, out
    assert p.item("ask about the colour")["status"] == "done"


def test_an_unanswered_decision_times_out_skips_its_item_and_a_late_answer_resumes_it(pipeline: Any) -> None:
    p: Pipeline = pipeline({"PIPELINE_NEEDS_DECISION_TIMEOUT_HOURS": "0.0003"})  # about one second
    p.backlog.write_text("1. ask before starting\n2. run: echo next\n")
    p.runner.start()
    code, out = _finish(p.pm("--until-done"))
    assert code == 1, out
    item = p.item("ask before starting")
    assert item["status"] == "skipped" and "not answered within" in item["reason"]
    assert p.state()["skipped"][0]["item"] == "ask before starting"
    assert p.item("run: echo next")["status"] == "done"  # the skipped item did not stall the backlog

    # the question is still open: an answer that comes after the skip takes the item up again
    [waiting] = p.client.list_tasks(status=TaskStatus.NEEDS_DECISION).items
    assert waiting.id == item["task_id"]
    p.client.decide(waiting.id, "green", "test:operator")
    code, out = _finish(p.pm("--until-done"))
    assert code == 0, out
    item = p.item("ask before starting")
    assert item["status"] == "done" and item["reason"] is None
    assert [t.task_type for t in p.tasks() if key_of(t) == "ask before starting"] == list(PHASES)


def test_a_decision_timeout_records_the_default_answer_and_the_item_continues_from_it(pipeline: Any) -> None:
    p: Pipeline = pipeline({"PIPELINE_NEEDS_DECISION_TIMEOUT_HOURS": "0.0003",
                            "PIPELINE_NEEDS_DECISION_DEFAULT": "no answer came; choose yourself"})
    p.backlog.write_text("1. ask before starting\n2. run: echo next\n")
    p.runner.start()
    code, out = _finish(p.pm("--until-done"))
    assert code == 0, out
    assert {k: v["status"] for k, v in p.state()["items"].items()} == {
        "ask before starting": "done", "run: echo next": "done"}
    spec = next(t for t in p.tasks() if t.task_type == TaskType.SPEC)
    assert spec.decision == "no answer came; choose yourself" and spec.decided_by == "timeout:default"
    assert spec.status == TaskStatus.COMPLETED and "spec done" in spec.output
    assert "not answered within" in out and "timeout:default" in out


@pytest.fixture
def api_on_store(migrated_store_url: str, tmp_path: Path) -> Any:
    """An API process on the given store (SQLite or PostgreSQL)."""
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": migrated_store_url}).start()
    yield api
    api.stop()


def _as_older_release_wrote_it(state_file: Path) -> None:
    """Rewrite the state file in the shape an older release wrote (a "version": 1 key and no record of the task a
    settled item saw); the version key is read by nothing now, and an old file still loads."""
    data = json.loads(state_file.read_text())
    data["version"] = 1
    for item in data["items"].values():
        del item["settled_on"]
    state_file.write_text(json.dumps(data))


def test_a_retried_run_task_unblocks_its_item_after_a_restart(api_on_store: ServedApi, tmp_path: Path) -> None:
    p = Pipeline(api_on_store, tmp_path)
    try:
        flag = tmp_path / "ready.flag"
        p.backlog.write_text(f"1. run: test -f {flag}\n2. run: echo after\n")
        p.runner.start()
        code, out = _finish(p.pm("--until-done"))
        assert code == 1, out
        key = f"run: test -f {flag}"
        blocked = p.item(key)
        assert blocked["status"] == "blocked" and "failed (exit code 1)" in blocked["reason"]
        assert p.item("run: echo after")["status"] == "done"
        _as_older_release_wrote_it(p.state_file)  # an item blocked before this release resumes too

        flag.touch()
        p.client.retry_task(blocked["task_id"])  # the runbook's retry
        code, out = _finish(p.pm("--until-done"))
        assert code == 0, out
        state = p.state()
        assert state["items"][key]["status"] == "done" and state["blocked"] == [] and "version" not in state
        [task] = [t for t in p.tasks() if key_of(t) == key]  # the same task ran again, none was added
        assert task.id == blocked["task_id"] and task.status == TaskStatus.COMPLETED
    finally:
        p.close()


def test_a_retried_phase_resumes_its_item_under_a_running_manager(pipeline: Any) -> None:
    p: Pipeline = pipeline()
    key = "repair the fragile importer"
    p.backlog.write_text("1. Repair the fragile importer\n2. run: echo after\n")
    p.runner.start()
    proc = p.pm()  # runs until stopped, as under the supervisor
    wait_until(lambda: p.item(key).get("status") == "blocked", 60, "item 1 blocked")
    wait_until(lambda: p.item("run: echo after").get("status") == "done", 60, "item 2 done")
    blocked = p.item(key)
    assert blocked["phase"] == "impl" and "impl broke" in blocked["reason"]

    (p.workspace / "fixed.flag").touch()
    p.client.retry_task(blocked["task_id"])
    wait_until(lambda: p.item(key).get("status") == "done", 60, "item 1 done after the retry")
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc)
    assert code == 0, out
    assert f"item 1 resumed: impl task {blocked['task_id']}" in out

    by_phase = Counter(t.task_type for t in p.tasks() if key_of(t) == key)
    assert by_phase == dict.fromkeys(PHASES, 1)  # the later phase followed; nothing finished was repeated
    code, out = _finish(p.pm("--until-done"))
    assert code == 0, out
    assert p.state()["blocked"] == []


def test_a_cancelled_phase_settles_its_item_as_cancelled_and_a_retry_takes_it_up(pipeline: Any) -> None:
    p: Pipeline = pipeline()
    key = "ask about the font"
    p.backlog.write_text("1. ask about the font\n")
    p.runner.start()
    proc = p.pm()
    wait_until(lambda: p.item(key).get("status") == "needs_decision", 60, "item 1 waits")
    task_id = p.item(key)["task_id"]
    p.client.cancel(task_id, "not this release", by="test:operator")
    wait_until(lambda: p.item(key).get("status") == "cancelled", 30, "item 1 cancelled")
    assert p.item(key)["reason"] == f"spec task {task_id} cancelled by test:operator: not this release"
    p.client.retry_task(task_id)
    wait_until(lambda: p.item(key).get("status") == "needs_decision", 60, "item 1 taken up again")
    p.client.decide(task_id, "serif", "test:operator")
    wait_until(lambda: p.item(key).get("status") == "done", 60, "item 1 done")
    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc)
    assert code == 0 and f"item 1 resumed: spec task {task_id}" in out, out


def test_renumbered_items_keep_their_progress_and_dry_run_creates_nothing(pipeline: Any) -> None:
    p: Pipeline = pipeline()
    p.backlog.write_text("1. run: echo one\n")
    p.runner.start()
    code, out = _finish(p.pm("--until-done"))
    assert code == 0, out
    p.backlog.write_text("1. run: echo zero\n2. Run:  echo   ONE\n")  # renumbered, respaced, recased
    plan = subprocess.run(
        [sys.executable, "-m", "coherence_network.cli", "pm", "--backlog", str(p.backlog), "--dry-run"],
        env=p.env, capture_output=True, text=True, timeout=60,
    )
    assert plan.returncode == 0, plan.stderr
    assert "item 1: would create run task `echo zero`" in plan.stdout
    assert "item 2: done" in plan.stdout
    assert len(p.tasks()) == 1
    code, out = _finish(p.pm("--until-done"))
    assert code == 0, out
    assert [t.command for t in p.tasks()] == ["echo one", "echo zero"]
    assert p.item("run: echo one")["number"] == 2


def test_reset_starts_over(pipeline: Any) -> None:
    p: Pipeline = pipeline()
    p.backlog.write_text("1. run: echo again\n")
    p.runner.start()
    for args in ((), ("--reset",)):
        code, out = _finish(p.pm("--until-done", *args))
        assert code == 0, out
    assert [t.command for t in p.tasks()] == ["echo again", "echo again"]


def test_bad_backlog_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    backlog = tmp_path / "backlog.md"
    backlog.write_text("# Backlog\n\n1. A good item\n- a bullet\nsome prose\n2. run:\n3. a good item\n")
    env = {**os.environ, "COHERENCE_HOME": str(tmp_path / "home"), "AGENT_API_BASE": "http://127.0.0.1:9"}
    done = subprocess.run(
        [sys.executable, "-m", "coherence_network.cli", "pm", "--backlog", str(backlog), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    logged = (tmp_path / "home" / "logs" / "project_manager.log").read_text()
    for expected in ("line 4: not an item", "line 5: not an item", "line 6: `run:` without a command",
                     "line 7: same item as line 3"):
        assert expected in logged and expected in done.stderr
    assert "item 1: would create spec task: A good item" in done.stdout


def test_missing_backlog_is_exit_2_with_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "backlog.md"
    done = subprocess.run(
        [sys.executable, "-m", "coherence_network.cli", "pm", "--backlog", str(missing), "--once"],
        env={**os.environ, "COHERENCE_HOME": str(tmp_path / "home")}, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert str(missing) in done.stderr


def test_script_help() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "project_manager.py"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--max-in-flight" in done.stdout
    assert "Usage: project_manager.py [OPTIONS]" in done.stdout  # the script's own name, not "script pm"


def test_the_first_pass_starts_its_items_in_one_batch_create(pipeline: Any) -> None:
    """Up to --max-in-flight waiting items start together: one call and one transaction (issue 23)."""
    p: Pipeline = pipeline()
    p.backlog.write_text("1. run: echo one\n2. run: echo two\n3. run: echo three\n4. run: echo four\n")
    proxy = HoldingProxy(p.env["AGENT_API_BASE"]).start()
    try:
        code, out = _finish(subprocess.Popen(
            [sys.executable, "-m", "coherence_network.cli", "pm", "--backlog", str(p.backlog), "--once",
             "--parallel", "--max-in-flight", "3"],
            env={**p.env, "AGENT_API_BASE": proxy.url}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        assert code == 0, out
        assert (proxy.count("batch"), proxy.count("tasks")) == (1, 0)  # one batch, no single create
    finally:
        proxy.stop()
    assert sorted(t.command or "" for t in p.tasks()) == ["echo one", "echo three", "echo two"]
    assert {p.item(f"run: echo {n}")["task_id"] for n in ("one", "two", "three")} == {t.id for t in p.tasks()}
    assert p.item("run: echo four")["status"] == "waiting"
