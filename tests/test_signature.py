from __future__ import annotations

import pytest

from cms_sync import signature
from cms_sync.errors import SignatureError
from fakes import load_fixture

VECTORS = load_fixture("sanity/webhooks/signatures.json")["vectors"]
OFFICIAL = VECTORS[0]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["header"][:16])
def test_recorded_vectors_verify_and_sign_identically(vector: dict[str, str]) -> None:
    body = vector["body"].encode()
    timestamp = signature.verify(vector["header"], body, vector["secret"])
    assert signature.sign(vector["secret"], body, timestamp) == vector["header"]


@pytest.mark.parametrize(
    ("header", "body", "secret", "message"),
    [
        (OFFICIAL["header"], b'{"_id":"resume2"}', "test", "does not match"),
        (OFFICIAL["header"], b'{"_id": "resume"}', "test", "does not match"),  # re-serialised
        (OFFICIAL["header"], b'{"_id":"resume"}', "tesT", "does not match"),
        (None, b'{"_id":"resume"}', "test", "missing"),
        ("", b'{"_id":"resume"}', "test", "missing"),
        ("v1=abc,t=1633519811129", b'{"_id":"resume"}', "test", "malformed"),
        ("t=1633519811129", b'{"_id":"resume"}', "test", "malformed"),
        ("t=abc,v1=xyz", b'{"_id":"resume"}', "test", "malformed"),
        ("t=1633519811,v1=xyz", b'{"_id":"resume"}', "test", "milliseconds"),
        (OFFICIAL["header"].replace("v1=t", "v1=T"), b'{"_id":"resume"}', "test", "does not match"),
        (OFFICIAL["header"], b"", "test", "empty body"),
    ],
)
def test_bad_signatures_are_refused(
    header: str | None, body: bytes, secret: str, message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        signature.verify(header, body, secret)


def test_space_separator_is_accepted_like_the_official_regex() -> None:
    header = OFFICIAL["header"].replace(",", ", ")
    assert signature.verify(header, OFFICIAL["body"].encode(), "test") == 1633519811129


def test_tolerance_is_off_by_default_and_enforced_when_set() -> None:
    body = OFFICIAL["body"].encode()
    assert signature.verify(OFFICIAL["header"], body, "test")  # signed in 2021
    now = 1633519811.129
    assert signature.verify(OFFICIAL["header"], body, "test", tolerance=300, now=now + 299)
    with pytest.raises(SignatureError, match="away from now"):
        signature.verify(OFFICIAL["header"], body, "test", tolerance=300, now=now + 301)


@pytest.mark.parametrize(
    "header",
    [
        "t=" + "9" * 5000 + ",v1=abc",  # int() of it would raise past 4300 digits
        "t=1633519811129,v1=" + "a" * 10_000,
        "t=1633519811129," + " " * 100_000 + "v1=abc",
    ],
    ids=["huge-timestamp", "huge-signature", "huge-padding"],
)
def test_hostile_headers_are_signature_errors(header: str) -> None:
    with pytest.raises(SignatureError, match="malformed"):
        signature.verify(header, b'{"_id":"resume"}', "test")
