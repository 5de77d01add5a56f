"""The GROQ syntax tree that :func:`cms_sync.groq.parse` returns.

Node names follow groq-js, so a tree reads the same in both. Every node is an immutable
dataclass; ``Query`` wraps the root with the mode it was parsed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["normal", "delta"]


class Node:
    """Base of every syntax node."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Everything(Node):
    """``*``: the dataset."""


@dataclass(frozen=True, slots=True)
class This(Node):
    """``@``: the value in scope."""


@dataclass(frozen=True, slots=True)
class Parent(Node):
    """``^`` (n=1), ``^.^`` (n=2)..."""

    n: int


@dataclass(frozen=True, slots=True)
class Value(Node):
    """A literal, or a parameter whose value was given to ``parse``."""

    value: Any


@dataclass(frozen=True, slots=True)
class Parameter(Node):
    """``$name``, resolved when the query is evaluated."""

    name: str


@dataclass(frozen=True, slots=True)
class Context(Node):
    """``before()`` or ``after()`` in delta mode."""

    key: Literal["before", "after"]


@dataclass(frozen=True, slots=True)
class AccessAttribute(Node):
    base: Node | None
    name: str


@dataclass(frozen=True, slots=True)
class AccessElement(Node):
    base: Node
    index: int


@dataclass(frozen=True, slots=True)
class Slice(Node):
    base: Node
    left: int
    right: int
    inclusive: bool


@dataclass(frozen=True, slots=True)
class Filter(Node):
    base: Node
    expr: Node


@dataclass(frozen=True, slots=True)
class Projection(Node):
    base: Node
    expr: Node


@dataclass(frozen=True, slots=True)
class Deref(Node):
    base: Node


@dataclass(frozen=True, slots=True)
class ArrayCoerce(Node):
    base: Node


@dataclass(frozen=True, slots=True)
class Map(Node):
    """Evaluates ``expr`` for each element of the array ``base``."""

    base: Node
    expr: Node


@dataclass(frozen=True, slots=True)
class FlatMap(Node):
    """Like :class:`Map`, with array results spliced in."""

    base: Node
    expr: Node


@dataclass(frozen=True, slots=True)
class Group(Node):
    base: Node


@dataclass(frozen=True, slots=True)
class ObjectAttributeValue(Node):
    name: str
    value: Node


@dataclass(frozen=True, slots=True)
class ObjectConditionalSplat(Node):
    condition: Node
    value: Node


@dataclass(frozen=True, slots=True)
class ObjectSplat(Node):
    value: Node


@dataclass(frozen=True, slots=True)
class Object(Node):
    attributes: tuple[ObjectAttributeValue | ObjectConditionalSplat | ObjectSplat, ...]


@dataclass(frozen=True, slots=True)
class ArrayElement(Node):
    value: Node
    is_splat: bool


@dataclass(frozen=True, slots=True)
class Array(Node):
    elements: tuple[ArrayElement, ...]


@dataclass(frozen=True, slots=True)
class Tuple(Node):
    members: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class OpCall(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class And(Node):
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Or(Node):
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Not(Node):
    base: Node


@dataclass(frozen=True, slots=True)
class Neg(Node):
    base: Node


@dataclass(frozen=True, slots=True)
class Pos(Node):
    base: Node


@dataclass(frozen=True, slots=True)
class InRange(Node):
    base: Node
    left: Node
    right: Node
    inclusive: bool


@dataclass(frozen=True, slots=True)
class SelectAlternative(Node):
    condition: Node
    value: Node


@dataclass(frozen=True, slots=True)
class Select(Node):
    alternatives: tuple[SelectAlternative, ...]
    fallback: Node | None


@dataclass(frozen=True, slots=True)
class FuncCall(Node):
    namespace: str
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class PipeFuncCall(Node):
    base: Node
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Asc(Node):
    base: Node


@dataclass(frozen=True, slots=True)
class Desc(Node):
    base: Node


@dataclass(frozen=True, slots=True)
class SelectorNested(Node):
    """``a.(b, c)`` in a delta selector: paths under ``base``."""

    base: Node
    nested: Node


@dataclass(frozen=True, slots=True)
class SelectorFuncCall(Node):
    """``anywhere(cond)`` in a delta selector."""

    name: str
    arg: Node


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: its tree, and whether delta functions may be used."""

    root: Node
    mode: Mode
    text: str
