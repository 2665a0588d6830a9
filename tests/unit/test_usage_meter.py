"""The usage meter reads a run's usage as lines stream by: what the whole output would say, kept however long the
output, summed or last-wins as each preset reports, and the task cap judged on the cost so far."""

from __future__ import annotations

import json

from coherence_network.agents import Usage, read_usage
from coherence_network.usage_meter import UsageMeter


def _fed(agent: str | None, output: str, cap: float = 0.0) -> UsageMeter:
    meter = UsageMeter(agent, cap)
    for line in output.splitlines(keepends=True):
        meter.feed(line)
    return meter


def test_codex_turns_are_summed_as_they_stream_and_agree_with_the_whole_output() -> None:
    turn = {"type": "turn.completed", "usage": {"input_tokens": 100, "output_tokens": 7}}
    output = "".join(json.dumps(turn) + "\n" + "noise\n" * 50 for _ in range(4))
    meter = _fed("codex", output)
    assert meter.usage == Usage(400, 28, None) == read_usage("codex", output)


def test_a_pretty_printed_result_is_read_as_a_block() -> None:
    result = {"response": "done", "stats": {"models": {"g": {"tokens": {"prompt": 50, "candidates": 5}}}}}
    output = "thinking\n" + json.dumps(result, indent=2) + "\n"
    assert _fed("gemini", output).usage == Usage(50, 5, None)


def test_the_last_usage_line_counts_and_a_command_reads_only_usage_lines() -> None:
    lines = ('COHERENCE_USAGE {"cost_usd": 0.1}\n{"type": "result", "total_cost_usd": 9}\n'
             'COHERENCE_USAGE {"cost_usd": 0.3, "input_tokens": 12}\nCOHERENCE_USAGE {not json}\n')
    meter = _fed(None, lines)
    assert meter.usage == Usage(12, None, 0.3) and meter.cost_usd == 0.3


def test_the_cap_is_passed_only_by_a_cost_above_it() -> None:
    assert _fed(None, 'COHERENCE_USAGE {"cost_usd": 0.5}\n', cap=0.5).over_cap() is None
    assert _fed(None, 'COHERENCE_USAGE {"cost_usd": 0.5}\n', cap=0.0).over_cap() is None  # 0: no cap
    said = _fed(None, 'COHERENCE_USAGE {"cost_usd": 0.51}\n', cap=0.5).over_cap()
    assert said is not None and "$0.5100" in said and "COHERENCE_COST_CAP_TASK_USD" in said
    assert _fed("claude", "no usage at all\n", cap=0.1).over_cap() is None
