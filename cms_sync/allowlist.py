"""Which asset URLs may be handed to Filestack.

Filestack fetches whatever URL it is given, so the worker only passes on URLs that match
an allow-list entry: ``host[:port][/path/prefix/]``. By default the entries are this
project's own asset paths, ``cdn.sanity.io/images/{project}/{dataset}/`` and
``cdn.sanity.io/files/{project}/{dataset}/``, so another project's assets on the same CDN
are refused. An entry without a path allows the whole host; one without a port, the
scheme's default port only. HTTPS is required, except for loopback hosts (the local
emulators serve plain HTTP on 127.0.0.1). A path with dot segments, or with an encoded
slash or backslash, is refused outright: a fetcher may normalise it out of the prefix.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class AllowedHost:
    host: str
    port: int | None = None
    #: When set, only paths under it (it ends in "/"); None allows the whole host.
    path_prefix: str | None = None


def project_assets(project_id: str, dataset: str) -> tuple[AllowedHost, ...]:
    """The default allow-list: this project's dataset on Sanity's CDN, nothing else."""
    return tuple(
        AllowedHost("cdn.sanity.io", path_prefix=f"/{kind}/{project_id}/{dataset}/")
        for kind in ("images", "files")
    )


def parse_allowed_host(entry: str) -> AllowedHost:
    """``"cdn.sanity.io"``, ``"127.0.0.1:8080"`` or ``"cdn.sanity.io/images/p/d/"``.

    Raises:
        ValueError: not host[:port][/path].
    """
    text = entry.strip()
    authority, slash, path = text.partition("/")
    authority = authority.lower()
    bad = f"{entry!r} is not host[:port][/path]"
    if not authority or any(c in text for c in "@?#\\") or "://" in text:
        raise ValueError(bad)
    if slash and _path_problem("/" + path):
        raise ValueError(bad)
    try:
        parts = urlsplit(f"//{authority}")
        port = parts.port
    except ValueError:
        raise ValueError(bad) from None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError(bad)
    prefix = None
    if slash and path.strip("/"):
        prefix = "/" + path.strip("/") + "/"
    return AllowedHost(host=host, port=port, path_prefix=prefix)


def _path_problem(path: str) -> str | None:
    lowered = path.lower()
    if "\\" in path or "%2f" in lowered or "%5c" in lowered:
        return "the path has an encoded slash or a backslash"
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        return "the path has '.' or '..' segments"
    return None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (not a name that may resolve to one)."""
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
    if parts.scheme != "https" and not is_loopback(host):
        return "plain http is only accepted for loopback hosts"
    path = parts.path or "/"
    problem = _path_problem(path)
    if problem is not None:
        return problem
    host_allowed = False
    for entry in allowed:
        entry_port = entry.port if entry.port is not None else _DEFAULT_PORTS[parts.scheme]
        if entry.host != host or entry_port != port:
            continue
        host_allowed = True
        if entry.path_prefix is None or path.startswith(entry.path_prefix):
            return None
    shown = host if parts.port is None else f"{host}:{port}"
    if host_allowed:
        return (
            f"path {path[:80]!r} on {shown!r} is not under an allowed prefix "
            "(CMS_SYNC_ALLOWED_ASSET_HOSTS; by default this project's dataset only)"
        )
    return f"host {shown!r} is not in CMS_SYNC_ALLOWED_ASSET_HOSTS"
