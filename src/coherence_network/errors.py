"""The root of every error this project raises on purpose.

A caller that wants "anything Coherence refused or could not do" catches :class:`CoherenceError`; each module's own
errors subclass it (``ConfigError``, ``ApiError``, ``Conflict``, ``GitError``, ...), so the tree reads from here.
"""

from __future__ import annotations


class CoherenceError(Exception):
    """Something Coherence refused or could not do, with a message meant for the operator."""
