"""Reads docs/RUNBOOK.md into the parts the runbook tests check: sections, tables, code blocks, drills, links."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"

ENV_VAR = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DRILL_MARK = re.compile(r"<!--\s*drill:\s*([\w-]+)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class CodeBlock:
    lang: str
    text: str
    section: str
    drill: str | None

    def commands(self) -> list[str]:
        """Command lines of a shell block: continuations joined, comments and blank lines dropped."""
        lines: list[str] = []
        pending = ""
        for raw in self.text.splitlines():
            line = raw.rstrip()
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            lines.append((pending + line).strip())
            pending = ""
        return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


class Runbook:
    def __init__(self, path: Path = RUNBOOK) -> None:
        self.path = path
        self.text = path.read_text(encoding="utf-8")

    @cached_property
    def sections(self) -> dict[str, str]:
        """Level-2 sections by heading, with their text (sub-sections included)."""
        found: dict[str, str] = {}
        current = None
        for line in self.text.splitlines():
            if line.startswith("## "):
                current = line[3:].strip()
                found[current] = ""
            elif current is not None:
                found[current] += line + "\n"
        return found

    @cached_property
    def anchors(self) -> set[str]:
        return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", self.text, re.M)}

    def table(self, section: str) -> list[list[str]]:
        """Rows (cells stripped, backticks removed) of the first table in a section, header and rule excluded."""
        rows = [line for line in self.sections[section].splitlines() if line.strip().startswith("|")]
        cells = [[c.strip().strip("`").strip() for c in row.strip().strip("|").split("|")] for row in rows]
        return [row for row in cells[2:]]

    @cached_property
    def code_blocks(self) -> list[CodeBlock]:
        blocks: list[CodeBlock] = []
        section, drill, lang, body = "", None, None, []
        for line in self.text.splitlines():
            if lang is None:
                if line.startswith("## "):
                    section = line[3:].strip()
                mark = DRILL_MARK.search(line)
                if mark:
                    drill = mark.group(1)
                    continue
                fence = FENCE.match(line)
                if fence:
                    lang, body = fence.group(1) or "text", []
                elif line.strip():
                    drill = None
            elif FENCE.match(line) and line.strip() == "```":
                blocks.append(CodeBlock(lang, "\n".join(body) + "\n", section, drill))
                lang, drill = None, None
            else:
                body.append(line)
        return blocks

    def drill(self, name: str) -> CodeBlock:
        matches = [b for b in self.code_blocks if b.drill == name]
        assert len(matches) == 1, f"the runbook must hold exactly one block marked <!-- drill: {name} -->"
        return matches[0]

    def shell_commands(self) -> list[str]:
        return [cmd for b in self.code_blocks if b.lang in ("sh", "bash", "shell") for cmd in b.commands()]

    @cached_property
    def env_vars(self) -> set[str]:
        return set(ENV_VAR.findall(self.text))

    @cached_property
    def links(self) -> list[str]:
        return LINK.findall(self.text)
