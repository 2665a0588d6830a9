"""Agent presets end to end: a real runner (two slots) starts stub executables named like the CLIs, first on PATH,
which record the argv and environment they got and answer in their CLI's output format; `coherence doctor` names
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

# A stub CLI: records what it was started with, then prints what Claude Code (-p --output-format json) or Codex
# (exec --json) print. The record goes to a file beside it, one JSON line per run.
STUB = """#!{python}
import json, os, sys
from pathlib import Path
me = Path(sys.argv[0])
with open(me.parent / "calls.jsonl", "a") as calls:
    calls.write(json.dumps({{"agent": me.name, "argv": sys.argv[1:], "cwd": os.getcwd(),
                            "task": os.environ.get("COHERENCE_TASK_ID")}}) + "\\n")
if me.name == "claude":
    print(json.dumps({{"type": "result", "subtype": "success", "is_error": False, "num_turns": 2,
                      "result": "Wrote spec.md", "total_cost_usd": 0.0123,
                      "usage": {{"input_tokens": 1200, "output_tokens": 340, "cache_read_input_tokens": 0}},
                      "modelUsage": {{"claude-sonnet-4-5": {{"costUSD": 0.0123}}}}}}))
else:
    print(json.dumps({{"type": "turn.completed", "usage": {{"input_tokens": 50, "output_tokens": 7}}}}))
"""


def stubs(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        path = folder / name
        path.write_text(STUB.format(python=sys.executable))
        path.chmod(0o755)
    return folder


def test_a_runner_runs_the_phase_agents_presets(served_api: ServedApi, tmp_path: Path) -> None:
    bin_dir = stubs(tmp_path / "bin", "claude", "codex")
    direction = "Write the spec; keep 'quotes', \"these\" and $(rm -rf /) as text\n--help is no flag"
    with ApiClient(served_api.url, token="", retries=0) as client:
        spec = client.create_task(direction, "spec")
        review = client.create_task("Review the spec", "review")
        done = RunnerProcess(served_api.home, served_api.url, "--once", "--workers", "2", env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COHERENCE_AGENT": "claude",
            "COHERENCE_AGENT_MODEL": "sonnet", "COHERENCE_AGENT_REVIEW": "codex",
            "COHERENCE_AGENT_COMMAND": "must-not-run {prompt_file}"}).run()
        assert done.returncode == 0, done.stdout + done.stderr
        spec, review = client.get_task(spec.id), client.get_task(review.id)
    assert (spec.status, review.status) == ("completed", "completed")
    calls = {c["agent"]: c for c in map(json.loads, (bin_dir / "calls.jsonl").read_text().splitlines())}
    assert calls["claude"]["argv"] == ["-p", "--output-format", "json", "--permission-mode", "acceptEdits", "--model",
                                       "sonnet", "--allowedTools", "Read", "Edit", "Write", "Bash", "Glob", "Grep",
                                       "--", direction]
    assert calls["codex"]["argv"] == ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check", "--",
                                      "Review the spec"]  # claude's model is not codex's
    assert (calls["claude"]["task"], calls["codex"]["task"]) == (str(spec.id), str(review.id))
    assert calls["claude"]["cwd"] == str(served_api.home.parent)  # COHERENCE_WORKSPACE
    # what the runner kept of each run is enough to read its usage
    assert read_usage("claude", spec.output) == Usage(1200, 340, 0.0123)
    assert read_usage("codex", review.output) == Usage(50, 7, None)


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
