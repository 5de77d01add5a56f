"""Evaluate a GROQ tree over a dataset, with groq-js's semantics.

Scopes work as groq-js's do: a filter, projection or ``order()`` opens a nested scope
(``^`` reaches the one outside), while the implicit per-element map of ``a[].b`` opens a
hidden one that ``^`` skips.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cms_sync.groq import syntax as s
from cms_sync.groq.errors import GroqEvaluationError
from cms_sync.groq.functions import FUNCTIONS, order, score
from cms_sync.groq.operators import arithmetic, compare, contains, match
from cms_sync.groq.parser import parse
from cms_sync.groq.values import DateTime, groq_type, partial_compare, to_json


@dataclass
class Context:
    """What a whole evaluation shares: the clock, the delta documents, the id index."""

    now: DateTime
    identity: str = "me"
    before: Any = None
    after: Any = None
    sanity: Mapping[str, str] | None = None
    _positions: Mapping[str, Sequence[int]] | None = field(default=None, repr=False)

    def _index(self, source: list[Any]) -> Mapping[str, Sequence[int]]:
        """Where each ``_id`` is in the dataset: built once per evaluation, on first use."""
        if self._positions is None:
            positions: dict[str, list[int]] = {}
            for position, doc in enumerate(source):
                if type(doc) is dict or groq_type(doc) == "object":
                    ref = doc.get("_id")
                    if type(ref) is str:
                        positions.setdefault(ref, []).append(position)
            self._positions = positions
        return self._positions

    def documents_with_ids(self, source: list[Any], ids: set[str]) -> list[Any]:
        """The documents of ``source`` whose ``_id`` is one of ``ids``, in source order."""
        index = self._index(source)
        return [source[p] for p in sorted(p for i in ids for p in index.get(i, ()))]

    def document(self, source: Any, document_id: str) -> Any:
        """The first document of the dataset with this ``_id`` (what ``->`` finds)."""
        if groq_type(source) != "array":
            return None
        found = self._index(source).get(document_id)
        return source[found[0]] if found else None


class Scope:
    """The value in scope, its parent scope, and what the evaluation shares."""

    __slots__ = ("context", "hidden", "params", "parent", "source", "value")

    def __init__(
        self,
        params: Mapping[str, Any],
        source: Any,
        value: Any,
        context: Context,
        parent: Scope | None,
        *,
        hidden: bool = False,
    ) -> None:
        self.params = params
        self.source = source
        self.value = value
        self.context = context
        self.parent = parent
        self.hidden = hidden

    def nested(self, value: Any) -> Scope:
        parent = self.parent if self.hidden else self
        return Scope(self.params, self.source, value, self.context, parent)

    def hidden_child(self, value: Any) -> Scope:
        parent = self.parent if self.hidden else self
        return Scope(self.params, self.source, value, self.context, parent, hidden=True)


def evaluate(
    query_or_tree: str | s.Query | s.Node,
    dataset: Sequence[Mapping[str, Any]] | None,
    params: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
    root: Any = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    identity: str = "me",
    sanity: Mapping[str, str] | None = None,
    mode: s.Mode | None = None,
    id_index: Mapping[str, Sequence[int]] | None = None,
) -> Any:
    """Evaluate a query (text or a tree from :func:`parse`) and return JSON data.

    Args:
        dataset: the documents ``*`` ranges over (and ``->`` dereferences).
        params: values of ``$name`` parameters.
        now: the instant ``now()`` and ``dateTime::now()`` return (default: the clock).
        root: the value of ``@`` at the top level.
        before, after: the documents of a delta (webhook filter) evaluation.
        sanity: ``{"projectId", "dataset"}`` for ``sanity::projectId()`` and friends.
        mode: how to parse a text query; delta when ``before`` or ``after`` is given.
        id_index: where each ``_id`` is in ``dataset`` (positions), when the caller keeps
            one; otherwise it is built on first use, once per evaluation.

    Raises:
        GroqSyntaxError: the text does not parse.
        GroqEvaluationError: the query uses what cannot be evaluated here.
    """
    if isinstance(query_or_tree, str):
        if mode is None:
            mode = "delta" if before is not None or after is not None else "normal"
        query_or_tree = parse(query_or_tree, params, mode=mode)
    node = query_or_tree.root if isinstance(query_or_tree, s.Query) else query_or_tree
    instant = (now or datetime.now(UTC)).astimezone(UTC)
    millis = int(instant.timestamp() * 1000)
    context = Context(DateTime(millis), identity, before or None, after or None, sanity)
    if id_index is not None:
        context._positions = id_index
    source = list(dataset) if dataset is not None else None
    scope = Scope(dict(params or {}), source, root, context, None)
    return to_json(execute(node, scope))


def execute(node: s.Node, scope: Scope) -> Any:
    """The value of ``node`` in ``scope`` (values may hold DateTime and Path)."""
    return _EXECUTORS[type(node)](node, scope)


# -- executors ------------------------------------------------------------------------


def _attribute(node: s.AccessAttribute, scope: Scope) -> Any:
    base = execute(node.base, scope) if node.base is not None else scope.value
    if groq_type(base) == "object":
        return base.get(node.name)
    return None


def _element(node: s.AccessElement, scope: Scope) -> Any:
    base = execute(node.base, scope)
    if groq_type(base) != "array":
        return None
    index = node.index + len(base) if node.index < 0 else node.index
    return base[index] if 0 <= index < len(base) else None


def _slice(node: s.Slice, scope: Scope) -> Any:
    base = execute(node.base, scope)
    if groq_type(base) != "array":
        return None
    length = len(base)
    left = node.left + length if node.left < 0 else node.left
    right = node.right + length if node.right < 0 else node.right
    if node.inclusive:
        right += 1
    return list(base[max(left, 0) : max(right, 0)])


def _filter(node: s.Filter, scope: Scope) -> Any:
    base = _id_lookup(node, scope)
    if base is None:
        base = execute(node.base, scope)
    if groq_type(base) != "array":
        return None
    return [item for item in base if execute(node.expr, scope.nested(item)) is True]


def _id_lookup(node: s.Filter, scope: Scope) -> list[Any] | None:
    """``*[_id == X && ...]`` or ``*[_id in [...] && ...]`` with ``X`` a literal or a
    parameter: only documents with those ids can pass, so only they are tested (the id
    index Sanity's backend has). None: the filter has no such term; scan the dataset.
    """
    if not isinstance(node.base, s.Everything) or groq_type(scope.source) != "array":
        return None
    for term in _conjuncts(node.expr):
        if not (
            isinstance(term, s.OpCall)
            and term.op in ("==", "in")
            and isinstance(term.left, s.AccessAttribute)
            and term.left.base is None
            and term.left.name == "_id"
            and isinstance(term.right, s.Value | s.Parameter)
        ):
            continue
        wanted = execute(term.right, scope)
        if term.op == "==":
            wanted = [wanted]
        elif groq_type(wanted) != "array":
            continue
        if not all(type(i) is str for i in wanted):
            continue  # null matches a missing _id, a number a numeric one: scan
        return scope.context.documents_with_ids(scope.source, set(wanted))
    return None


def _conjuncts(node: s.Node) -> list[s.Node]:
    while isinstance(node, s.Group):
        node = node.base
    if isinstance(node, s.And):
        return [*_conjuncts(node.left), *_conjuncts(node.right)]
    return [node]


def _projection(node: s.Projection, scope: Scope) -> Any:
    base = execute(node.base, scope)
    if groq_type(base) != "object":
        return None
    return execute(node.expr, scope.nested(base))


def _deref(node: s.Deref, scope: Scope) -> Any:
    value = execute(node.base, scope)
    if groq_type(scope.source) != "array" or groq_type(value) != "object":
        return None
    ref = value.get("_ref")
    if type(ref) is not str:
        return None
    return scope.context.document(scope.source, ref)


def _map(node: s.Map | s.FlatMap, scope: Scope) -> Any:
    base = execute(node.base, scope)
    if groq_type(base) != "array":
        return None
    results = [execute(node.expr, scope.hidden_child(item)) for item in base]
    if isinstance(node, s.Map):
        return results
    flat: list[Any] = []
    for result in results:
        if groq_type(result) == "array":
            flat.extend(result)
        else:
            flat.append(result)
    return flat


def _object(node: s.Object, scope: Scope) -> Any:
    result: dict[str, Any] = {}
    for attribute in node.attributes:
        if isinstance(attribute, s.ObjectAttributeValue):
            result[attribute.name] = execute(attribute.value, scope)
            continue
        if (
            isinstance(attribute, s.ObjectConditionalSplat)
            and execute(attribute.condition, scope) is not True
        ):
            continue
        value = execute(attribute.value, scope)
        if groq_type(value) == "object":
            result.update(value)
    return result


def _array(node: s.Array, scope: Scope) -> Any:
    result: list[Any] = []
    for element in node.elements:
        value = execute(element.value, scope)
        if element.is_splat:
            if groq_type(value) == "array":
                result.extend(value)
        else:
            result.append(value)
    return result


def _op_call(node: s.OpCall, scope: Scope) -> Any:
    left, right = execute(node.left, scope), execute(node.right, scope)
    op = node.op
    if op in ("==", "!=", "<", "<=", ">", ">="):
        return compare(op, left, right)
    if op == "in":
        return contains(left, right)
    if op == "match":
        return match(left, right)
    return arithmetic(op, left, right)


def _logic(node: s.And | s.Or, scope: Scope) -> Any:
    """``&&`` and ``||``: the deciding value on either side wins; else null unless both
    sides are booleans.
    """
    deciding = isinstance(node, s.Or)
    left = execute(node.left, scope)
    if left is deciding:  # the right side cannot change the answer: not evaluated
        return deciding
    right = execute(node.right, scope)
    if right is deciding:
        return deciding
    if type(left) is bool and type(right) is bool:
        return not deciding
    return None


def _not(node: s.Not, scope: Scope) -> Any:
    value = execute(node.base, scope)
    return (not value) if type(value) is bool else None


def _sign(node: s.Neg | s.Pos, scope: Scope) -> Any:
    value = execute(node.base, scope)
    if groq_type(value) != "number":
        return None
    return -value if isinstance(node, s.Neg) else value


def _in_range(node: s.InRange, scope: Scope) -> Any:
    value = execute(node.base, scope)
    low = partial_compare(value, execute(node.left, scope))
    if low is None:
        return None
    high = partial_compare(value, execute(node.right, scope))
    if high is None:
        return None
    return low >= 0 and (high <= 0 if node.inclusive else high < 0)


def _select(node: s.Select, scope: Scope) -> Any:
    for alternative in node.alternatives:
        if execute(alternative.condition, scope) is True:
            return execute(alternative.value, scope)
    return execute(node.fallback, scope) if node.fallback is not None else None


def _func_call(node: s.FuncCall, scope: Scope) -> Any:
    function = FUNCTIONS.get((node.namespace, node.name))
    if function is None:
        raise GroqEvaluationError(f"Unknown function: {node.namespace}::{node.name}")
    return function(node.args, scope)


def _pipe_call(node: s.PipeFuncCall, scope: Scope) -> Any:
    base = execute(node.base, scope)
    if groq_type(base) != "array":
        return None
    return (order if node.name == "order" else score)(base, node.args, scope)


def _parent(node: s.Parent, scope: Scope) -> Any:
    current: Scope | None = scope
    for _ in range(node.n):
        assert current is not None
        current = current.parent
        if current is None:
            return None
    assert current is not None
    return current.value


def _context(node: s.Context, scope: Scope) -> Any:
    return scope.context.before if node.key == "before" else scope.context.after


def _unevaluable(node: s.Node, scope: Scope) -> Any:
    raise GroqEvaluationError(f"{type(node).__name__} cannot be evaluated")


def _array_coerce(node: s.ArrayCoerce, scope: Scope) -> Any:
    value = execute(node.base, scope)
    return value if groq_type(value) == "array" else None


_EXECUTORS: dict[type, Callable[[Any, Scope], Any]] = {
    s.Everything: lambda node, scope: scope.source,
    s.This: lambda node, scope: scope.value,
    s.Parent: _parent,
    s.Value: lambda node, scope: node.value,
    s.Parameter: lambda node, scope: scope.params.get(node.name),
    s.Context: _context,
    s.AccessAttribute: _attribute,
    s.AccessElement: _element,
    s.Slice: _slice,
    s.Filter: _filter,
    s.Projection: _projection,
    s.Deref: _deref,
    s.ArrayCoerce: _array_coerce,
    s.Map: _map,
    s.FlatMap: _map,
    s.Group: lambda node, scope: execute(node.base, scope),
    s.Object: _object,
    s.Array: _array,
    s.Tuple: _unevaluable,
    s.OpCall: _op_call,
    s.And: _logic,
    s.Or: _logic,
    s.Not: _not,
    s.Neg: _sign,
    s.Pos: _sign,
    s.InRange: _in_range,
    s.Select: _select,
    s.FuncCall: _func_call,
    s.PipeFuncCall: _pipe_call,
    s.Asc: lambda node, scope: None,
    s.Desc: lambda node, scope: None,
    s.SelectorNested: _unevaluable,
    s.SelectorFuncCall: _unevaluable,
}

__all__ = ["Context", "Scope", "evaluate", "execute"]
