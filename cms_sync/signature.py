"""Sanity webhook signatures, exactly as ``@sanity/webhook`` 4.x makes and checks them. Pure.

Header ``sanity-webhook-signature: t=<unix ms>,v1=<sig>`` where ``sig`` is the unpadded
base64url HMAC-SHA256, keyed with the secret, of ``"<t>.<body>"``, the body being the raw
request bytes read as UTF-8. Verification is over those raw bytes, never re-serialised
JSON, and compares in constant time. A freshness check on ``t`` is optional and off by
default: Sanity retries for 30 minutes and it is not known whether retries are re-signed.
"""

from __future__ import annotations

import binascii
import hmac
import re
import time

from cms_sync.errors import SignatureError

HEADER = "sanity-webhook-signature"
#: @sanity/webhook refuses timestamps before 2021-01-01 (in ms).
MIN_TIMESTAMP_MS = 1_609_459_200_000
#: At most 16 digits: milliseconds until the year 318857 (a longer number is an attack on
#: int(), which refuses past 4300 digits, not a timestamp); the signature is 43 characters.
_HEADER_FORMAT = re.compile(r"^t=(\d{1,16})[, ]+v1=([^, ]{1,128})$")
#: A longer header is malformed without being scanned.
_MAX_HEADER = 256


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _v1(secret: str, body: bytes, timestamp_ms: int) -> bytes:
    """The ``v1`` value as ASCII bytes: every step one call into C (this runs for every
    delivery; ``hmac.new`` and ``base64.urlsafe_b64encode`` are Python wrappers)."""
    # Node reads the body as UTF-8 (invalid bytes become U+FFFD) before signing.
    payload = b"%d." % timestamp_ms + body.decode("utf-8", errors="replace").encode()
    digest = hmac.digest(secret.encode(), payload, "sha256")
    return binascii.b2a_base64(digest, newline=False).translate(_URLSAFE).rstrip(b"=")


def compute(secret: str, body: bytes, timestamp_ms: int) -> str:
    """The ``v1`` value for ``body`` signed at ``timestamp_ms``."""
    return _v1(secret, body, timestamp_ms).decode("ascii")


def sign(secret: str, body: bytes, timestamp_ms: int) -> str:
    """A full header value, as Sanity sends it (used by tests and local tools)."""
    return f"t={timestamp_ms},v1={compute(secret, body, timestamp_ms)}"


def parse_header(header: str | None) -> tuple[int, str]:
    """``(timestamp_ms, signature)`` from a header value.

    Raises:
        SignatureError: missing or malformed.
    """
    if not header or not header.strip():
        raise SignatureError("missing sanity-webhook-signature header")
    if len(header) > _MAX_HEADER:
        raise SignatureError("malformed sanity-webhook-signature header")
    match = _HEADER_FORMAT.match(header.strip())
    if match is None:
        raise SignatureError("malformed sanity-webhook-signature header")
    timestamp = int(match[1])
    if timestamp < MIN_TIMESTAMP_MS:
        raise SignatureError("signature timestamp is not in unix milliseconds")
    return timestamp, match[2]


def verify(
    header: str | None,
    body: bytes,
    secret: str,
    *,
    tolerance: float | None = None,
    now: float | None = None,
) -> int:
    """Check a delivery's signature; return its timestamp (ms).

    Args:
        tolerance: when set, refuse signatures older (or newer) than this many seconds.

    Raises:
        SignatureError: missing, malformed, wrong, or outside the tolerance.
    """
    if not body:
        raise SignatureError("empty body cannot be signed")
    timestamp, given = parse_header(header)
    if not hmac.compare_digest(_v1(secret, body, timestamp), given.encode()):
        raise SignatureError("signature does not match")
    if tolerance is not None:
        age = (time.time() if now is None else now) - timestamp / 1000
        if abs(age) > tolerance:
            raise SignatureError(f"signature timestamp is {age:.0f} s away from now")
    return timestamp
