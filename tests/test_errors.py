from __future__ import annotations

import pytest

from cms_sync.errors import (
    AuthenticationError,
    RateLimited,
    RejectedError,
    RevisionConflict,
    UnavailableError,
    excerpt,
    parse_retry_after,
    status_error,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("soon", None),
        ("Tue, 14 Nov 2023 22:13:30 GMT", 10.0),  # NOW + 10 s
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize(
    ("status", "error_type", "cls"),
    [
        (400, "queryParseError", RejectedError),
        (401, None, AuthenticationError),
        (403, None, AuthenticationError),
        (404, None, RejectedError),
        (409, "documentRevisionIDDoesNotMatchError", RevisionConflict),
        (409, "documentAlreadyExistsError", RejectedError),
        (429, None, RateLimited),
        (500, None, UnavailableError),
        (503, None, UnavailableError),
    ],
)
def test_status_maps_to_one_branch(status: int, error_type: str | None, cls: type) -> None:
    error = status_error(
        "Sanity",
        status,
        "Reason",
        body="b",
        error_type=error_type,
        description=None,
        headers={"retry-after": "1"},
    )
    assert type(error) is cls
    assert error.retry_after == (1.0 if status in (429, 500, 503) else None)


def test_excerpt_is_one_bounded_line() -> None:
    assert excerpt("a\n  b\tc") == "a b c"
    assert len(excerpt("x" * 1000)) == 300
