"""Console sessions: a signed cookie holding who signed in and until when, and the CSRF token derived from it,
both signed by itsdangerous (HMAC-SHA256, a salt per purpose, constant-time checks).

With COHERENCE_API_TOKEN set, the signing key is derived from the token, so rotating the token signs everyone out
and every API replica with the same token accepts the same cookie. Without a token (a loopback-only API) the key is
derived from a secret generated once under var/run/ (console_session_key), shared by the API's workers: the console
is open, but forms still carry a CSRF token, since any web page the operator visits could otherwise post to
127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadData, Signer, URLSafeSerializer

from coherence_network.setting_values import derived_key

COOKIE = "coherence_session"
DEFAULT_IDENTITY = "operator"
MAX_IDENTITY_CHARS = 64


def key_from_token(token: str) -> bytes:
    """The signing key of a token: never the token itself, so a leaked cookie reveals nothing usable as a token."""
    return derived_key(token, "coherence-console-session-v1")


@dataclass(frozen=True)
class Session:
    """A verified session: who (as typed at sign-in), its expiry (epoch seconds) and its random nonce."""

    identity: str
    expires: int
    nonce: str


def clean_identity(typed: str) -> str:
    """The name recorded as decided_by (``console:<name>``): printable, short, "operator" when left empty."""
    name = "".join(ch for ch in typed.strip() if ch.isprintable())[:MAX_IDENTITY_CHARS]
    return name or DEFAULT_IDENTITY


class Sessions:
    """Issues and verifies session cookies and CSRF tokens with one key (a salt apiece, so neither passes for the
    other)."""

    def __init__(self, key: bytes, lifetime_seconds: float, token: str | None = None) -> None:
        self.key = key
        self.lifetime = lifetime_seconds
        self._token_digest = hashlib.sha256(token.encode()).digest() if token else None
        self._cookies = URLSafeSerializer(key, salt="coherence-console-session",
                                          signer_kwargs={"digest_method": hashlib.sha256})
        self._csrf = Signer(key, salt="coherence-console-csrf", digest_method=hashlib.sha256)

    def token_ok(self, given: bytes) -> bool:
        """The token check of sign-in and of the API's bearer header: compared as digests, so the time taken says
        nothing about the token's length or content."""
        if self._token_digest is None:
            return True
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._token_digest)

    def issue(self, identity: str, now: float | None = None) -> str:
        """A cookie value: the signed payload (who, expiry, a random nonce)."""
        return self._cookies.dumps({"who": clean_identity(identity), "exp": int((now or time.time()) + self.lifetime),
                                    "nonce": secrets.token_hex(8)})

    def verify(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie, or None if it is missing, forged, signed with another key or expired."""
        if not cookie:
            return None
        try:
            payload = self._cookies.loads(cookie)
            session = Session(identity=str(payload["who"]), expires=int(payload["exp"]), nonce=str(payload["nonce"]))
        except (BadData, ValueError, KeyError, TypeError):
            return None
        return session if session.expires > (now or time.time()) else None

    @staticmethod
    def _csrf_value(session: Session) -> str:
        return f"{session.nonce}:{session.expires}"

    def csrf_token(self, session: Session) -> str:
        """Per session: a page rendered for one session is useless to another (or to a forged form)."""
        return self._csrf.get_signature(self._csrf_value(session)).decode()

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        """Whatever text a form delivers (non-ASCII too) is checked in constant time, never raises."""
        return given is not None and self._csrf.verify_signature(self._csrf_value(session),
                                                                 given.encode("utf-8", "replace"))


def local_path(target: str | None, default: str = "/") -> str:
    """``next`` after sign-in, only when it is a path on this site: "/x" but never "//host", "/\\host" or a URL."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ch in target for ch in "\r\n\t\\") or ":" in target.split("?", 1)[0]:
        return default
    return target
