"""The runner's pure parts: the argv it builds, the lease it keeps pace with, the output it keeps, how it names a
failure."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from coherence_network.contract import Task
from coherence_network.run_outcome import SUMMARY_CHARS, RunEnd, failure_of
from coherence_network.settings import Settings
from coherence_network.task_env import build_argv
from coherence_network.task_run import CLAIM_MARGIN, Claim, TaskRun, lease_of


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(coherence_home=tmp_path / "home", **values)


def task(**fields: Any) -> Task:
    now = datetime.now(UTC)
    return Task.model_validate({"id": 7, "task_type": "spec", "status": "running", "direction": "Write the spec",
                                "created_at": now, "updated_at": now, **fields})


def test_a_command_is_split_never_given_to_a_shell(tmp_path: Path) -> None:
    argv = build_argv(task(task_type="run", command="python -c 'print(1); print(2)' '$(rm -rf /)'"), settings(tmp_path),
                      tmp_path)
    assert argv == ["python", "-c", "print(1); print(2)", "$(rm -rf /)"]


def test_the_template_gets_the_prompt_as_a_file_or_one_argument(tmp_path: Path) -> None:
    direction = "Ship it; `reboot` && $(rm -rf /)"
    conf = settings(tmp_path, coherence_agent_command="claude -p {prompt_file} --append {prompt}")
    argv = build_argv(task(direction=direction, decision="yes"), conf, tmp_path / "prompts")
    prompt_file = tmp_path / "prompts" / "prompt_7.md"
    prompt = prompt_file.read_text()
    assert prompt.startswith(direction) and "The operator decided: yes" in prompt
    assert argv == ["claude", "-p", str(prompt_file), "--append", prompt]


@pytest.mark.parametrize(
    ("fields", "template", "reason"),
    [
        ({"task_type": "spec"}, "", "COHERENCE_AGENT_COMMAND is not set"),
        ({"task_type": "run"}, "claude -p {prompt_file}", "a run task needs a command"),
    ],
)
def test_no_command_is_a_clear_error(tmp_path: Path, fields: dict[str, Any], template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        build_argv(task(**fields), settings(tmp_path, coherence_agent_command=template), tmp_path)


def test_heartbeats_follow_the_lease_the_api_granted() -> None:
    granted = task(started_at="2026-11-25T08:00:00+00:00", lease_expires_at="2026-11-25T08:00:02.5+00:00")
    assert lease_of(granted, 60.0) == 2.5
    assert lease_of(task(), 60.0) == 60.0


def test_a_claim_starts_only_within_its_lease_less_the_margin() -> None:
    """Judged by this host's monotonic clock from the claim's answer, with the lease the API granted (2.5 s here,
    though this runner's own setting says 60 s): a claim that waited past 3/4 of it may have expired."""
    granted = task(started_at="2026-11-25T08:00:00+00:00", lease_expires_at="2026-11-25T08:00:02.5+00:00")
    assert Claim(granted, 100.0).usable_until(60.0) == 100.0 + 2.5 * (1 - CLAIM_MARGIN)
    assert Claim(task(), 100.0).usable_until(60.0) == 100.0 + 60.0 * (1 - CLAIM_MARGIN)


def test_the_output_tail_is_bounded_and_the_question_found(tmp_path: Path) -> None:
    run = TaskRun(Claim(task(), 0.0), settings(tmp_path, coherence_output_tail_bytes=256), "runner")
    for number in range(100):
        run._keep(f"line {number:03d} " + "x" * 20 + "\n")
    run._keep("  NEEDS_DECISION: Which database?\n")
    assert run.tail_bytes <= 256 and "".join(run.tail).endswith("NEEDS_DECISION: Which database?\n")
    assert run.question == "Which database?" and run.last_line == "NEEDS_DECISION: Which database?"


def test_a_question_inside_an_agents_json_report_is_found(tmp_path: Path) -> None:
    """Claude Code's --output-format json carries the agent's last message as one JSON string: the protocol's line
    sits behind an escaped newline there, never at the start of an output line."""
    run = TaskRun(Claim(task(), 0.0), settings(tmp_path), "runner")
    run._keep('{"type": "result", "result": "I looked.\\nNEEDS_DECISION: Which database?", "usage": {}}\n')
    assert run.question == "Which database?"
    plain = TaskRun(Claim(task(), 0.0), settings(tmp_path), "runner")
    plain._keep('{"note": "a JSON line that says NEEDS_DECISION: only inside a field it does not speak in"}\n')
    plain._keep("not a question: NEEDS_DECISION: mid-line\n")
    assert plain.question is None


@pytest.mark.parametrize(("end", "expected"), [
    (RunEnd(2, "error: no such file"), ("nonzero_exit", "exit 2: error: no such file")),
    (RunEnd(1, ""), ("nonzero_exit", "exit 1")),
    (RunEnd(1, "", agent=True), ("agent_error", "the agent exited 1 without output")),
    (RunEnd(-9, "working"), ("killed", "killed by SIGKILL: working")),
    (RunEnd(-15, "half", timed_out=True, timeout=2.5), ("timeout", "timed out after 2.5s: half")),
    (RunEnd(None, "", not_started="no such program"), ("config_error", "not started: no such program")),
    (RunEnd(-15, "Continue?", stalled=1800.4), ("stalled", "stalled: no output for 1800s, stopped: Continue?")),
    (RunEnd(-15, "x", cancelled="cancelled by cli:a:  too\nlong"), ("cancelled", "cancelled by cli:a: too long")),
])
def test_every_failure_has_a_category_and_one_line(end: RunEnd, expected: tuple[str, str]) -> None:
    assert failure_of(end) == expected


def test_a_summary_stays_one_short_line() -> None:
    category, summary = failure_of(RunEnd(3, "x" * 2000))
    assert category == "nonzero_exit" and len(summary) == SUMMARY_CHARS and "\n" not in summary
