"""The backlog's items and the names they go by: the key (progress survives edits that do not change the item) and
the slug (a branch, a folder and a URL name for the item, as stable as the key)."""

from __future__ import annotations

import re
from pathlib import Path

from coherence_network.backlog import BacklogItem, parse_backlog


def item(text: str, number: int = 1) -> BacklogItem:
    return BacklogItem(number, number, text, None)


def test_the_slug_follows_the_key_not_the_spelling_or_the_number() -> None:
    assert item("Add a login page.").slug == item("add  a LOGIN page", 7).slug
    assert item("Add a login page").slug != item("Add a logout page").slug


def test_the_slug_is_safe_in_a_branch_a_folder_and_a_url_and_short() -> None:
    for text in ("Fix ../../etc/passwd; rm -rf / `x` $(y)", "Ünïcödé only ✓", "!!!", "a" * 4000, "run: echo hi"):
        slug = item(text).slug
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug), slug
        assert len(slug) <= 49


def test_items_that_differ_beyond_the_slugs_words_still_get_their_own_slug() -> None:
    head = "implement the very long feature description that goes on and on "
    assert item(head + "variant one").slug != item(head + "variant two").slug


def test_parsed_items_keep_their_text_and_their_command(tmp_path: Path) -> None:
    path = tmp_path / "backlog.md"
    path.write_text("1. Add a page\n2. run: make build\n")
    backlog = parse_backlog(path)
    assert [(i.text, i.command) for i in backlog.items] == [("Add a page", None), ("run: make build", "make build")]
