"""Logging, configured once by an explicit call at the entry point.

Structured events to stderr: JSON when stderr is not a terminal (or when asked), a
readable console format otherwise. Context (``document_id``, later ``job_id`` ...) is
bound through contextvars. The last processors mask any value under a secret-looking
key, and scrub every configured secret value out of every string (tracebacks included),
so a token cannot reach a log line even by mistake or through an upstream's echo.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from cms_sync.scrub import Scrubber

_SECRET_MARKERS = ("token", "secret", "password", "authorization", "signature", "apikey")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask values whose key names a secret."""
    for key in list(event_dict):
        if any(marker in key.lower() for marker in _SECRET_MARKERS):
            event_dict[key] = "[redacted]"
    return event_dict


class ScrubValues:
    """Scrub secret values out of every string in an event, nested ones included."""

    def __init__(self, scrub: Scrubber) -> None:
        self._scrub = scrub

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            event_dict[key] = self._clean(value)
        return event_dict

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value


def configure_logging(
    *,
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    scrub: Scrubber | None = None,
) -> None:
    """Configure structlog, and route stdlib logging (uvicorn) through the same renderer.

    Call once, from the entry point.

    Args:
        scrub: the configured secrets, scrubbed from every string of every event.
    """
    out = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # The stack as text under "exception": without it JSON shows ``exc_info: true``
        # and a crashed job leaves no stack; as text it is scrubbed like the rest.
        structlog.processors.format_exc_info,
        redact_secrets,
        ScrubValues(scrub or Scrubber()),
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write a line (print() makes two): the worker's process shares this stream,
        # and two processes' lines must not interleave mid-line.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(_LEVELS[level])
    # One line per HTTP request is noise next to our own events.
    logging.getLogger("httpx").setLevel(logging.WARNING)
