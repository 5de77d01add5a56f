"""The emulator's patches against @sanity/mutator's, recorded in fixtures/sanity/mutator."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cms_sync.emulators.jsonmatch import PatchError, apply_patch, parse_path
from fakes import load_fixture

RECORDED = load_fixture("sanity/mutator/recorded.json")
CASES = {c["name"]: c for c in RECORDED["cases"]}
DOCUMENTS = load_fixture("sanity/mutator/cases.json")["documents"]

#: Paths @sanity/mutator's in-memory applier cannot handle (it needs a "probe"), which the
#: emulator applies as JSONMatch reads them. Listed so the table stays honest.
LENIENT = {
    "set every array item",
    "set every array item by slice",
    "set by negative index",
    "unset a field of every item",
}


def test_the_lenient_cases_are_exactly_the_ones_mutator_refused() -> None:
    assert {name for name, case in CASES.items() if "error" in case} == LENIENT


@pytest.mark.parametrize("name", [n for n in CASES if n not in LENIENT])
def test_a_patch_gives_what_sanity_mutator_gives(name: str) -> None:
    case = CASES[name]
    doc = copy.deepcopy(DOCUMENTS[case["doc"]])
    apply_patch(doc, case["patch"])
    assert doc == case["expected"]


def test_lenient_paths_do_what_jsonmatch_says() -> None:
    doc = copy.deepcopy(DOCUMENTS["product"])
    apply_patch(doc, {"set": {"gallery[*].seen": True, "gallery[-1].caption": "last"}})
    assert [g.get("seen") for g in doc["gallery"]] == [True, True, True]
    assert [g.get("caption") for g in doc["gallery"]] == [None, None, "last"]


@pytest.mark.parametrize(
    "path",
    ["", "a..b", "a[", "a[_key=]", "[0]x", "a b", 'a[_key=="x"', "a[x > 1]"],
)
def test_paths_outside_jsonmatch_are_refused(path: str) -> None:
    with pytest.raises(PatchError):
        parse_path(path)


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        ({"diffMatchPatch": {"title": "@@ -1 +1 @@"}}, "unsupported"),
        ({"set": ["title"]}, "set must be a dict"),
        ({"unset": {"title": 1}}, "unset must be a list"),
        ({"inc": {"stock": "1"}}, "needs a number"),
        ({"insert": {"after": "gallery[-1]"}}, "needs items"),
        ({"insert": {"after": "title", "items": [1]}}, "array position"),
        ({"unset": ["_type"]}, "_type"),
    ],
)
def test_a_malformed_patch_is_refused_with_its_reason(patch: dict[str, Any], problem: str) -> None:
    with pytest.raises(PatchError, match=problem):
        apply_patch(copy.deepcopy(DOCUMENTS["product"]), patch)
