"""The engine's API contract: parse, evaluate, errors, delta mode, time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType

import pytest

from cms_sync.groq import GroqEvaluationError, GroqSyntaxError, Query, evaluate, parse

DOCS = [
    {"_id": "a", "_type": "product", "title": "Chair", "price": 10},
    {"_id": "b", "_type": "product", "title": "Table", "price": 30},
]


def test_parse_returns_a_tree_that_evaluates_many_times() -> None:
    tree = parse("*[price > $min].title")
    assert isinstance(tree, Query)
    assert evaluate(tree, DOCS, {"min": 5}) == ["Chair", "Table"]
    assert evaluate(tree, DOCS, {"min": 20}) == ["Table"]


def test_params_given_to_parse_are_fixed_in_the_tree() -> None:
    tree = parse("*[_id == $id][0].title", {"id": "b"})
    assert evaluate(tree, DOCS, {"id": "a"}) == "Table"


@pytest.mark.parametrize(
    ("query", "position", "line", "column"),
    # Positions as groq-js reports them.
    [
        ("*[_type == ]", 10, 1, 11),
        ('*[\n  _type == "a"\n  && ]', 22, 3, 5),
        ('{"a": 1', 7, 1, 8),
    ],
)
def test_syntax_error_reports_where(query: str, position: int, line: int, column: int) -> None:
    with pytest.raises(GroqSyntaxError) as raised:
        parse(query)
    assert (raised.value.position, raised.value.line, raised.value.column) == (
        position,
        line,
        column,
    )
    assert f"position {position}" in str(raised.value)


def test_unknown_function_is_a_syntax_error_at_the_call() -> None:
    with pytest.raises(GroqSyntaxError, match="Undefined function: nope") as raised:
        parse("*[nope(x)]")
    assert raised.value.position == 2


def test_now_is_injected_and_millisecond_precise() -> None:
    instant = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=timezone(timedelta(hours=2)))
    assert evaluate("now()", [], now=instant) == "2026-03-04T03:06:07.891Z"
    assert evaluate("dateTime::now() - 60", [], now=instant) == "2026-03-04T03:05:07.891Z"


def test_now_defaults_to_the_clock() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    value = evaluate("now()", [])
    assert datetime.fromisoformat(value) >= before


def test_results_are_json_data_not_the_dataset() -> None:
    result = evaluate("*[_id == 'a'][0]", DOCS)
    result["title"] = "changed"
    assert DOCS[0]["title"] == "Chair"
    assert evaluate("4 / 2", []) == 2 and isinstance(evaluate("4 / 2", []), int)
    assert evaluate("dateTime('2024-01-01T00:00:00+01:00')", []) == "2023-12-31T23:00:00Z"


def test_any_mapping_and_sequence_is_a_dataset() -> None:
    docs = (MappingProxyType({"_id": "x", "tags": ("a", "b")}),)
    assert evaluate("*[0].tags[1]", docs) == "b"
    assert evaluate("*[0]{_id, tags}", docs) == {"_id": "x", "tags": ["a", "b"]}


def test_delta_mode_follows_before_and_after() -> None:
    before = {"_id": "a", "mainImage": {"asset": {"_ref": "image-1"}}}
    after = {"_id": "a", "mainImage": {"asset": {"_ref": "image-2"}, "filestackUrl": "u"}}
    assert evaluate("delta::changedAny(mainImage.asset)", [], before=before, after=after)
    assert not evaluate("delta::changedAny(mainImage.asset)", [], before=after, after=after)
    assert evaluate("delta::operation()", [], after=after) == "create"
    assert evaluate("before().mainImage.asset._ref", [], before=before, after=after) == "image-1"


def test_delta_functions_need_delta_mode() -> None:
    with pytest.raises(GroqSyntaxError, match="before"):
        parse("before()")
    tree = parse("delta::changedAny(gallery[].asset)", mode="delta")
    before = {"gallery": [{"asset": {"_ref": "x"}, "filestackUrl": "u"}]}
    after = {"gallery": [{"asset": {"_ref": "x"}}]}
    assert evaluate(tree, [], before=before, after=after) is False


def test_what_only_sanity_can_evaluate_is_an_evaluation_error() -> None:
    with pytest.raises(GroqEvaluationError):
        evaluate("text::query('x')", [])
    with pytest.raises(GroqEvaluationError):
        evaluate("(1, 2)", [])


@pytest.mark.parametrize(
    ("indexed", "scanned"),
    [
        ("*[_id in $ids]", "*[(_id in $ids) == true]"),
        ("*[_id == $id]", "*[(_id == $id) == true]"),
        ("*[(_id in $ids) && price > 5]._id", "*[(_id in $ids) == true && price > 5]._id"),
        ("*[price > 5 && _id == 'c'].title", "*[price > 5 && (_id == 'c') == true].title"),
        ("*[_id in ['b', 5, null, 'a']]", "*[(_id in ['b', 5, null, 'a']) == true]"),
        ("*[_id == null]", "*[(_id == null) == true]"),
        ("*[_id in $ids]{_id, 'n': count(*)}", "*[(_id in $ids) == true]{_id, 'n': count(*)}"),
    ],
)
def test_an_id_term_looks_documents_up_with_the_same_answer_as_a_scan(
    indexed: str, scanned: str
) -> None:
    docs = [
        *DOCS,
        MappingProxyType({"_id": "c", "title": "Lamp", "price": 7}),
        {"_id": "a", "title": "A twin", "price": 1},  # ids are unique in Sanity, not here
        {"title": "no id"},
        {"_id": 5},
    ]
    params = {"ids": ["c", "a", "a", "x"], "id": "a"}
    answer = evaluate(indexed, docs, params)
    assert answer == evaluate(scanned, docs, params)
    assert answer not in ([], None)
