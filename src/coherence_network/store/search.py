"""Free-text search of tasks: what a person types, read as words and matched through each store's own index.

The index is revision 0009's (SQLite FTS5; PostgreSQL a table of 'simple' tsvectors under a GIN index). Text is
never handed to either query language as syntax: on SQLite each word is quoted as an FTS5 string, on PostgreSQL the
words go to plainto_tsquery as a bound parameter. So quotes, ``*``, ``-``, ``OR`` or ``NEAR(`` are searched as
words (or, being punctuation, ignored), never obeyed. Every word must match (AND); the last one also matches as a
prefix when it has at least ``MIN_PREFIX`` letters or digits, so a search finds tasks while the word is still being
typed.
"""

from __future__ import annotations

import re

import sqlalchemy as sa

from coherence_network.store.schema import tasks

MAX_QUERY_CHARS = 500  # what the API and the console accept; longer text is refused there, cut here
MIN_PREFIX = 3
# A search counts its matches up to this many and one more: an exact count of a word in most of 100,000 tasks reads
# most of the index (PostgreSQL: 60-120 ms), where "more than 1,000" is what a person refining a search needs.
COUNT_CAP = 1000
_HAS_WORD = re.compile(r"[^\W_]")  # a chunk worth searching holds a letter or a digit
_PLAIN_WORD = re.compile(r"[^\W_]+")  # only such a word is safe to hand to to_tsquery with ':*'
FTS_TABLE = sa.table("tasks_fts", sa.column("rowid", sa.Integer))
PG_TABLE = sa.table("task_search", sa.column("task_id", sa.Integer))


def search_words(text: str) -> list[str]:
    """The whitespace-separated chunks of ``text`` that hold a letter or a digit (NUL is refused: no store keeps it)."""
    if "\x00" in text:
        raise ValueError("search text must not contain NUL characters")
    return [chunk for chunk in text[:MAX_QUERY_CHARS].split() if _HAS_WORD.search(chunk)]


def _prefix(words: list[str]) -> bool:
    return bool(words) and _PLAIN_WORD.fullmatch(words[-1]) is not None and len(words[-1]) >= MIN_PREFIX


def fts5_query(words: list[str]) -> str:
    """An FTS5 MATCH expression: each word a quoted string (its quotes doubled), the last a prefix if long enough."""
    quoted = " ".join('"' + word.replace('"', '""') + '"' for word in words)
    return quoted + ("*" if _prefix(words) else "")


def search_condition(postgres: bool, text: str, *,
                     ids: sa.ColumnElement[int] = tasks.c.id) -> sa.ColumnElement[bool]:
    """A condition on ``tasks``: the tasks whose direction, output or question hold every word of ``text`` (``ids``
    in them: ``tasks.id`` itself, or an expression of it that keeps SQLite from looking the matches up by id).

    Text without a word (only punctuation or spaces) matches nothing."""
    words = search_words(text)
    if not words:
        return sa.false()
    if not postgres:
        return ids.in_(sa.select(FTS_TABLE.c.rowid).where(_fts5_match(words)))
    return ids.in_(pg_matches(words))


def pg_matches(words: list[str]) -> sa.Select[tuple[int]]:
    """PostgreSQL: the ids of the tasks holding every word, from the GIN index (the words as search_words gives)."""
    if _prefix(words):
        query = "plainto_tsquery('simple', :b_words) && to_tsquery('simple', :b_prefix || ':*')"
        params = {"b_words": " ".join(words[:-1]), "b_prefix": words[-1]}
    else:
        query, params = "plainto_tsquery('simple', :b_words)", {"b_words": " ".join(words)}
    return sa.select(PG_TABLE.c.task_id).where(sa.text(f"document @@ ({query})").bindparams(**params))


def _fts5_match(words: list[str]) -> sa.TextClause:
    return sa.text("tasks_fts MATCH :b_search").bindparams(b_search=fts5_query(words))


def fts5_match(text: str) -> sa.TextClause | sa.ColumnElement[bool]:
    """SQLite: the MATCH on the FTS5 table itself, for queries that read it directly (FTS_TABLE in their FROM)."""
    words = search_words(text)
    return _fts5_match(words) if words else sa.false()
