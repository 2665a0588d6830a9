"""Agent presets: how each coding-agent CLI is run without a terminal, and how to read the usage it reports.

``COHERENCE_AGENT`` names one (per phase: ``COHERENCE_AGENT_<PHASE>``). A preset builds an argument list, never a
shell string: the prompt is one argument after ``--`` (so a prompt starting with ``-`` is never read as a flag), or
the prompt file for a CLI that reads one. ``custom`` is the ``COHERENCE_AGENT_COMMAND`` template (task_env).

Sources of the flags (checked 2026-12): Claude Code, a probe of 2.1.197 (``-p`` with
``--output-format json`` prints one JSON result with total_cost_usd and usage; as root only ``--permission-mode
acceptEdits`` with ``--allowedTools`` works, ``--dangerously-skip-permissions`` is refused; this preset's exact argv,
with a prompt starting ``--help`` and holding quotes and newlines, was run against that version and a scripted model
server: the prompt arrived whole, the file was written, the usage read); Codex,
developers.openai.com/codex/noninteractive (``codex exec``, ``--json`` prints JSONL events whose turn.completed
carries usage, ``--sandbox workspace-write`` lets it edit); aider, aider.chat/docs/scripting (``--message-file``,
``--yes-always``; ``--no-auto-commits``: the pipeline commits per phase, with the task id; its usage is the text
line of aider/coders/base_coder.py, tokens rounded by aider/utils.format_tokens); Gemini CLI,
geminicli.com/docs/cli/headless (``--prompt``, ``--output-format json``: one JSON with stats.models.*.tokens);
opencode, opencode.ai/docs/cli (``opencode run``, ``--format json``: JSONL whose step_finish parts carry tokens and
cost).

Any agent, custom included, may report its usage with one line of its own (the last one counts)::

    COHERENCE_USAGE {"input_tokens": 1200, "output_tokens": 340, "cost_usd": 0.0123}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CUSTOM = "custom"
USAGE_LINE = "COHERENCE_USAGE"
_USAGE_RE = re.compile(rf"^{USAGE_LINE}[ \t]+(\{{.*\}})[ \t]*\r?$", re.MULTILINE)


@dataclass(frozen=True)
class Usage:
    """What one run of an agent reports it used; a figure it does not report is None."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None


@dataclass(frozen=True)
class Preset:
    """One CLI: its executable, how to install it, its non-interactive argv and its usage report."""

    name: str
    executable: str
    install: str
    args: Callable[[str, Path, str], list[str]]  # (prompt, prompt file, model or "") -> the arguments after the name
    usage: Callable[[str], Usage | None]  # what the CLI itself prints of its usage; None when nothing readable

    def argv(self, prompt: str, prompt_file: Path, model: str = "") -> list[str]:
        """The argument list to start the agent with; a prompt no argument can carry is refused."""
        if "\x00" in prompt:
            raise ValueError("the prompt holds a NUL character, which no command-line argument can carry")
        return [self.executable, *self.args(prompt, prompt_file, model)]


def _model(flag: str, model: str) -> list[str]:
    return [flag, model] if model else []


def _claude_args(prompt: str, prompt_file: Path, model: str) -> list[str]:
    return ["-p", "--output-format", "json", "--permission-mode", "acceptEdits", *_model("--model", model),
            "--allowedTools", "Read", "Edit", "Write", "Bash", "Glob", "Grep", "--", prompt]


def _codex_args(prompt: str, prompt_file: Path, model: str) -> list[str]:
    return ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check", *_model("--model", model),
            "--", prompt]


def _aider_args(prompt: str, prompt_file: Path, model: str) -> list[str]:
    return ["--message-file", str(prompt_file), "--yes-always", "--no-pretty", "--no-stream", "--no-auto-commits",
            "--no-check-update", "--no-show-release-notes", "--analytics-disable", *_model("--model", model)]


def _gemini_args(prompt: str, prompt_file: Path, model: str) -> list[str]:
    return [f"--prompt={prompt}", "--output-format", "json", "--approval-mode", "auto_edit", *_model("--model", model)]


def _opencode_args(prompt: str, prompt_file: Path, model: str) -> list[str]:
    return ["run", "--format", "json", *_model("--model", model), "--", prompt]


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _cost(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _usage(input_tokens: Any, output_tokens: Any, cost: Any) -> Usage | None:
    usage = Usage(_count(input_tokens), _count(output_tokens), _cost(cost))
    return None if usage == Usage() else usage


def _objects(output: str) -> Iterator[dict[str, Any]]:
    """The JSON objects in an output that begin a line at its first column: JSON Lines, one result line, or a
    pretty-printed object (its nested objects are indented, so they are not read twice); other lines are skipped."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^\{", output, re.MULTILINE):
        try:
            value, _ = decoder.raw_decode(output, match.start())
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read
            continue
        if isinstance(value, dict):
            yield value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _summed(parts: list[tuple[Any, Any, Any]]) -> Usage | None:
    """Usage summed over a CLI's events (turns, steps, models); a figure none of them reports stays None."""
    usages = [u for u in (_usage(*part) for part in parts) if u is not None]
    if not usages:
        return None

    def total(values: list[Any]) -> Any:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    return Usage(total([u.input_tokens for u in usages]), total([u.output_tokens for u in usages]),
                 total([u.cost_usd for u in usages]))


def claude_usage(output: str) -> Usage | None:
    """Claude Code's ``--output-format json`` result: total_cost_usd and usage.input_tokens/output_tokens."""
    results = [o for o in _objects(output) if o.get("type") == "result"]
    if not results:
        return None
    result = results[-1]
    usage = _dict(result.get("usage"))
    return _usage(usage.get("input_tokens"), usage.get("output_tokens"), result.get("total_cost_usd"))


def codex_usage(output: str) -> Usage | None:
    """Codex's ``exec --json`` events: each turn.completed carries that turn's usage (no cost)."""
    return _summed([(u.get("input_tokens"), u.get("output_tokens"), None) for u in
                    (_dict(o.get("usage")) for o in _objects(output) if o.get("type") == "turn.completed")])


def gemini_usage(output: str) -> Usage | None:
    """Gemini CLI's ``--output-format json``: stats.models.<model>.tokens.prompt/candidates (no cost)."""
    models = [_dict(_dict(o.get("stats")).get("models")) for o in _objects(output) if "stats" in o]
    if not models:
        return None
    tokens = [_dict(_dict(m).get("tokens")) for m in models[-1].values()]
    return _summed([(t.get("prompt"), t.get("candidates"), None) for t in tokens])


def opencode_usage(output: str) -> Usage | None:
    """opencode's ``run --format json`` events: each step_finish part carries tokens.input/output and cost."""
    parts = [_dict(o.get("part")) for o in _objects(output) if o.get("type") == "step_finish"]
    return _summed([(_dict(p.get("tokens")).get("input"), _dict(p.get("tokens")).get("output"), p.get("cost"))
                    for p in parts])


_AIDER_RE = re.compile(r"^Tokens: ([\d.]+k?) sent(?:, [\d.]+k? cache (?:write|hit))*, ([\d.]+k?) received\."
                       r"(?: Cost: \$[\d.]+ message, \$([\d.]+) session\.)?", re.MULTILINE)


def _aider_number(text: str) -> float | None:
    """A figure as aider prints it: 950, 1.2k, 12k, 0.0123."""
    try:
        return float(text[:-1]) * 1000 if text.endswith("k") else float(text)
    except ValueError:
        return None


def _aider_tokens(text: str) -> int | None:
    value = _aider_number(text)
    return None if value is None else round(value)


def aider_usage(output: str) -> Usage | None:
    """aider's text report after each message (``Tokens: 1.2k sent, 300 received. Cost: $0.01 message, $0.02
    session.``): tokens summed over the messages, as aider rounds them (1.2k is 1200), and the session's cost from
    the last report (aider's session is this run)."""
    reports = _AIDER_RE.findall(output)
    if not reports:
        return None
    tokens = _summed([(_aider_tokens(sent), _aider_tokens(received), None) for sent, received, _ in reports])
    session = reports[-1][2]
    return _usage(tokens.input_tokens if tokens else None, tokens.output_tokens if tokens else None,
                  _aider_number(session) if session else None)


def line_usage(output: str) -> Usage | None:
    """The last ``COHERENCE_USAGE {...}`` line: input_tokens, output_tokens, cost_usd (any may be left out)."""
    for found in reversed(_USAGE_RE.findall(output)):
        try:
            value = json.loads(found)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read
            continue
        if isinstance(value, dict):
            return _usage(value.get("input_tokens"), value.get("output_tokens"), value.get("cost_usd"))
    return None


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("claude", "claude", "npm install -g @anthropic-ai/claude-code", _claude_args, claude_usage),
    Preset("codex", "codex", "npm install -g @openai/codex", _codex_args, codex_usage),
    Preset("aider", "aider", "pip install aider-chat   (or: pipx install aider-chat)", _aider_args, aider_usage),
    Preset("gemini", "gemini", "npm install -g @google/gemini-cli", _gemini_args, gemini_usage),
    Preset("opencode", "opencode", "npm install -g opencode-ai", _opencode_args, opencode_usage),
)}
AGENT_NAMES = (*PRESETS, CUSTOM)


def _message(event: dict[str, Any]) -> Any:
    """The agent's own words in one event of its CLI's JSON: Claude Code's result, Gemini CLI's response, a Codex
    agent_message item, an opencode text part (the sources in this module's docstring); anything else None."""
    item, part = _dict(event.get("item")), _dict(event.get("part"))
    if event.get("type") == "result":
        return event.get("result")
    if event.get("type") == "item.completed" and item.get("type") == "agent_message":
        return item.get("text")
    if event.get("type") == "text":
        return part.get("text")
    return event.get("response") if "stats" in event else None


def messages(output: str) -> list[str]:
    """What the agent said, in order, when its CLI reports in JSON; empty for a CLI that prints plain text."""
    return [m for m in map(_message, _objects(output)) if isinstance(m, str) and m]


def said(output: str) -> str:
    """The output with what the agent said inside its CLI's JSON appended as plain lines: a CLI that reports in JSON
    carries the agent's last message as a JSON string, where a line of the agent protocol (``VERDICT: pass``) sits
    behind an escaped newline and never starts a line of the output."""
    return "\n".join([output, *messages(output)])


def read_usage(agent: str, output: str) -> Usage | None:
    """What a run of ``agent`` reports it used: the CLI's structured output where it has one, else the
    COHERENCE_USAGE line; None when neither says anything readable. Never raises on what an agent printed."""
    preset = PRESETS.get(agent)
    found = preset.usage(output) if preset else None
    return found or line_usage(output)
