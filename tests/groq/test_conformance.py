"""cms_sync.groq against groq-js, case by case.

fixtures/groq/conformance.json holds what groq-js (the reference implementation) answered
for each case in fixtures/groq/cases/; fixtures/groq/record.mjs re-records it (needs Node).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from cms_sync.groq import GroqError, GroqSyntaxError, evaluate, parse
from fakes import FIXTURES

GROQ = FIXTURES / "groq"
TABLE = json.loads((GROQ / "conformance.json").read_text(encoding="utf-8"))["cases"]
DATASETS = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted((GROQ / "datasets").glob("*.json"))
}


def same(left: Any, right: Any) -> bool:
    """JSON equality that tells ``true`` from ``1``."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return float(left) == float(right)  # JSON holds doubles: 12345678901234567000
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    return type(left) is type(right) and left == right


def run(case: dict[str, Any]) -> Any:
    dataset = DATASETS[case["dataset"]] if case["dataset"] is not None else None
    return evaluate(
        case["query"],
        dataset,
        case.get("params"),
        now=datetime.fromisoformat(case["now"]),
        root=case.get("root"),
        before=case.get("before"),
        after=case.get("after"),
    )


# Where cms_sync.groq follows the GROQ spec rather than a groq-js quirk.
DEVIATIONS = {
    # groq-js turns an unknown escape into the text "undefined"; the spec makes it an error.
    '"\\x"': "syntax error",
}


def parse_case(case: dict[str, Any]) -> Any:
    delta = "before" in case or "after" in case
    return parse(case["query"], case.get("params"), mode="delta" if delta else "normal")


@pytest.mark.parametrize("case", TABLE, ids=[case["id"] for case in TABLE])
def test_matches_groq_js(case: dict[str, Any]) -> None:
    error = case.get("error")
    if case["query"] in DEVIATIONS:
        with pytest.raises(GroqSyntaxError):
            parse_case(case)
    elif error is None:
        result = run(case)
        assert same(result, case["result"]), f"{case['query']!r}: {result!r}"
    elif error["name"] == "GroqSyntaxError":
        with pytest.raises(GroqSyntaxError) as raised:
            parse_case(case)
        assert raised.value.position == error["position"], error["message"]
    elif error["stage"] == "parse":
        # groq-js finds these (unknown functions, argument counts) after the raw parse.
        with pytest.raises(GroqSyntaxError):
            parse_case(case)
    else:
        with pytest.raises(GroqError):
            run(case)


def test_table_is_recorded_from_the_current_cases() -> None:
    """The recordings are evidence only while they are of the cases in cases/."""
    queries = []
    for path in sorted((GROQ / "cases").glob("*.json")):
        for entry in json.loads(path.read_text(encoding="utf-8"))["cases"]:
            queries.append(entry if isinstance(entry, str) else entry["query"])
    assert [case["query"] for case in TABLE] == queries, "re-record: fixtures/groq/record.mjs"


def test_table_is_large_and_mostly_values() -> None:
    errors = sum(1 for case in TABLE if "error" in case)
    assert len(TABLE) >= 300
    assert len(TABLE) - errors >= 300
