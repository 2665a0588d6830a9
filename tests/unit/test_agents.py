"""Agent presets: the argv each CLI gets (no shell, the prompt whole), the usage read from what it prints, the agent
and model each phase runs, and doctor's check that they are installed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from coherence_network.agents import AGENT_NAMES, PRESETS, Usage, line_usage, messages, read_usage, said
from coherence_network.contract import Task
from coherence_network.doctor import agent_check
from coherence_network.manager import verdict
from coherence_network.settings import Settings
from coherence_network.task_env import build_argv

HOSTILE = "--help\n'quoted' \"double\" $(rm -rf /) `reboot`; && | > x\n\ttab ünïcode"

# What Claude Code 2.1.197 printed for `-p ... --output-format json` against a scripted model server, one line.
CLAUDE_RESULT = {
    "type": "result", "subtype": "success", "is_error": False, "duration_ms": 231, "num_turns": 2,
    "result": "Wrote spec.md", "session_id": "5f0c", "total_cost_usd": 0.0123,
    "usage": {"input_tokens": 1200, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
              "output_tokens": 340},
    "modelUsage": {"claude-sonnet-4-5": {"inputTokens": 1200, "outputTokens": 340, "costUSD": 0.0123}},
}


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(coherence_home=tmp_path / "home", **values)


def task(**fields: Any) -> Task:
    now = datetime.now(UTC)
    return Task.model_validate({"id": 9, "task_type": "impl", "status": "running", "direction": HOSTILE,
                                "created_at": now, "updated_at": now, **fields})


EXPECTED = {
    "claude": ["claude", "-p", "--output-format", "json", "--permission-mode", "acceptEdits", "--model", "m1",
               "--allowedTools", "Read", "Edit", "Write", "Bash", "Glob", "Grep", "--", "{prompt}"],
    "codex": ["codex", "exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check", "--model", "m1",
              "--", "{prompt}"],
    "aider": ["aider", "--message-file", "{prompt_file}", "--yes-always", "--no-pretty", "--no-stream",
              "--no-auto-commits", "--no-check-update", "--no-show-release-notes", "--analytics-disable", "--model",
              "m1"],
    "gemini": ["gemini", "--prompt={prompt}", "--output-format", "json", "--approval-mode", "auto_edit", "--model",
               "m1"],
    "opencode": ["opencode", "run", "--format", "json", "--model", "m1", "--", "{prompt}"],
}


@pytest.mark.parametrize("agent", sorted(PRESETS))
def test_each_preset_gets_the_prompt_whole_and_never_a_shell(tmp_path: Path, agent: str) -> None:
    conf = settings(tmp_path, coherence_agent=agent, coherence_agent_model="m1")
    argv = build_argv(task(decision="yes; rm -rf ~"), conf, tmp_path / "prompts")
    prompt_file = tmp_path / "prompts" / "prompt_9.md"
    prompt = prompt_file.read_text(encoding="utf-8")
    assert prompt == HOSTILE + "\n\nThe operator decided: yes; rm -rf ~"
    assert argv == [a.replace("{prompt_file}", str(prompt_file)).replace("{prompt}", prompt)
                    for a in EXPECTED[agent]]
    assert "sh" not in argv[:1] and "-c" not in argv
    # no model set: no --model at all, the CLI's own default
    plain = build_argv(task(), settings(tmp_path, coherence_agent=agent), tmp_path / "prompts")
    assert "--model" not in plain


def test_a_nul_in_the_prompt_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NUL character"):
        PRESETS["claude"].argv("before\x00after", tmp_path / "p.md")


def test_custom_is_the_template_as_before(tmp_path: Path) -> None:
    conf = settings(tmp_path, coherence_agent="custom", coherence_agent_model="ignored",
                    coherence_agent_command="my-agent --in {prompt_file}")
    assert build_argv(task(), conf, tmp_path) == ["my-agent", "--in", str(tmp_path / "prompt_9.md")]
    with pytest.raises(ValueError, match="COHERENCE_AGENT_COMMAND is not set"):
        build_argv(task(), settings(tmp_path, coherence_agent_impl="custom", coherence_agent="claude"), tmp_path)


def test_each_phase_may_run_its_own_agent_and_model(tmp_path: Path) -> None:
    conf = settings(tmp_path, coherence_agent="claude", coherence_agent_model="sonnet", coherence_agent_review="codex",
                    coherence_agent_model_review="gpt-5", coherence_agent_test="aider",
                    coherence_agent_model_impl="opus")
    assert conf.agent_for("spec") == ("claude", "sonnet")
    assert conf.agent_for("impl") == ("claude", "opus")
    assert conf.agent_for("review") == ("codex", "gpt-5")
    assert conf.agent_for("test") == ("aider", "")  # claude's model means nothing to aider
    assert conf.agent_for("heal") == ("claude", "sonnet")
    assert conf.agents_configured == {"claude": ["spec", "impl", "heal"], "aider": ["test"], "codex": ["review"]}
    assert conf.agentless_types == frozenset()
    # only the types left to an unset template cannot run here (the console's create form says so)
    assert settings(tmp_path, coherence_agent_review="claude").agentless_types == {"spec", "test", "impl", "heal"}
    assert settings(tmp_path, coherence_agent_command="agent").agentless_types == frozenset()
    review = build_argv(task(task_type="review"), conf, tmp_path)
    assert review[:2] == ["codex", "exec"] and review[review.index("--model") + 1] == "gpt-5"


def test_an_unknown_agent_is_a_clear_setting_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown agent 'cursor'; one of: claude, codex, aider"):
        settings(tmp_path, coherence_agent_review="cursor")
    assert settings(tmp_path, coherence_agent=" Claude ").coherence_agent == "claude"


def test_claude_code_json_gives_tokens_and_cost() -> None:
    output = "some log line on stderr\n" + json.dumps(CLAUDE_RESULT) + "\n"
    assert read_usage("claude", output) == Usage(1200, 340, 0.0123)


def test_the_other_clis_structured_output_is_summed() -> None:
    codex = "\n".join(json.dumps(e) for e in (
        {"type": "thread.started", "thread_id": "t"},
        {"type": "turn.completed", "usage": {"input_tokens": 100, "cached_input_tokens": 5, "output_tokens": 20}},
        {"type": "turn.completed", "usage": {"input_tokens": 50, "output_tokens": 10}}))
    assert read_usage("codex", codex) == Usage(150, 30, None)
    gemini = json.dumps({"response": "done", "stats": {"models": {
        "gemini-2.5-pro": {"tokens": {"prompt": 900, "candidates": 80, "total": 980}},
        "gemini-2.5-flash": {"tokens": {"prompt": 100, "candidates": 20}}}}}, indent=2)
    assert read_usage("gemini", "Loaded cached credentials.\n" + gemini) == Usage(1000, 100, None)
    opencode = "\n".join(json.dumps(e) for e in (
        {"type": "step_start", "part": {"type": "step-start"}},
        {"type": "step_finish", "part": {"cost": 0.01, "tokens": {"input": 300, "output": 40}}},
        {"type": "step_finish", "part": {"cost": 0.02, "tokens": {"input": 200, "output": 60}}}))
    assert read_usage("opencode", opencode) == Usage(500, 100, pytest.approx(0.03))
    # aider's text report, one per message: tokens as aider rounds them, summed; the session's cost from the last
    aider = ("Applied edit to spec.md\nTokens: 2.1k sent, 151 received. Cost: $0.0094 message, $0.0094 session.\n"
             "Tokens: 12k sent, 1.5k cache write, 900 cache hit, 1.2k received. "
             "Cost: $0.05 message, $0.0594 session.\n")
    assert read_usage("aider", aider) == Usage(14100, 1351, 0.0594)
    assert read_usage("aider", "Tokens: 950 sent, 12 received.\n") == Usage(950, 12, None)  # a model without prices


def test_the_usage_line_works_for_any_agent_and_the_last_one_counts() -> None:
    output = ('working\nCOHERENCE_USAGE {"input_tokens": 1, "output_tokens": 2, "cost_usd": 3}\n'
              'COHERENCE_USAGE {"input_tokens": 10, "output_tokens": 20, "cost_usd": 0.5}\r\ndone\n')
    for agent in AGENT_NAMES:
        assert read_usage(agent, output) == Usage(10, 20, 0.5)
    assert line_usage('COHERENCE_USAGE {"cost_usd": 0.25}') == Usage(None, None, 0.25)


@pytest.mark.parametrize("output", [
    "", "garbage", "{", "{}", "[1, 2]", "null", "\x00\xff", "{" * 5000,
    'COHERENCE_USAGE {"input_tokens": -1, "output_tokens": true, "cost_usd": "1"}',
    'COHERENCE_USAGE {"cost_usd": NaN}', 'COHERENCE_USAGE {"cost_usd": Infinity}', "COHERENCE_USAGE {not json}",
    "COHERENCE_USAGE [1]", ' COHERENCE_USAGE {"input_tokens": 5}',  # only a line of its own counts
    '{"type": "result", "usage": "many", "total_cost_usd": null}', '{"type": "result", "usage": [1]}',
    '{"stats": {"models": {"m": "x"}}}', '{"stats": 3}', '{"type": "turn.completed", "usage": 7}',
    '{"type": "step_finish", "part": {"tokens": null, "cost": -4}}', '{"type": "step_finish", "part": 1}',
    "Tokens: 1.2.3k sent, .k received. Cost: $1.2.3 message, $... session.", "Tokens: sent, received.",
    '{"type": "result", "usage": ' + "[" * 100_000, "COHERENCE_USAGE {\"a\": " + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_garbage_gives_none_never_an_exception(output: str) -> None:
    for agent in AGENT_NAMES:
        assert read_usage(agent, output) is None, agent


def executable(folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_doctor_says_whether_each_agent_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    executable(bin_dir, "claude")
    monkeypatch.setenv("PATH", str(bin_dir))
    conf = settings(tmp_path, coherence_agent="claude", coherence_agent_review="codex")
    missing = agent_check(conf)
    assert not missing.ok and missing.runbook == "#coding-agents"
    assert missing.detail == (f"review: codex not installed (codex is not on PATH); spec/test/impl/heal: claude at "
                              f"{bin_dir / 'claude'}")
    assert missing.command == "npm install -g @openai/codex"
    executable(bin_dir, "codex")
    assert agent_check(conf).ok and "review: codex at" in agent_check(conf).detail
    custom = agent_check(settings(tmp_path, coherence_agent_command="no-such-agent {prompt_file}"))
    assert not custom.ok and "no-such-agent (COHERENCE_AGENT_COMMAND) not found" in custom.detail
    unset = agent_check(settings(tmp_path))
    assert unset.ok and "COHERENCE_AGENT_COMMAND not set" in unset.detail


def test_what_the_agent_said_inside_its_clis_json_reaches_the_line_protocol() -> None:
    claude = json.dumps({**CLAUDE_RESULT, "result": "Reviewed the parser.\nVERDICT: pass"})
    assert "\nVERDICT: pass" not in claude  # escaped inside the JSON string: no line of the output starts with it
    assert verdict(claude) == "pass"
    codex = "\n".join(json.dumps(e) for e in (
        {"type": "item.completed", "item": {"type": "reasoning", "text": "VERDICT: pass"}},  # not its word
        {"type": "item.completed", "item": {"type": "agent_message", "text": "The test fails.\nVERDICT: fail"}}))
    assert verdict(codex) == "fail"
    assert verdict(json.dumps({"response": "ok\nVERDICT: pass", "stats": {}}, indent=2)) == "pass"  # gemini
    opencode = {"type": "text", "part": {"type": "text", "text": "VERDICT: fail"}}
    assert verdict(json.dumps(opencode)) == "fail"
    assert said("plain text\nVERDICT: pass\n") == "plain text\nVERDICT: pass\n"  # a plain output as it is
    assert verdict('{"type": "result", "result": 3}\n{"response": ["VERDICT: pass"], "stats": {}}') is None
    assert messages('{"response": "VERDICT: pass"}\n') == []  # some JSON a plain-text agent printed: not its message
    assert messages(claude + "\n" + codex) == ["Reviewed the parser.\nVERDICT: pass", "The test fails.\nVERDICT: fail"]
