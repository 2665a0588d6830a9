"""Bulk actions in two steps, shared by the JSON API and the console: a preview counts what an action would take
and signs that (a token), and only an act that brings the token back moves anything.

The token binds the act to what the preview showed: the action, a digest of the filter (as given, times in UTC),
the count, the newest task matched (the act takes nothing newer, so a task created after the preview is never
touched), a random key naming the preview and its expiry (BULK_TOKEN_SECONDS). It is signed with itsdangerous
(HMAC-SHA256, a salt of its own) under a key derived like the console's: from COHERENCE_API_TOKEN when set, so
every replica with that token accepts every other's tokens and a restart keeps them; else from this home's
generated console_session_key, shared by the API's workers (a loopback-only API is one host). A token for another
action or filter, tampered with or signed under another key is refused (422), an expired one too (409: preview
again)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

from coherence_network.contract_steering import BULK_SAMPLE, BULK_STATUSES, BULK_TOKEN_SECONDS, BulkAction
from coherence_network.errors import CoherenceError
from coherence_network.logfiles import RUN_FILES, shared_secret
from coherence_network.request_bodies import BulkActRequest, BulkFilter, BulkPreviewRequest
from coherence_network.setting_values import derived_key
from coherence_network.settings import Settings
from coherence_network.store import TaskStore
from coherence_network.store.bulk import Selection

log = logging.getLogger("coherence.api")


class BulkRefused(CoherenceError):
    """A token that cannot act: ``status`` 422 (not this preview's, or forged) or 409 (expired)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def filter_terms(given: BulkFilter) -> dict[str, Any]:
    """The filter as the token's digest and the audit record spell it: only what was given, times in UTC."""
    terms = given.model_dump(mode="json", exclude_none=True)
    for name in ("created_before", "created_after"):
        moment: datetime | None = getattr(given, name)
        if moment is not None:
            terms[name] = moment.astimezone(UTC).isoformat()
    return terms


def _digest(action: BulkAction, given: BulkFilter) -> str:
    canonical = json.dumps([action.value, filter_terms(given)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def selection_of(body: BulkPreviewRequest) -> Selection:
    """The store's selection of a request: the filter's status, else every status the action can move."""
    given = body.filter
    statuses = (given.status,) if given.status is not None else BULK_STATUSES[body.action]
    return Selection(statuses=tuple(s.value for s in statuses), task_type=given.type.value if given.type else None,
                     created_before=given.created_before, created_after=given.created_after, text=given.text)


class BulkTokens:
    """Issues and checks preview tokens under one key."""

    def __init__(self, key: bytes, lifetime_seconds: float = BULK_TOKEN_SECONDS) -> None:
        self.lifetime = lifetime_seconds
        self._serializer = URLSafeSerializer(key, salt="coherence-bulk-preview",
                                             signer_kwargs={"digest_method": hashlib.sha256})

    @classmethod
    def for_settings(cls, settings: Settings) -> BulkTokens:
        """The key every replica (with the API token) or every worker of this home (without one) shares."""
        secret = settings.coherence_api_token or shared_secret(RUN_FILES["console_session_key"].path(settings))
        return cls(derived_key(secret, "coherence-bulk-preview-v1"))

    def issue(self, body: BulkPreviewRequest, count: int, max_id: int | None,
              now: float | None = None) -> tuple[str, datetime]:
        """A token for one act of what this preview counted, and when it expires."""
        expires = int((now or time.time()) + self.lifetime)
        token = self._serializer.dumps({"d": _digest(body.action, body.filter), "n": count, "m": max_id,
                                        "k": secrets.token_urlsafe(12), "exp": expires})
        return str(token), datetime.fromtimestamp(expires, UTC)

    def verify(self, body: BulkActRequest, now: float | None = None) -> dict[str, Any]:
        """The claims of the act's token ({n: count, m: max id, k: key}), or BulkRefused saying why not."""
        try:
            claims = self._serializer.loads(body.token)
            expires = int(claims["exp"])
            fields = {"n": int(claims["n"]), "m": None if claims["m"] is None else int(claims["m"]),
                      "k": str(claims["k"]), "d": str(claims["d"])}
        except (BadData, KeyError, TypeError, ValueError):
            raise BulkRefused(422, "the token is not a preview token this API issued (altered, cut short or "
                                   "signed under another key): preview again") from None
        if fields["d"] != _digest(body.action, body.filter):
            raise BulkRefused(422, f"the token is for another action or filter than {body.action.value} of "
                                   f"{json.dumps(filter_terms(body.filter), sort_keys=True)}: preview this one")
        if expires <= (now or time.time()):
            raise BulkRefused(409, f"the preview expired (a token acts within {int(self.lifetime)} s): preview "
                                   "again")
        return fields


def preview(store: TaskStore, tokens: BulkTokens, body: BulkPreviewRequest) -> dict[str, Any]:
    """What the action would take now (count, newest id, a sample) and the token to act on it."""
    found = store.bulk_preview(selection_of(body), BULK_SAMPLE)
    token, expires = tokens.issue(body, found["count"], found["max_id"])
    return {"action": body.action, **found, "token": token, "expires_at": expires}


def act(store: TaskStore, tokens: BulkTokens, body: BulkActRequest, actor: str) -> dict[str, Any]:
    """Do what the token's preview counted, once: {action, previewed, acted, skipped, changed, repeated}."""
    claims = tokens.verify(body)
    result = store.bulk_act(body.action.value, selection_of(body), claims["m"], actor=actor, reason=body.reason,
                            key=claims["k"], previewed=claims["n"], detail={"filter": filter_terms(body.filter)})
    if not result["repeated"]:
        log.warning("bulk %s by %s of %s: acted on %d of %d previewed (%d skipped): %s", body.action.value, actor,
                    json.dumps(filter_terms(body.filter)), result["acted"], result["previewed"], result["skipped"],
                    body.reason)
    return {"action": body.action, **result}
