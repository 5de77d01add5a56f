from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from cms_sync.log import configure_logging


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers = []


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def fail_deep_inside() -> None:
    raise ValueError("the cause")


def test_json_logs_keep_the_stack_as_text(json_log: io.StringIO) -> None:
    log = structlog.get_logger("t")
    try:
        fail_deep_inside()
    except ValueError as exc:
        log.exception("job_crashed")
        log.error("job_task_crashed", exc_info=exc)
    for event in lines(json_log):
        text = str(event["exception"])
        assert text.startswith("Traceback (most recent call last):"), event
        assert "in fail_deep_inside" in text and "ValueError: the cause" in text
        assert "exc_info" not in event


def test_stdlib_records_keep_the_stack_too(json_log: io.StringIO) -> None:
    try:
        fail_deep_inside()
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    (event,) = lines(json_log)
    assert "ValueError: the cause" in str(event["exception"])


class Writes(io.StringIO):
    """A stream that keeps each write: what reaches the descriptor in one system call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_line_is_one_write_so_two_processes_lines_never_interleave() -> None:
    # The service and its worker's process share standard error: a line written in two
    # pieces (the text, then its newline) let the other process's line in between.
    stream = Writes()
    configure_logging(fmt="json", stream=stream)
    try:
        structlog.get_logger("t").info("worker_started", pid=1)
        logging.getLogger("uvicorn.error").info("Started server process")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers = []
    assert len(stream.writes) == 2
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in stream.writes), stream.writes
