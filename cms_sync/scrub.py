"""Keep secret values out of every message built from upstream text.

An upstream that echoes the request (a misconfigured proxy, a debugging gateway) puts
whatever we sent into its answer, and answers end up in error messages. So each message
built from upstream text is scrubbed where it is built (the transport, which also knows
the secrets of the request it sent: the bearer token, the API key, a policy and its
signature), and the sinks (logs, the job store, command output) scrub once more with the
configured secrets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

REDACTED = "[redacted]"
#: Shorter values are not scrubbed: they would mangle ordinary words, and are no secrets.
MIN_LENGTH = 6
#: Keys of a JSON request body whose values are secrets (Filestack's store body).
SECRET_FIELDS = frozenset({"apikey", "policy", "signature"})


class Scrubber:
    """Replaces each secret value (also JSON-escaped or URL-encoded) with ``[redacted]``."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        values = tuple(values)
        forms: set[str] = set()
        for value in values:
            if len(value) >= MIN_LENGTH:
                forms.update({value, json.dumps(value)[1:-1], quote(value, safe="")})
        # Longest first, so a secret that contains another is replaced whole.
        self._forms = tuple(sorted(forms, key=len, reverse=True))
        self._values = values

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def __bool__(self) -> bool:
        return bool(self._forms)

    def adding(self, values: Iterable[str]) -> Scrubber:
        """This scrubber and ``values`` too."""
        return Scrubber((*self._values, *values))


def request_secrets(headers: Mapping[str, str], body: Any) -> list[str]:
    """The secret values of one request: its bearer token and secret JSON body fields."""
    found: list[str] = []
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token:
        found.append(token)
    _collect(body, found, depth=0)
    return found


def _collect(value: Any, found: list[str], *, depth: int) -> None:
    if depth > 8:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if key in SECRET_FIELDS and isinstance(item, str):
                found.append(item)
            else:
                _collect(item, found, depth=depth + 1)
    elif isinstance(value, list):
        for item in value:
            _collect(item, found, depth=depth + 1)
