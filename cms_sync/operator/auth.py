"""Who may use the operator page, and proof that a form came from it.

- **Login.** The operator types ``CMS_SYNC_OPERATOR_TOKEN`` once; the page answers with a
  session cookie signed with a key derived from that token (so every replica accepts it,
  and changing the token logs everyone out). The cookie is HttpOnly, SameSite=Strict,
  scoped to ``/operator`` and Secure unless turned off for plain-HTTP local use. It holds
  no secret: when the session began and its CSRF token.
- **CSRF.** Every state-changing request is a POST carrying the session's CSRF token, in
  the form (``csrf``) or in the ``x-csrf-token`` header; it is compared in constant time.
- **Failed logins** are limited per client address (:class:`LoginLimiter`): past the limit
  the login answers 429 with ``Retry-After``, whatever the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

#: The session cookie's name.
COOKIE = "cms_sync_operator"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


def session_key(token: str) -> str:
    """The cookie-signing key: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"cms-sync operator session v1", hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    """Constant time, and the same time whatever the length of ``given``."""
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode()).digest(), digest(token.encode()).digest())


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's CSRF token (made on first use)."""
    value = session.get(CSRF_FIELD)
    if not isinstance(value, str) or not value:
        value = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return value


def csrf_ok(session: MutableMapping[str, Any], given: str | None) -> bool:
    expected = session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not expected or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def log_in(session: MutableMapping[str, Any], *, now: float) -> None:
    """A fresh session: a new CSRF token, so one seen before the login is worth nothing."""
    session.clear()
    session["since"] = now
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def logged_in(session: MutableMapping[str, Any]) -> bool:
    # The cookie's signature and age are the middleware's; this says whether one logged in.
    return isinstance(session.get("since"), (int, float))


@dataclass
class LoginLimiter:
    """At most ``failures`` failed logins per client address in ``window`` seconds.

    Remembers at most ``max_clients`` addresses (the oldest are forgotten first), so a
    flood of addresses cannot grow it without bound.
    """

    failures: int = 5
    window: float = 300.0
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _seen: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None if it may now."""
        recent = self._recent(client)
        if len(recent) < self.failures:
            return None
        return max(recent[0] + self.window - self.clock(), 1.0)

    def failed(self, client: str) -> None:
        recent = self._recent(client)
        recent.append(self.clock())
        self._seen[client] = recent
        self._seen.move_to_end(client)
        while len(self._seen) > self.max_clients:
            self._seen.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._seen.pop(client, None)

    def _recent(self, client: str) -> list[float]:
        cutoff = self.clock() - self.window
        return [t for t in self._seen.get(client, []) if t > cutoff]
