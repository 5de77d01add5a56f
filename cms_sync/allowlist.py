"""Which asset URLs may be handed to Filestack.

Filestack fetches whatever URL it is given, so the worker only passes on URLs whose
host[:port] is allow-listed (default ``cdn.sanity.io``). An entry without a port matches
the scheme's default port only. HTTPS is required, except for loopback hosts (the local
emulators serve plain HTTP on 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class AllowedHost:
    host: str
    port: int | None = None


def parse_allowed_host(entry: str) -> AllowedHost:
    """``"cdn.sanity.io"`` or ``"127.0.0.1:8080"`` -> :class:`AllowedHost`.

    Raises:
        ValueError: not a bare host[:port].
    """
    text = entry.strip().lower()
    if not text or any(c in text for c in "/@?#") or "://" in text:
        raise ValueError(f"{entry!r} is not host[:port]")
    try:
        parts = urlsplit(f"//{text}")
        port = parts.port
    except ValueError:
        raise ValueError(f"{entry!r} is not host[:port]") from None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError(f"{entry!r} is not host[:port]")
    return AllowedHost(host=host, port=port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(url: str) -> tuple[SplitResult, int] | str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return "not an http(s) URL"
    if parts.username is not None or parts.password is not None:
        return "URL carries credentials"
    return parts, port if port is not None else _DEFAULT_PORTS[parts.scheme]


def refusal_reason(url: str, allowed: tuple[AllowedHost, ...]) -> str | None:
    """Why ``url`` must not be sent to Filestack, or None when it may be."""
    split = _split(url)
    if isinstance(split, str):
        return split
    parts, port = split
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme != "https" and not _is_loopback(host):
        return "plain http is only accepted for loopback hosts"
    for entry in allowed:
        entry_port = entry.port if entry.port is not None else _DEFAULT_PORTS[parts.scheme]
        if entry.host == host and entry_port == port:
            return None
    shown = host if parts.port is None else f"{host}:{port}"
    return f"host {shown!r} is not in CMS_SYNC_ALLOWED_ASSET_HOSTS"
