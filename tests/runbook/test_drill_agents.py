"""Drill: the Coding agents section's end-to-end check of Claude Code, command by command from the runbook, with
the installed CLI pointed at a scripted model server on 127.0.0.1 (it stands in for Anthropic's API)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from tests.runbook.drill import Drill
from tests.runbook.runbook_doc import Runbook
from tests.support.api import ServedApi
from tests.support.claude_code import claude_env, claude_or_missing
from tests.support.net import free_port
from tests.support.scripted_model import ScriptedModel
from tests.support.stub_agent import Work


def hello(prompt: str) -> Work | None:
    """What the drill's task asks for."""
    return Work({"hello.txt": "hello\n"}, "Wrote hello.txt") if "Write hello.txt" in prompt else None


@pytest.mark.long
def test_drill_one_agent_task_end_to_end_with_claude_code(tmp_path: Path) -> None:
    claude = claude_or_missing()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    drill = Drill(tmp_path / "home", free_port(), env={"MONITOR_DISK_MIN_FREE_MB": "1"})
    api = ServedApi(drill.home, port=drill.port).start()
    try:
        with ScriptedModel(hello) as model:
            drill.env = {**claude_env(drill.env, claude, model.url, tmp_path / "agent-home"),
                         "COHERENCE_WORKSPACE": str(workspace)}
            version, doctor, create, run, show = Runbook().drill("agent-task").commands()
            assert drill.run(version).stdout.startswith("2.1.")
            assert re.search(rf"^\[OK\] +agent: spec/test/impl/review/heal: claude at {re.escape(str(claude))}$",
                     drill.run(doctor).stdout, re.MULTILINE)
            made = re.match(r"task (\d+): impl, pending", drill.run(create).stdout)
            assert made is not None
            drill.run(run, timeout=120)  # exits 1 when the task failed
            shown = drill.run(show.replace("{id}", made.group(1))).stdout
            assert model.refused == [] and len(model.of_kind("turn")) == 2
        assert (workspace / "hello.txt").read_text() == "hello\n"
        assert '"total_cost_usd"' in shown and "Wrote hello.txt" in shown
        with ApiClient(api.url, token="") as client:
            assert client.get_task(int(made.group(1))).status == "completed"
    finally:
        drill.close()
        api.stop()
