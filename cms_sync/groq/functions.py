"""GROQ's functions, by namespace, and the ``order()`` and ``score()`` pipe functions.

Each function takes its argument nodes and the scope: most evaluate every argument,
a few (``coalesce``, ``select``-like ones, the delta selectors) need the nodes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from cms_sync.groq import evaluator as ev
from cms_sync.groq import syntax as s
from cms_sync.groq.errors import GroqEvaluationError
from cms_sync.groq.operators import gather_text, term_patterns, tokens
from cms_sync.groq.values import (
    DateTime,
    Path,
    deep_equal,
    groq_type,
    is_equal,
    js_truthy,
    number,
    scalar_text,
    total_compare,
)

if TYPE_CHECKING:
    from cms_sync.groq.evaluator import Scope

Function = Callable[[Sequence[s.Node], "Scope"], Any]
FUNCTIONS: dict[tuple[str, str], Function] = {}


def _values(args: Sequence[s.Node], scope: Scope) -> list[Any]:
    return [ev.execute(arg, scope) for arg in args]


def function(namespace: str, name: str) -> Callable[[Function], Function]:
    def register(impl: Function) -> Function:
        FUNCTIONS[(namespace, name)] = impl
        return impl

    return register


def unary(namespace: str, *names: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register a function of one evaluated argument under each name."""

    def register(impl: Callable[[Any], Any]) -> Callable[[Any], Any]:
        for name in names:
            FUNCTIONS[(namespace, name)] = lambda args, scope: impl(ev.execute(args[0], scope))
        return impl

    return register


# -- global ---------------------------------------------------------------------------


@function("global", "coalesce")
def _coalesce(args: Sequence[s.Node], scope: Scope) -> Any:
    for arg in args:
        value = ev.execute(arg, scope)
        if value is not None:
            return value
    return None


@unary("global", "count")
def _count(value: Any) -> Any:
    return len(value) if groq_type(value) == "array" else None


@unary("global", "dateTime")
def _date_time(value: Any) -> Any:
    kind = groq_type(value)
    if kind == "datetime":
        return value
    return DateTime.parse(value) if kind == "string" else None


@unary("global", "defined")
def _defined(value: Any) -> Any:
    return value is not None


@unary("global", "length")
def _length(value: Any) -> Any:
    return len(value) if groq_type(value) in ("string", "array") else None


@unary("global", "path")
def _path(value: Any) -> Any:
    return Path(value) if groq_type(value) == "string" else None


@unary("global", "string")
def _string(value: Any) -> Any:
    return scalar_text(value)


@unary("global", "lower")
@unary("string", "lower")
def _lower(value: Any) -> Any:
    return value.lower() if groq_type(value) == "string" else None


@unary("global", "upper")
@unary("string", "upper")
def _upper(value: Any) -> Any:
    return value.upper() if groq_type(value) == "string" else None


@function("global", "identity")
def _identity(args: Sequence[s.Node], scope: Scope) -> Any:
    return scope.context.identity


@function("global", "now")
def _now(args: Sequence[s.Node], scope: Scope) -> Any:
    text = str(scope.context.now)
    # toISOString() always writes milliseconds.
    return text if "." in text else text[:-1] + ".000Z"


@function("dateTime", "now")
def _date_time_now(args: Sequence[s.Node], scope: Scope) -> Any:
    return scope.context.now


@function("global", "references")
def _references(args: Sequence[s.Node], scope: Scope) -> Any:
    ids: set[str] = set()
    for value in _values(args, scope):
        kind = groq_type(value)
        if kind == "string":
            ids.add(value)
        elif kind == "array":
            ids.update(item for item in value if groq_type(item) == "string")
    return bool(ids) and _has_reference(scope.value, ids)


def _has_reference(value: Any, ids: set[str]) -> bool:
    kind = groq_type(value)
    if kind == "array":
        return any(_has_reference(item, ids) for item in value)
    if kind == "object":
        ref = value.get("_ref")
        if js_truthy(ref):
            return type(ref) is str and ref in ids
        return any(_has_reference(item, ids) for item in value.values())
    return False


@function("global", "round")
def _round(args: Sequence[s.Node], scope: Scope) -> Any:
    values = _values(args, scope)
    value = values[0]
    if groq_type(value) != "number":
        return None
    precision = 0
    if len(values) > 1:
        given = values[1]
        if groq_type(given) != "number" or given < 0 or given != int(given):
            return None
        precision = int(given)
    if abs(value) >= 1e21:
        return value
    # Half away from zero on the exact binary value, as JavaScript's toFixed rounds.
    rounded = Decimal(value).quantize(Decimal(1).scaleb(-precision), rounding=ROUND_HALF_UP)
    return number(int(rounded) if precision == 0 else float(rounded))


@function("global", "anywhere")
@function("global", "boost")
def _not_here(args: Sequence[s.Node], scope: Scope) -> Any:
    raise GroqEvaluationError("this function is only valid inside a selector or score()")


# -- string:: and array:: -------------------------------------------------------------


@function("string", "split")
def _split(args: Sequence[s.Node], scope: Scope) -> Any:
    text, separator = _values(args, scope)
    if groq_type(text) != "string" or groq_type(separator) != "string":
        return None
    if not text:
        return []
    return list(text) if not separator else text.split(separator)


@function("string", "startsWith")
def _starts_with(args: Sequence[s.Node], scope: Scope) -> Any:
    text, prefix = _values(args, scope)
    if groq_type(text) != "string" or groq_type(prefix) != "string":
        return None
    return bool(text.startswith(prefix))


@function("array", "join")
def _join(args: Sequence[s.Node], scope: Scope) -> Any:
    items, separator = _values(args, scope)
    if groq_type(items) != "array" or groq_type(separator) != "string":
        return None
    parts = []
    for item in items:
        text = scalar_text(item)
        if text is None:
            return None
        parts.append(text)
    return separator.join(parts)


@unary("array", "compact")
def _compact(value: Any) -> Any:
    if groq_type(value) != "array":
        return None
    return [item for item in value if item is not None]


@unary("array", "unique")
def _unique(value: Any) -> Any:
    if groq_type(value) != "array":
        return None
    seen: set[tuple[str, Any]] = set()
    result = []
    for item in value:
        kind = groq_type(item)
        if kind in ("number", "string", "boolean", "datetime"):
            # A JavaScript Set holds date-times by identity, not by instant.
            key = (kind, id(item) if kind == "datetime" else item)
            if key in seen:
                continue
            seen.add(key)
        result.append(item)
    return result


@function("array", "intersects")
def _intersects(args: Sequence[s.Node], scope: Scope) -> Any:
    left, right = _values(args, scope)
    if groq_type(left) != "array" or groq_type(right) != "array":
        return None
    return any(is_equal(a, b) for a in left for b in right)


# -- math:: ---------------------------------------------------------------------------


def _numbers(value: Any) -> list[Any] | None:
    """The numbers of an array, nulls skipped; None if it is not one or holds others."""
    if groq_type(value) != "array":
        return None
    numbers = []
    for item in value:
        kind = groq_type(item)
        if kind == "number":
            numbers.append(item)
        elif kind != "null":
            return None
    return numbers


@unary("math", "min")
def _min(value: Any) -> Any:
    numbers = _numbers(value)
    return min(numbers) if numbers else None


@unary("math", "max")
def _max(value: Any) -> Any:
    numbers = _numbers(value)
    return max(numbers) if numbers else None


@unary("math", "sum")
def _sum(value: Any) -> Any:
    numbers = _numbers(value)
    return None if numbers is None else number(functools.reduce(lambda a, b: a + b, numbers, 0))


@unary("math", "avg")
def _avg(value: Any) -> Any:
    numbers = _numbers(value)
    if not numbers:
        return None
    total = functools.reduce(lambda a, b: a + b, numbers, 0)
    return number(total / len(numbers))


# -- pt:: -----------------------------------------------------------------------------


@unary("pt", "text")
def _pt_text(value: Any) -> Any:
    kind = groq_type(value)
    if kind == "object":
        return _block_text(value)
    if kind == "array":
        texts = _blocks_text(value, [])
        return "\n\n".join(texts) if texts else None
    return None


def _blocks_text(blocks: Any, result: list[str]) -> list[str]:
    for block in blocks:
        kind = groq_type(block)
        if kind == "array":
            _blocks_text(block, result)
        elif kind == "object":
            text = _block_text(block)
            if text is not None:
                result.append(text)
    return result


def _block_text(block: Any) -> str | None:
    children = block.get("children")
    if groq_type(block.get("_type")) != "string" or groq_type(children) != "array":
        return None
    return "".join(
        child["text"]
        for child in children
        if groq_type(child) == "object"
        and child.get("_type") == "span"
        and groq_type(child.get("text")) == "string"
    )


# -- sanity:: and releases:: ----------------------------------------------------------


@function("sanity", "projectId")
def _project_id(args: Sequence[s.Node], scope: Scope) -> Any:
    return (scope.context.sanity or {}).get("projectId")


@function("sanity", "dataset")
def _dataset(args: Sequence[s.Node], scope: Scope) -> Any:
    return (scope.context.sanity or {}).get("dataset")


def _document_id(scope: Scope) -> list[str] | None:
    doc = scope.value
    if groq_type(doc) != "object" or groq_type(doc.get("_id")) != "string":
        return None
    return list(doc["_id"].split("."))


@function("sanity", "versionOf")
def _version_of(args: Sequence[s.Node], scope: Scope) -> Any:
    base = ev.execute(args[0], scope)
    if groq_type(base) != "string":
        return None
    parts = _document_id(scope)
    if parts is None:
        return None
    if ".".join(parts) == base:
        return True
    if len(parts) >= 2 and parts[0] == "drafts" and ".".join(parts[1:]) == base:
        return True
    return len(parts) >= 3 and parts[0] == "versions" and ".".join(parts[2:]) == base


@function("sanity", "partOfRelease")
def _part_of_release(args: Sequence[s.Node], scope: Scope) -> Any:
    release = ev.execute(args[0], scope)
    if groq_type(release) != "string":
        return None
    parts = _document_id(scope)
    if parts is None:
        return None
    return len(parts) >= 3 and parts[0] == "versions" and parts[1] == release


@function("releases", "all")
def _releases(args: Sequence[s.Node], scope: Scope) -> Any:
    if groq_type(scope.source) != "array":
        return None
    return [
        doc
        for doc in scope.source
        if groq_type(doc) == "object" and doc.get("_type") == "system.release"
    ]


def _unsupported(namespace: str, name: str) -> None:
    def fail(args: Sequence[s.Node], scope: Scope) -> Any:
        raise GroqEvaluationError(f"{namespace}::{name}() is not supported outside Sanity")

    FUNCTIONS[(namespace, name)] = fail


for _namespace, _names in {
    "media": ["aspect"],
    "text": ["query", "semanticSimilarity"],
    "geo": ["latLng", "contains", "intersects", "distance"],
    "documents": ["get", "incomingRefCount"],
    "user": ["attributes"],
}.items():
    for _name in _names:
        _unsupported(_namespace, _name)


# -- delta:: and diff:: ---------------------------------------------------------------

KeyPath = list[str | int]


@function("delta", "operation")
def _operation(args: Sequence[s.Node], scope: Scope) -> Any:
    before, after = scope.context.before is not None, scope.context.after is not None
    if before and after:
        return "update"
    if after:
        return "create"
    return "delete" if before else None


@function("delta", "changedAny")
def _delta_changed_any(args: Sequence[s.Node], scope: Scope) -> Any:
    return changed_any(scope.context.before, scope.context.after, args[0], scope)


@function("delta", "changedOnly")
def _delta_changed_only(args: Sequence[s.Node], scope: Scope) -> Any:
    return changed_only(scope.context.before, scope.context.after, args[0], scope)


@function("diff", "changedAny")
def _diff_changed_any(args: Sequence[s.Node], scope: Scope) -> Any:
    before, after = ev.execute(args[0], scope), ev.execute(args[1], scope)
    return changed_any(before, after, args[2], scope)


@function("diff", "changedOnly")
def _diff_changed_only(args: Sequence[s.Node], scope: Scope) -> Any:
    before, after = ev.execute(args[0], scope), ev.execute(args[1], scope)
    return changed_only(before, after, args[2], scope)


def changed_any(before: Any, after: Any, selector: s.Node, scope: Scope) -> bool:
    """Whether any value the selector picks differs between ``before`` and ``after``."""
    before_paths = select_paths(selector, before, scope.hidden_child(before))
    after_paths = select_paths(selector, after, scope.hidden_child(after))
    if len(before_paths) != len(after_paths):
        return True
    for path in before_paths:
        for index, part in enumerate(path):
            if type(part) is int:
                old, new = value_at(before, path[:index]), value_at(after, path[:index])
                if groq_type(old) != "array" or groq_type(new) != "array":
                    return True
                if len(old) != len(new):
                    return True
        if not deep_equal(value_at(before, path), value_at(after, path)):
            return True
    return False


def changed_only(before: Any, after: Any, selector: s.Node, scope: Scope) -> bool:
    """Whether every difference lies under a path the selector picks."""
    selected = select_paths(selector, before, scope.hidden_child(before))
    for changed in _diff_paths(before, after):
        if not any(changed[: len(path)] == path for path in selected):
            return False
    return True


def value_at(value: Any, path: Sequence[str | int]) -> Any:
    """groq-js's ``valueAtPath``: stops at the first falsy value on the way."""
    current = value
    for part in path:
        current = _access(current, part)
        if not js_truthy(current):
            break
    return current


def _access(value: Any, part: str | int) -> Any:
    kind = groq_type(value)
    if kind == "object":
        return value.get(str(part))
    if kind in ("array", "string") and isinstance(part, int) and 0 <= part < len(value):
        return value[part]
    return None


def _diff_paths(before: Any, after: Any) -> list[KeyPath]:
    queue: list[KeyPath] = [[]]
    found: list[KeyPath] = []
    while queue:
        path = queue.pop(0)
        old, new = value_at(before, path), value_at(after, path)
        old_kind, new_kind = groq_type(old), groq_type(new)
        if old_kind != new_kind:
            found.append(path)
        elif old_kind in ("string", "boolean", "null", "number", "datetime"):
            if old != new:
                found.append(path)
        elif old_kind == "object" and not deep_equal(new, old):
            queue.extend([*path, key] for key in dict.fromkeys([*new, *old]))
        elif old_kind == "array":
            if len(new) != len(old):
                found.append(path)
            elif not deep_equal(new, old):
                queue.extend([*path, index] for index in range(len(old)))
    return found


def select_paths(node: s.Node, value: Any, scope: Scope) -> list[KeyPath]:
    """The key paths a delta selector picks in ``value``."""
    if isinstance(node, s.Group):
        return select_paths(node.base, value, scope)
    if isinstance(node, s.Tuple):
        return [path for member in node.members for path in select_paths(member, value, scope)]
    if isinstance(node, s.AccessAttribute):
        if node.base is None:
            return [[node.name]]
        return [[*path, node.name] for path in select_paths(node.base, value, scope)]
    if isinstance(node, s.ArrayCoerce | s.Filter):
        paths = []
        for path in select_paths(node.base, value, scope):
            items = value_at(value, path)
            if groq_type(items) != "array":
                continue
            for index, item in enumerate(items):
                if isinstance(node, s.Filter):
                    picked = ev.execute(s.Filter(s.This(), node.expr), scope.nested([item]))
                    if not picked:
                        continue
                paths.append([*path, index])
        return paths
    if isinstance(node, s.SelectorFuncCall):
        return _anywhere(node.arg, scope.hidden_child(value), [])
    if isinstance(node, s.SelectorNested):
        nested = []
        for path in select_paths(node.base, value, scope):
            inner = value_at(value, path)
            for sub in select_paths(node.nested, inner, scope):
                nested.append([*path, *sub])
        return nested
    raise GroqEvaluationError("the argument must be a selector")


def _anywhere(expr: s.Node, scope: Scope, base: KeyPath) -> list[KeyPath]:
    value = scope.value
    paths: list[KeyPath] = []
    kind = groq_type(value)
    if kind == "array":
        for index, item in enumerate(value):
            paths.extend(_anywhere(expr, scope.hidden_child(item), [*base, index]))
    elif kind == "object":
        if ev.execute(expr, scope) is True:
            paths.append(base)
        for key, item in value.items():
            paths.extend(_anywhere(expr, scope.hidden_child(item), [*base, key]))
    return paths


# -- pipe functions -------------------------------------------------------------------


def order(base: list[Any], args: Sequence[s.Node], scope: Scope) -> list[Any]:
    """``| order(a, b desc)``: a stable sort by each key in turn."""
    keys = [arg.base if isinstance(arg, s.Asc | s.Desc) else arg for arg in args]
    signs = [-1 if isinstance(arg, s.Desc) else 1 for arg in args]
    rows = []
    for item in base:
        item_scope = scope.nested(item)
        rows.append((item, [ev.execute(key, item_scope) for key in keys]))

    def by_keys(a: tuple[Any, list[Any]], b: tuple[Any, list[Any]]) -> int:
        for sign, left, right in zip(signs, a[1], b[1], strict=True):
            result = total_compare(left, right) * sign
            if result:
                return result
        return 0

    return [row[0] for row in sorted(rows, key=functools.cmp_to_key(by_keys))]


def score(base: list[Any], args: Sequence[s.Node], scope: Scope) -> list[Any]:
    """``| score(...)``: objects with ``_score`` added, best first (others dropped)."""
    scored = []
    for item in base:
        if groq_type(item) != "object":
            continue
        item_scope = scope.nested(item)
        total = item["_score"] if groq_type(item.get("_score")) == "number" else 0
        for arg in args:
            total += _score_of(arg, item_scope)
        scored.append({**item, "_score": total})
    scored.sort(key=lambda item: -item["_score"])
    return scored


_BM25_K = 1.2


def _score_of(node: s.Node, scope: Scope) -> float:
    if isinstance(node, s.OpCall) and node.op == "match":
        words, _ = gather_text(ev.execute(node.left, scope), tokens)
        patterns, ok = gather_text(ev.execute(node.right, scope), term_patterns)
        if not ok or not words or not patterns:
            return 0
        total: float = 0
        for pattern in patterns:
            frequency = sum(1 for word in words if pattern.search(word))
            total += frequency * (_BM25_K + 1) / (frequency + _BM25_K)
        return total
    if isinstance(node, s.FuncCall) and node.name == "boost":
        inner = _score_of(node.args[0], scope)
        boost = ev.execute(node.args[1], scope)
        return inner + boost if groq_type(boost) == "number" and inner > 0 else 0
    if isinstance(node, s.Or):
        return _score_of(node.left, scope) + _score_of(node.right, scope)
    if isinstance(node, s.And):
        left, right = _score_of(node.left, scope), _score_of(node.right, scope)
        return 0 if left == 0 or right == 0 else left + right
    return 1 if ev.execute(node, scope) is True else 0
