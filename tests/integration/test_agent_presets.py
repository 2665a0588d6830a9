"""Agent presets end to end: a real runner (two slots) starts stub executables named like the CLIs, first on PATH,
which record the argv, environment and stdin they got and answer in their CLI's output format; `coherence doctor` names
the agent that is missing and how to install it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from coherence_network.agents import Usage, read_usage
from coherence_network.client import ApiClient
from tests.support.api import ServedApi
from tests.support.runner import RunnerProcess

# A stub CLI: records what it was started with (argv, working folder, environment, stdin, the message file aider
# reads), then answers as its CLI does: Claude Code's one JSON result, Codex's and opencode's JSON Lines, Gemini CLI's
# pretty-printed JSON, aider's text report. The record goes to a file beside it, one JSON line per run.
STUB = """#!{python}
import json, os, sys
from pathlib import Path
me, args = Path(sys.argv[0]), sys.argv[1:]
message = Path(args[args.index("--message-file") + 1]).read_text() if "--message-file" in args else None
with open(me.parent / "calls.jsonl", "a") as calls:
    calls.write(json.dumps({{"agent": me.name, "argv": args, "cwd": os.getcwd(), "stdin": sys.stdin.read(),
                            "message_file": message, "env": {{k: os.environ.get(k) for k in
                            ("COHERENCE_TASK_ID", "COHERENCE_TASK_TYPE", "ANTHROPIC_API_KEY", "OPENAI_API_KEY")}}}})
                 + "\\n")
answers = {{
    "claude": [{{"type": "result", "subtype": "success", "is_error": False, "num_turns": 2, "result": "Wrote spec.md",
                "total_cost_usd": 0.0123, "usage": {{"input_tokens": 1200, "output_tokens": 340,
                "cache_read_input_tokens": 0}}, "modelUsage": {{"claude-sonnet-4-5": {{"costUSD": 0.0123}}}}}}],
    "codex": [{{"type": "thread.started", "thread_id": "t1"}},
              {{"type": "turn.completed", "usage": {{"input_tokens": 50, "output_tokens": 7}}}}],
    "opencode": [{{"type": "step_finish", "part": {{"cost": 0.5, "tokens": {{"input": 30, "output": 4}}}}}}],
}}
if me.name == "gemini":
    print("Loaded cached credentials.")
    tokens = {{"prompt": 90, "candidates": 9}}
    print(json.dumps({{"response": "ok", "stats": {{"models": {{"gemini-2.5-pro": {{"tokens": tokens}}}}}}}}, indent=2))
elif me.name == "aider":
    print("Tokens: 1.2k sent, 300 received. Cost: $0.0042 message, $0.0042 session.")
else:
    for event in answers[me.name]:
        print(json.dumps(event))
"""
AGENTS = ("claude", "codex", "aider", "gemini", "opencode")


def stubs(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        path = folder / name
        path.write_text(STUB.format(python=sys.executable))
        path.chmod(0o755)
    return folder


def test_a_runner_runs_each_phase_with_its_agents_preset(served_api: ServedApi, tmp_path: Path) -> None:
    bin_dir = stubs(tmp_path / "bin", *AGENTS)
    direction = "Write the spec; keep 'quotes', \"these\" and $(rm -rf /) as text\n--help is no flag"
    with ApiClient(served_api.url, token="", retries=0) as client:
        tasks = {t: client.create_task(direction if t == "spec" else f"Do the {t}", t)
                 for t in ("spec", "test", "impl", "review", "heal")}
        done = RunnerProcess(served_api.home, served_api.url, "--once", "--workers", "2", env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COHERENCE_AGENT": "codex",
            "COHERENCE_AGENT_SPEC": "claude", "COHERENCE_AGENT_MODEL_SPEC": "sonnet", "COHERENCE_AGENT_TEST": "aider",
            "COHERENCE_AGENT_IMPL": "gemini", "COHERENCE_AGENT_REVIEW": "opencode", "COHERENCE_AGENT_MODEL": "gpt-5",
            "COHERENCE_AGENT_COMMAND": "must-not-run {prompt_file}", "ANTHROPIC_API_KEY": "sk-test-passed-on",
            "OPENAI_API_KEY": "sk-test-kept-back", "COHERENCE_TASK_ENV_PASSTHROUGH": "ANTHROPIC_API_KEY"}).run()
        assert done.returncode == 0, done.stdout + done.stderr
        tasks = {t: client.get_task(task.id) for t, task in tasks.items()}
    assert {t: task.status for t, task in tasks.items()} == dict.fromkeys(tasks, "completed")
    calls = {c["agent"]: c for c in map(json.loads, (bin_dir / "calls.jsonl").read_text().splitlines())}
    assert set(calls) == set(AGENTS)
    prompt_file = served_api.home / "run" / "prompts" / f"prompt_{tasks['test'].id}.md"
    assert {a: c["argv"] for a, c in calls.items()} == {
        "claude": ["-p", "--output-format", "json", "--permission-mode", "acceptEdits", "--model", "sonnet",
                   "--allowedTools", "Read", "Edit", "Write", "Bash", "Glob", "Grep", "--", direction],
        "codex": ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check", "--model", "gpt-5", "--",
                  "Do the heal"],  # heal runs COHERENCE_AGENT, with its model
        "aider": ["--message-file", str(prompt_file), "--yes-always", "--no-pretty", "--no-stream", "--no-auto-commits",
                  "--no-check-update", "--no-show-release-notes", "--analytics-disable"],  # gpt-5 is codex's model
        "gemini": ["--prompt=Do the impl", "--output-format", "json", "--approval-mode", "auto_edit"],
        "opencode": ["run", "--format", "json", "--", "Do the review"],
    }
    assert calls["aider"]["message_file"] == "Do the test"
    by_type = {"claude": "spec", "aider": "test", "gemini": "impl", "opencode": "review", "codex": "heal"}
    for agent, call in calls.items():
        task = tasks[by_type[agent]]
        assert call["env"]["COHERENCE_TASK_ID"] == str(task.id) and call["env"]["COHERENCE_TASK_TYPE"] == task.task_type
        assert call["env"]["ANTHROPIC_API_KEY"] == "sk-test-passed-on"  # named in COHERENCE_TASK_ENV_PASSTHROUGH
        assert call["env"]["OPENAI_API_KEY"] is None  # named like a credential, not passed
        assert call["stdin"] == "" and call["cwd"] == str(served_api.home.parent)  # COHERENCE_WORKSPACE
    # what the runner kept of each run is enough to read its usage
    assert {a: read_usage(a, tasks[t].output) for a, t in by_type.items()} == {
        "claude": Usage(1200, 340, 0.0123), "codex": Usage(50, 7, None), "aider": Usage(1200, 300, 0.0042),
        "gemini": Usage(90, 9, None), "opencode": Usage(30, 4, 0.5)}


def test_doctor_names_a_missing_agent_and_its_install_command(served_api: ServedApi, tmp_path: Path) -> None:
    bin_dir = stubs(tmp_path / "bin", "claude")
    env = {**os.environ, "COHERENCE_HOME": str(served_api.home), "AGENT_API_BASE": served_api.url,
           "MONITOR_DISK_MIN_FREE_MB": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "COHERENCE_AGENT": "claude", "COHERENCE_AGENT_IMPL": "aider"}
    run = subprocess.run([sys.executable, "-m", "coherence_network.cli", "doctor"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    missing, found = "impl: aider not installed (aider is not on PATH)", f"spec/test/review/heal: claude at {bin_dir}"
    assert f"[ACTION] agent: {missing}; {found}" in run.stdout
    assert "run: pip install aider-chat" in run.stdout and "see: docs/RUNBOOK.md#coding-agents" in run.stdout


def test_an_unknown_agent_stops_the_runner_at_start_naming_the_setting(tmp_path: Path) -> None:
    done = RunnerProcess(tmp_path / "home", "http://127.0.0.1:9", "--once",
                         env={"COHERENCE_AGENT_REVIEW": "cursor"}).run(timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == ("coherence: COHERENCE_AGENT_REVIEW: unknown agent 'cursor'; one of: claude, codex, aider, "
                           "gemini, opencode, custom\n")
