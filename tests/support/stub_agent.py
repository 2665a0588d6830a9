"""A small coding agent of the tests' own: it does what each pipeline phase asks of a backlog item, in its working
folder, as a real agent would, in milliseconds.

``plan(prompt)`` is what a phase's prompt (manager.ProjectManager.prompt) calls for: a spec, a unittest, the module
that passes it, a review that runs the item's test and ends in ``VERDICT: pass`` when it passes. The fast pipeline
test runs this file as the agent (COHERENCE_AGENT=custom, ``COHERENCE_AGENT_COMMAND="python stub_agent.py --file
{prompt_file}"``); the real-agent test hands the same plan to the scripted model server, which has Claude Code write
the same files and run the same check. So both tests expect the same repository at the end: one module per item,
whose test passes.

Run as a script it writes the plan's files (relative to its working folder), runs its check, prints its last words
and a ``COHERENCE_USAGE`` line (tokens counted as characters / 4, cost 0), and exits 2 on a prompt it has no plan
for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_ITEM = re.compile(r"^Backlog item \d+: (.+?)\s*$", re.MULTILINE)
_PHASE = re.compile(r"^Phase: (spec|test|impl|review)\b", re.MULTILINE)


@dataclass(frozen=True)
class Work:
    """What an agent does for one prompt: the files it writes (path relative to its working folder -> content), a
    command it then runs there whose success is its verdict (a review running the item's test), and what it says."""

    files: dict[str, str]
    text: str
    check: str = ""  # split like a shell would, run without one

    def final(self, check_passed: bool | None = None) -> str:
        """Its last words: the text, and the verdict when it ran a check."""
        return self.text + ("" if check_passed is None else f"\nVERDICT: {'pass' if check_passed else 'fail'}")


def module_name(item: str) -> str:
    """The python module an item's work lives in: its words, lower case, joined by ``_``."""
    name = "_".join(re.findall(r"[a-z0-9]+", item.lower()))[:40].strip("_") or "item"
    return name if name[0].isalpha() else f"m_{name}"


def plan(prompt: str) -> Work | None:
    """The work a phase prompt of the project manager calls for; None for any other prompt."""
    item, phase = _ITEM.search(prompt), _PHASE.search(prompt)
    if item is None or phase is None:
        return None
    text, name = item.group(1), module_name(item.group(1))
    files = {
        "spec": {f"docs/specs/{name}.md": f"# {text}\n\n`{name}.describe()` returns the item's text, {text!r}.\n"},
        "test": {f"tests/test_{name}.py": (
            f"import unittest\n\nimport {name}\n\n\nclass DescribeTest(unittest.TestCase):\n"
            f"    def test_describe_returns_the_items_text(self):\n"
            f"        self.assertEqual({name}.describe(), {text!r})\n")},
        "impl": {f"{name}.py": f"def describe() -> str:\n    return {text!r}\n"},
        "review": {f"docs/reviews/{name}.md": f"# Review: {text}\n\n{name}.py does what the spec says; its test "
                   f"checks it.\n"},
    }[phase.group(1)]
    check = f"python3 -m unittest discover -s tests -p test_{name}.py" if phase.group(1) == "review" else ""
    return Work(files, f"{phase.group(1)}: wrote {', '.join(files)}", check)


def write(root: Path, relative: str, content: str) -> None:
    """Write one file under ``root`` atomically; a path leaving ``root`` is refused."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{relative} is outside the working folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(content)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, help="read the prompt from this file")
    parser.add_argument("prompt", nargs="?", help="the prompt itself (when --file is not given)")
    args = parser.parse_args(argv)
    if (args.file is None) == (args.prompt is None):
        parser.error("give the prompt either with --file or as the argument")
    prompt = args.file.read_text(encoding="utf-8") if args.file else args.prompt
    work = plan(prompt)
    if work is None:
        print(f"stub agent: no plan for this prompt: {prompt[:200]!r}", file=sys.stderr)
        return 2
    for relative, content in work.files.items():
        write(Path.cwd(), relative, content)
    passed = None
    if work.check:
        checked = subprocess.run(shlex.split(work.check), capture_output=True, text=True, timeout=60)
        print(checked.stdout + checked.stderr, end="")
        passed = checked.returncode == 0
    print(work.final(passed))
    usage = {"input_tokens": len(prompt) // 4, "output_tokens": sum(len(c) for c in work.files.values()) // 4,
             "cost_usd": 0}
    print(f"COHERENCE_USAGE {json.dumps(usage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
