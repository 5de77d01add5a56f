"""JSONMatch paths and the patch operations the Content Lake applies with them.

A path is a chain of steps: ``a.b``, ``gallery[0]``, ``gallery[-1]``, ``gallery[_key=="k"]``,
``gallery[*]`` (every item; ``[]`` is an empty union that matches nothing) and
``gallery[1:3]`` (a slice, for ``insert``). That is the part of JSONMatch that mutations use
in practice; ``..`` (recursive) and boolean filters are refused with the 400 a malformed
patch gets. Semantics follow ``@sanity/mutator``:

- ``set`` creates missing objects along attribute steps; a missing array item is not created.
- ``setIfMissing`` sets only where nothing is.
- ``unset`` removes attributes and array items.
- ``inc``/``dec`` change numbers and leave anything else alone.
- ``insert`` puts items ``before``/``after`` an array position or ``replace``s a range.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class PatchError(ValueError):
    """A path or operation the Content Lake would refuse with a 400."""


@dataclass(frozen=True, slots=True)
class Attr:
    name: str


@dataclass(frozen=True, slots=True)
class Index:
    index: int


@dataclass(frozen=True, slots=True)
class Match:
    """``[attr=="value"]``: the array items whose ``attr`` equals ``value``."""

    attr: str
    value: Any


@dataclass(frozen=True, slots=True)
class Slice:
    start: int | None
    end: int | None


Step = Attr | Index | Match | Slice

_TOKEN = re.compile(
    r"""
    (?P<attr>[A-Za-z_$][A-Za-z0-9_$-]*)
  | \[\s*(?P<index>-?\d+)\s*\]
  | \[\s*(?P<all>\*?)\s*\]
  | \[\s*(?P<start>-?\d*)\s*:\s*(?P<end>-?\d*)\s*\]
  | \[\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*==\s*
        (?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|-?\d+(?:\.\d+)?|true|false)\s*\]
    """,
    re.VERBOSE,
)


def parse_path(path: str) -> tuple[Step, ...]:
    """``gallery[_key=="k"].filestackUrl`` as steps.

    Raises:
        PatchError: not a path this emulator understands.
    """
    steps: list[Step] = []
    pos = 0
    while pos < len(path):
        if steps and path[pos] == ".":
            pos += 1
            if path.startswith(".", pos):
                raise PatchError(f"recursive descent '..' is not supported: {path!r}")
        match = _TOKEN.match(path, pos)
        if match is None or (match["attr"] and steps and path[pos - 1] != "."):
            raise PatchError(f"invalid path {path!r} at offset {pos}")
        steps.append(_step(match))
        pos = match.end()
    if not steps:
        raise PatchError("empty path")
    return tuple(steps)


def _step(match: re.Match[str]) -> Step:
    if match["attr"]:
        return Attr(match["attr"])
    if match["index"] is not None:
        return Index(int(match["index"]))
    if match["all"] is not None:
        # "[*]" is every item; "[]" is an empty union and matches nothing (as in mutator).
        return Slice(None, None) if match["all"] else Slice(0, 0)
    if match["key"]:
        raw = match["value"]
        if raw.startswith("'"):
            raw = '"' + raw[1:-1].replace('"', '\\"') + '"'
        return Match(match["key"], json.loads(raw))
    start, end = match["start"], match["end"]
    return Slice(int(start) if start else None, int(end) if end else None)


def _positions(container: Any, step: Step) -> list[Any]:
    """The keys or indices in ``container`` that ``step`` addresses (existing ones only)."""
    if isinstance(step, Attr):
        return [step.name] if isinstance(container, dict) and step.name in container else []
    if not isinstance(container, list):
        return []
    size = len(container)
    if isinstance(step, Index):
        index = step.index + size if step.index < 0 else step.index
        return [index] if 0 <= index < size else []
    if isinstance(step, Match):
        return [
            i
            for i, item in enumerate(container)
            if isinstance(item, dict) and item.get(step.attr) == step.value
        ]
    return list(range(size))[step.start : step.end]


def _parents(doc: dict[str, Any], steps: tuple[Step, ...], create: bool) -> list[Any]:
    """The containers that the last step applies to; ``create`` makes missing objects."""
    current: list[Any] = [doc]
    for step in steps[:-1]:
        following: list[Any] = []
        for container in current:
            places = _positions(container, step)
            if not places and create and isinstance(step, Attr) and isinstance(container, dict):
                container[step.name] = {}
                places = [step.name]
            following.extend(container[p] for p in places)
        current = following
    return current


def _targets(doc: dict[str, Any], path: str, create: bool) -> list[tuple[Any, Any]]:
    steps = parse_path(path)
    last = steps[-1]
    found: list[tuple[Any, Any]] = []
    for parent in _parents(doc, steps, create):
        places = _positions(parent, last)
        if not places and isinstance(last, Attr) and isinstance(parent, dict):
            places = [last.name]  # a missing attribute can still be written
        found.extend((parent, p) for p in places)
    return found


def set_value(doc: dict[str, Any], path: str, value: Any, *, if_missing: bool = False) -> None:
    for parent, place in _targets(doc, path, create=True):
        missing = isinstance(parent, dict) and place not in parent
        if not if_missing or missing:
            parent[place] = _copy(value)


def unset(doc: dict[str, Any], path: str) -> None:
    targets = _targets(doc, path, create=False)
    # Remove array items from the end so earlier indices stay valid.
    for parent, place in sorted(targets, key=lambda t: t[1] if isinstance(t[1], int) else 0)[::-1]:
        if isinstance(parent, dict):
            parent.pop(place, None)
        else:
            del parent[place]


def add(doc: dict[str, Any], path: str, amount: Any) -> None:
    """``inc`` (``dec`` with a negated amount): numbers only, anything else is left."""
    if not _is_number(amount):
        raise PatchError(f"inc/dec needs a number for {path!r}")
    for parent, place in _targets(doc, path, create=False):
        current = parent.get(place) if isinstance(parent, dict) else parent[place]
        if _is_number(current):
            parent[place] = current + amount


def insert(doc: dict[str, Any], spec: dict[str, Any]) -> None:
    """``{"before"|"after"|"replace": path, "items": [...]}``; the path ends in an array step."""
    items = spec.get("items")
    positions = [k for k in ("before", "after", "replace") if k in spec]
    if not isinstance(items, list) or len(positions) != 1:
        raise PatchError("insert needs items and exactly one of before, after, replace")
    (where,) = positions
    steps = parse_path(spec[where])
    last = steps[-1]
    if isinstance(last, Attr):
        raise PatchError(f"insert needs an array position, not {spec[where]!r}")
    for array in _parents(doc, steps, create=False):
        if not isinstance(array, list):
            continue
        places = _positions(array, last)
        if not places:
            if where == "replace" or not isinstance(last, Index):
                continue
            places = [0 if last.index < 0 else len(array)]  # an empty array: at its end
            if where == "after":
                array[len(array) :] = _copy(items)
                continue
        if where == "before":
            at = places[0]
            array[at:at] = _copy(items)
        elif where == "after":
            at = places[-1] + 1
            array[at:at] = _copy(items)
        else:
            array[places[0] : places[-1] + 1] = _copy(items)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _each(operation: Callable[[dict[str, Any], str, Any], None]) -> Operation:
    def apply(doc: dict[str, Any], ops: dict[str, Any]) -> None:
        for path, value in ops.items():
            operation(doc, path, value)

    return apply


def _set_if_missing(doc: dict[str, Any], path: str, value: Any) -> None:
    set_value(doc, path, value, if_missing=True)


def _dec(doc: dict[str, Any], path: str, amount: Any) -> None:
    add(doc, path, -amount if _is_number(amount) else amount)


def _unset_all(doc: dict[str, Any], paths: list[str]) -> None:
    for path in paths:
        unset(doc, path)


Operation = Callable[[dict[str, Any], Any], None]

#: Patch operations in the order @sanity/mutator applies them within one patch.
OPERATIONS: tuple[tuple[str, Operation], ...] = (
    ("setIfMissing", _each(_set_if_missing)),
    ("set", _each(set_value)),
    ("unset", _unset_all),
    ("inc", _each(add)),
    ("dec", _each(_dec)),
    ("insert", insert),
)
_KNOWN = {name for name, _ in OPERATIONS} | {"id", "query", "params", "ifRevisionID"}


def apply_patch(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    """Apply one patch's operations to ``doc`` in place.

    Raises:
        PatchError: an unknown operation, a bad path or a value of the wrong shape.
    """
    unknown = set(patch) - _KNOWN
    if unknown:
        raise PatchError(f"unsupported patch operation(s): {', '.join(sorted(unknown))}")
    for name, operation in OPERATIONS:
        if name in patch:
            value = patch[name]
            expected = list if name == "unset" else dict
            if not isinstance(value, expected):
                raise PatchError(f"{name} must be a {expected.__name__}")
            try:
                operation(doc, value)
            except (TypeError, KeyError, IndexError) as exc:
                raise PatchError(f"{name}: {exc}") from exc
    for protected in ("_id", "_type"):
        if not isinstance(doc.get(protected), str):
            raise PatchError(f"a patch cannot remove or change the type of {protected}")
