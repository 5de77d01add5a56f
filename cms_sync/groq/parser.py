"""Parse GROQ text into the tree of :mod:`cms_sync.groq.syntax`.

The grammar, its precedence table and its error positions follow groq-js's parser (the
reference implementation), so an error points where groq-js points. Two passes in one:
syntax errors stop the parse at once; semantic errors (an unknown function, a wrong
number of arguments, ``=>`` outside ``select()`` or an object) are collected and raised
only if the text parsed, as groq-js raises them after its raw parse.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from cms_sync.groq import syntax as s
from cms_sync.groq.errors import GroqSyntaxError
from cms_sync.groq.operators import arithmetic
from cms_sync.groq.values import groq_type

_WS = re.compile(r"(?:[\t\n\v\f\r \u0085\u00a0]|//[^\n]*\n)+")
_NUM = re.compile(r"\d+")
_IDENT = re.compile(r"[a-zA-Z_][a-zA-Z_0-9]*")

PREC_PAIR, PREC_OR, PREC_AND, PREC_COMP, PREC_ORDER = 1, 2, 3, 4, 4
PREC_ADD, PREC_MUL, PREC_POW, PREC_PIPE = 6, 7, 8, 11
PREC_POS = PREC_NOT = 10
PREC_NEG = 8

_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n"}
_ESCAPES |= {"r": "\r", "t": "\t"}

_ANY = -1  # any number of arguments
T = TypeVar("T")


def _at_least(n: int) -> Callable[[int], bool]:
    return lambda count: count >= n


# namespace -> function -> arity (a count, a predicate, or _ANY), as groq-js registers them.
FUNCTIONS: dict[str, dict[str, int | Callable[[int], bool]]] = {
    "global": {
        "anywhere": 1, "coalesce": _ANY, "count": 1, "dateTime": 1, "defined": 1,
        "identity": 0, "length": 1, "path": 1, "string": 1, "references": _at_least(1),
        "round": lambda count: 1 <= count <= 2, "now": 0, "boost": 2, "lower": 1, "upper": 1,
    },
    "string": {"lower": 1, "upper": 1, "split": 2, "startsWith": 2},
    "array": {"join": 2, "compact": 1, "unique": 1, "intersects": 2},
    "pt": {"text": 1},
    "delta": {"operation": _ANY, "changedAny": 1, "changedOnly": 1},
    "diff": {"changedAny": 3, "changedOnly": 3},
    "media": {"aspect": 2},
    "sanity": {"projectId": _ANY, "dataset": _ANY, "versionOf": 1, "partOfRelease": 1},
    "math": {"min": 1, "max": 1, "sum": 1, "avg": 1},
    "dateTime": {"now": 0},
    "releases": {"all": 0},
    "text": {"query": 1, "semanticSimilarity": 1},
    "geo": {"latLng": _ANY, "contains": _ANY, "intersects": _ANY, "distance": _ANY},
    "documents": {"get": _ANY, "incomingRefCount": _ANY},
    "user": {"attributes": _ANY},
}  # fmt: skip
_DELTA_ONLY = {("delta", "changedAny"), ("delta", "changedOnly")}
PIPE_FUNCTIONS = {"order", "score"}


class _Fail(Exception):
    """A syntax error inside the raw parse (caught where groq-js ignores it)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True, slots=True)
class _Pair(s.Node):
    """``a => b``: only valid inside ``select()`` and objects."""

    left: s.Node
    right: s.Node


@dataclass(frozen=True, slots=True)
class _Traversal(s.Node):
    """A base with its raw traversal steps, kept for delta selectors."""

    built: s.Node
    base: s.Node
    steps: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True, slots=True)
class _Invalid(s.Node):
    """An expression that is valid only as a delta selector (``a.(b, c)``)."""

    message: str


@dataclass(frozen=True, slots=True)
class _Func:
    name: str
    param: str
    body_start: int


# A traversal step as groq-js composes them: (kind, build), kind "a-a" | "a-b" | "b-a" | "b-b"
# (array or not, in and out).
Build = Callable[[s.Node], s.Node]
Step = tuple[str, Build]


def parse(
    query: str, params: Mapping[str, Any] | None = None, *, mode: s.Mode = "normal"
) -> s.Query:
    """Parse ``query``; ``params`` given here are inlined as values.

    ``mode="delta"`` enables ``before()``, ``after()``, ``delta::changedAny`` and
    ``delta::changedOnly``, as webhook filters use them.

    Raises:
        GroqSyntaxError: the text is not a valid query; ``.position`` is the offset.
    """
    return _Parser(query, dict(params or {}), mode).parse()


class _Parser:
    def __init__(self, text: str, params: dict[str, Any], mode: s.Mode) -> None:
        self.text = text
        self.params = params
        self.mode = mode
        self.problems: list[tuple[str, int]] = []
        self.functions: dict[str, _Func] = {}
        self.expanding: tuple[str, ...] = ()
        self.allow_boost = False

    # -- entry --------------------------------------------------------------------------
    def parse(self) -> s.Query:
        text = self.text
        try:
            pos = self.ws(0)
            while text.startswith("fn", pos):
                pos = self.ws(self.declaration(pos))
            for func in list(self.functions.values()):
                self.check_declaration(func)
            node, pos, fail = self.expr(pos, 0)
            pos = self.ws(pos)
            if pos != len(text):
                self.fail("Unexpected end of query", fail - 1 if fail else pos)
        except _Fail as error:
            raise GroqSyntaxError(error.message, error.position, text) from None
        if self.problems:
            message, position = self.problems[0]
            raise GroqSyntaxError(message, position, text)
        return s.Query(root=self.finish(node), mode=self.mode, text=text)

    def fail(self, message: str, position: int) -> NoReturn:
        raise _Fail(message, position)

    def problem(self, message: str, position: int) -> s.Node:
        self.problems.append((message, position))
        return s.Value(None)

    # -- lexing -------------------------------------------------------------------------
    def ws(self, pos: int) -> int:
        match = _WS.match(self.text, pos)
        return match.end() if match else pos

    def ident(self, pos: int) -> str | None:
        match = _IDENT.match(self.text, pos)
        return match.group() if match else None

    def char(self, pos: int) -> str:
        return self.text[pos] if 0 <= pos < len(self.text) else ""

    # -- expressions --------------------------------------------------------------------
    def expr(self, pos: int, level: int) -> tuple[s.Node, int, int]:
        """Parse at ``pos`` at least at precedence ``level``: (node, end, fail position)."""
        start = pos
        node, pos = self.primary(pos)
        lhs_level = 12
        trav_fail = 0
        text = self.text
        while True:
            inner = self.ws(pos)
            if inner == len(text):
                pos = inner
                break
            checkpoint = len(self.problems)
            try:
                steps, pos = self.traversals(inner)
            except _Fail as error:
                del self.problems[checkpoint:]
                trav_fail = error.position
            else:
                node = self.traverse(node, steps, start)
                continue
            head = text[inner]
            nxt = self.char(inner + 1)
            if head == "=" and nxt == ">":
                if level > PREC_PAIR or lhs_level <= PREC_PAIR:
                    break
                right, pos, _ = self.expr(self.ws(inner + 2), PREC_PAIR)
                node, lhs_level = _Pair(node, right), PREC_PAIR
            elif (head == "=" and nxt == "=") or (head == "!" and nxt == "="):
                if level > PREC_COMP or lhs_level <= PREC_COMP:
                    break
                right, pos, _ = self.expr(self.ws(inner + 2), PREC_COMP + 1)
                node, lhs_level = s.OpCall(head + "=", node, right), PREC_COMP
            elif head in "+-*/%" and not (head == "*" and nxt == "*"):
                prec = PREC_ADD if head in "+-" else PREC_MUL
                if level > prec or lhs_level < prec:
                    break
                right, pos, _ = self.expr(self.ws(inner + 1), prec + 1)
                node, lhs_level = s.OpCall(head, node, right), prec
            elif head == "*":
                if level > PREC_POW or lhs_level <= PREC_POW:
                    break
                right, pos, _ = self.expr(self.ws(inner + 2), PREC_POW)
                node, lhs_level = s.OpCall("**", node, right), PREC_POW
            elif head in "<>":
                if level > PREC_COMP or lhs_level <= PREC_COMP:
                    break
                end = inner + 2 if nxt == "=" else inner + 1
                right, pos, _ = self.expr(self.ws(end), PREC_COMP + 1)
                node, lhs_level = s.OpCall(text[inner:end], node, right), PREC_COMP
            elif head == "|" and nxt == "|":
                if level > PREC_OR or lhs_level < PREC_OR:
                    break
                right, pos, _ = self.expr(self.ws(inner + 2), PREC_OR + 1)
                node, lhs_level = s.Or(node, right), PREC_OR
            elif head == "|":
                if level > PREC_PIPE or lhs_level < PREC_PIPE:
                    break
                ident_pos = self.ws(inner + 1)
                name = self.ident(ident_pos)
                if not name:
                    self.fail("Expected identifier", ident_pos)
                pos = ident_pos + len(name)
                if self.char(pos) in ("(", ":"):
                    node, pos = self.pipe_call(node, ident_pos, pos)
                    lhs_level = PREC_PIPE
            elif head == "&" and nxt == "&":
                if level > PREC_AND or lhs_level < PREC_AND:
                    break
                right, pos, _ = self.expr(self.ws(inner + 2), PREC_AND + 1)
                node, lhs_level = s.And(node, right), PREC_AND
            elif text.startswith("desc", inner) or text.startswith("asc", inner):
                if level > PREC_ORDER or lhs_level < PREC_ORDER:
                    break
                descending = head == "d"
                node = s.Desc(node) if descending else s.Asc(node)
                pos, lhs_level = inner + (4 if descending else 3), PREC_ORDER
            else:
                word = self.ident(inner)
                if word == "in":
                    if level > PREC_COMP or lhs_level <= PREC_COMP:
                        break
                    node, pos = self.in_operator(node, inner)
                elif word == "match":
                    if level > PREC_COMP or lhs_level <= PREC_COMP:
                        break
                    right, pos, _ = self.expr(self.ws(inner + 5), PREC_COMP + 1)
                    node = s.OpCall("match", node, right)
                else:
                    break
                lhs_level = PREC_COMP
        return node, pos, trav_fail

    def in_operator(self, node: s.Node, inner: int) -> tuple[s.Node, int]:
        pos = self.ws(inner + 2)
        grouped = self.char(pos) == "("
        if grouped:
            pos = self.ws(pos + 1)
        left, end, _ = self.expr(pos, PREC_COMP + 1)
        pos = self.ws(end)
        result: s.Node
        if self.text.startswith("..", pos):
            inclusive = self.char(pos + 2) != "."
            pos = self.ws(pos + (2 if inclusive else 3))
            right, pos, _ = self.expr(pos, PREC_COMP + 1)
            result = s.InRange(node, left, right, inclusive)
        else:
            pos = end
            result = s.OpCall("in", node, left)
        if grouped:
            pos = self.ws(pos)
            if self.char(pos) != ")":
                self.fail('Expected ")" in group', pos)
            pos += 1
        return result, pos

    def primary(self, pos: int) -> tuple[s.Node, int]:
        text, start = self.text, pos
        head = self.char(pos)
        if head == "+":
            base, pos, _ = self.expr(self.ws(pos + 1), PREC_POS)
            return s.Pos(base), pos
        if head == "-":
            base, pos, _ = self.expr(self.ws(pos + 1), PREC_NEG)
            return s.Neg(base), pos
        if head == "!":
            base, pos, _ = self.expr(self.ws(pos + 1), PREC_NOT)
            return s.Not(base), pos
        if head == "(":
            return self.group_or_tuple(pos)
        if head == "{":
            return self.object(pos)
        if head == "[":
            return self.array(pos)
        if head in ("'", '"'):
            value, pos = self.string(pos)
            return s.Value(value), pos
        if head == "^":
            pos += 1
            n = 1
            while text.startswith(".^", pos):
                n += 1
                pos += 2
            return s.Parent(n), pos
        if head == "@":
            return s.This(), pos + 1
        if head == "*":
            return s.Everything(), pos + 1
        if head == "$":
            name = self.ident(pos + 1)
            if name:
                return self.parameter(name), pos + 1 + len(name)
            self.fail("Expected expression", pos)
        number = _NUM.match(text, pos)
        if number:
            return self.number(start, number.end())
        name = self.ident(pos)
        if name:
            pos += len(name)
            if self.char(pos) in (":", "("):
                return self.func_call(start, pos)
            keyword = {"null": s.Value(None), "true": s.Value(True), "false": s.Value(False)}
            return keyword.get(name, s.AccessAttribute(None, name)), pos
        raise _Fail("Expected expression", pos)

    def number(self, start: int, pos: int) -> tuple[s.Node, int]:
        text = self.text
        is_float = False
        if self.char(pos) == ".":
            fraction = _NUM.match(text, pos + 1)
            if fraction:
                is_float, pos = True, fraction.end()
        if self.char(pos) in ("e", "E"):
            is_float = True
            pos += 1
            if self.char(pos) in ("+", "-"):
                pos += 1
            exponent = _NUM.match(text, pos)
            if not exponent:
                self.fail("Exponent must be a number", pos)
            pos = exponent.end()
        literal = text[start:pos]
        value: float = float(literal) if is_float else int(literal)
        if not is_float and abs(value) > 2**53:
            value = float(value)
        return s.Value(value), pos

    def parameter(self, name: str) -> s.Node:
        if name in self.params:
            return s.Value(self.params[name])
        return s.Parameter(name)

    def string(self, pos: int) -> tuple[str, int]:
        text = self.text
        quote = text[pos]
        pos += 1
        parts: list[str] = []
        chunk = pos
        while True:
            if pos >= len(text):
                self.fail("Unexpected end of query", len(text) + 1)
            char = text[pos]
            if char == quote:
                parts.append(text[chunk:pos])
                break
            if char == "\\":
                parts.append(text[chunk:pos])
                pos = self.escape(pos, parts)
                chunk = pos
                continue
            pos += 1
        value = "".join(parts)
        if any("\ud800" <= c <= "\udfff" for c in value):
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value, pos + 1

    def escape(self, pos: int, parts: list[str]) -> int:
        """Append the escape at ``pos`` (a backslash) to ``parts``; the position after it."""
        text = self.text
        kind = self.char(pos + 1)
        if not kind:
            self.fail("Unexpected end of query", len(text) + 1)
        if kind == "u":
            if self.char(pos + 2) == "{":
                end = text.find("}", pos + 3)
                digits = text[pos + 3 : end] if end >= 0 else ""
                after = end + 1
            else:
                digits, after = text[pos + 2 : pos + 6], pos + 6
            if not re.fullmatch(r"[0-9a-fA-F]{1,6}", digits) or int(digits, 16) > 0x10FFFF:
                self.fail("Invalid unicode escape", pos)
            parts.append(chr(int(digits, 16)))
            return after
        if kind not in _ESCAPES:
            self.fail("Invalid escape sequence", pos)
        parts.append(_ESCAPES[kind])
        return pos + 2

    def group_or_tuple(self, pos: int) -> tuple[s.Node, int]:
        first, end, _ = self.expr(self.ws(pos + 1), 0)
        pos = self.ws(end)
        if self.char(pos) == ")":
            return s.Group(first), pos + 1
        if self.char(pos) != ",":
            self.fail(f'Unexpected character "{self.char(pos) or "undefined"}"', pos)
        rest, pos = self.items(self.ws(pos + 1), self.item, ")", trailing=False)
        members = [first, *rest]
        if self.char(pos) != ")":
            self.fail('Expected ")" after tuple expression', pos)
        return s.Tuple(tuple(members)), pos + 1

    def array(self, pos: int) -> tuple[s.Node, int]:
        pos = self.ws(pos + 1)
        elements: list[s.ArrayElement] = []
        if self.char(pos) != "]":
            elements, pos = self.items(pos, self.element, "]", trailing=True)
        if self.char(pos) != "]":
            self.fail('Expected "]" after array expression', pos)
        return s.Array(tuple(elements)), pos + 1

    def element(self, pos: int) -> tuple[s.ArrayElement, int]:
        splat = self.text.startswith("...", pos)
        if splat:
            pos = self.ws(pos + 3)
        value, end, _ = self.expr(pos, 0)
        return s.ArrayElement(value, splat), end

    def item(self, pos: int) -> tuple[s.Node, int]:
        node, end, _ = self.expr(pos, 0)
        return node, end

    def items(
        self, pos: int, parse: Callable[[int], tuple[T, int]], close: str, *, trailing: bool
    ) -> tuple[list[T], int]:
        """Comma-separated items from ``pos``; (items, where the list stopped)."""
        items: list[T] = []
        while True:
            item, end = parse(pos)
            items.append(item)
            pos = self.ws(end)
            if self.char(pos) != ",":
                return items, pos
            pos = self.ws(pos + 1)
            if trailing and self.char(pos) == close:
                return items, pos

    def object(self, pos: int) -> tuple[s.Node, int]:
        pos = self.ws(pos + 1)
        attributes: list[s.ObjectAttributeValue | s.ObjectConditionalSplat | s.ObjectSplat] = []
        while self.char(pos) != "}":
            if self.text.startswith("...", pos):
                pos = self.ws(pos + 3)
                if self.char(pos) not in ("}", ","):
                    value, pos, _ = self.expr(pos, 0)
                    attributes.append(s.ObjectSplat(value))
                else:
                    attributes.append(s.ObjectSplat(s.This()))
            else:
                entry, pos = self.object_entry(pos)
                attributes.append(entry)
            pos = self.ws(pos)
            if self.char(pos) != ",":
                break
            pos = self.ws(pos + 1)
        if self.char(pos) != "}":
            self.fail('Expected "}" after object', pos)
        return s.Object(tuple(attributes)), pos + 1

    def object_entry(
        self, pos: int
    ) -> tuple[s.ObjectAttributeValue | s.ObjectConditionalSplat, int]:
        if self.char(pos) in ("'", '"'):
            key, end = self.string(pos)
            after = self.ws(end)
            if self.char(after) == ":":
                value, end, _ = self.expr(self.ws(after + 1), 0)
                return s.ObjectAttributeValue(key, value), end
        value, end, _ = self.expr(pos, 0)
        if isinstance(value, _Pair):
            return s.ObjectConditionalSplat(value.left, value.right), end
        return s.ObjectAttributeValue(self.property_key(value, pos), value), end

    def property_key(self, node: s.Node, pos: int) -> str:
        node = _unwrap(node)
        while not (isinstance(node, s.AccessAttribute) and node.base is None):
            if not isinstance(node, _KEYED):
                self.problem(f"Cannot determine property key for type: {_name(node)}", pos)
                return ""
            node = _unwrap(node.base)
        return node.name

    # -- traversals ---------------------------------------------------------------------
    def traversals(self, pos: int) -> tuple[list[tuple[Any, ...]], int]:
        """One or more traversal steps at ``pos``; raises _Fail when there is none."""
        steps = [self.traversal(pos)]
        end = steps[0][-1]
        while True:
            checkpoint = len(self.problems)
            try:
                step = self.traversal(self.ws(end))
            except _Fail:
                del self.problems[checkpoint:]
                return [step[:-1] for step in steps], end
            steps.append(step)
            end = step[-1]

    def traversal(self, pos: int) -> tuple[Any, ...]:
        """(kind, payload..., end) of the step at ``pos``."""
        text, start = self.text, pos
        head = self.char(pos)
        if head == ".":
            pos = self.ws(pos + 1)
            if self.char(pos) == "(":
                node, end = self.group_or_tuple(pos)
                return ("nested", node, start, end)
            name = self.ident(pos)
            if not name:
                self.fail('Expected identifier after "."', pos)
            return ("attr", name, pos + len(name))
        if head == "-":
            if self.char(pos + 1) != ">":
                self.fail('Expected ">" in reference', pos)
            pos += 2
            ident_pos = self.ws(pos)
            name = self.ident(ident_pos)
            if name:
                return ("deref", name, ident_pos + len(name))
            return ("deref", None, pos)
        if head == "[":
            pos = self.ws(pos + 1)
            if self.char(pos) == "]":
                return ("postfix", pos + 1)
            left, end, _ = self.expr(pos, 0)
            pos = self.ws(end)
            if text.startswith("..", pos):
                inclusive = self.char(pos + 2) != "."
                pos = self.ws(pos + (2 if inclusive else 3))
                right, end, _ = self.expr(pos, 0)
                pos = self.ws(end)
                if self.char(pos) != "]":
                    self.fail('Expected "]" after array expression', pos)
                return ("slice", left, right, inclusive, start, pos + 1)
            if self.char(pos) != "]":
                self.fail('Expected "]" after array expression', pos)
            return ("bracket", left, start, pos + 1)
        if head == "|":
            pos = self.ws(pos + 1)
            if self.char(pos) == "{":
                node, end = self.object(pos)
                return ("projection", node, end)
        elif head == "{":
            node, end = self.object(pos)
            return ("projection", node, end)
        raise _Fail("Unexpected character in traversal", pos)

    def traverse(self, base: s.Node, steps: list[tuple[Any, ...]], start: int) -> s.Node:
        result: tuple[str, Build] | None = None
        for step in reversed(steps):
            result = self.step(step, result)
        if isinstance(_unwrap(base), s.Everything | s.Array | s.PipeFuncCall):
            result = _traverse_array(lambda node: node, result)
        assert result is not None
        return _Traversal(result[1](_unwrap(base)), base, tuple(steps))

    def step(self, step: tuple[Any, ...], right: tuple[str, Build] | None) -> tuple[str, Build]:
        kind = step[0]
        if kind == "attr":
            name = step[1]
            return _traverse_plain(lambda base: s.AccessAttribute(base, name), right)
        if kind == "deref":
            attr = step[1]

            def deref(base: s.Node) -> s.Node:
                node: s.Node = s.Deref(base)
                return s.AccessAttribute(node, attr) if attr else node

            return _traverse_plain(deref, right)
        if kind == "postfix":
            return _traverse_array(s.ArrayCoerce, right)
        if kind == "projection":
            obj = step[1]
            return _traverse_projection(lambda base: s.Projection(base, obj), right)
        if kind == "slice":
            return self.slice_step(step, right)
        if kind == "bracket":
            return self.bracket_step(step[1], step[2], right)
        invalid = _Invalid("a group in a traversal is only valid in a delta selector")
        return _traverse_plain(lambda base: invalid, right)

    def bracket_step(
        self, expr: s.Node, pos: int, right: tuple[str, Build] | None
    ) -> tuple[str, Build]:
        value = constant(expr)
        kind = groq_type(value.value) if value else None
        if value is not None and kind == "number":
            index = value.value
            if index != int(index):
                self.problem("array element access must use an integer", pos)
                index = 0
            return _traverse_element(lambda base: s.AccessElement(base, int(index)), right)
        if value is not None and kind == "string":
            name = value.value
            return _traverse_plain(lambda base: s.AccessAttribute(base, name), right)
        return _traverse_array(lambda base: s.Filter(base, _unwrap(expr)), right)

    def slice_step(
        self, step: tuple[Any, ...], right: tuple[str, Build] | None
    ) -> tuple[str, Build]:
        _, left_node, right_node, inclusive, pos = step
        left, end = constant(left_node), constant(right_node)
        if (
            left is None
            or end is None
            or groq_type(left.value) != "number"
            or groq_type(end.value) != "number"
        ):
            self.problem("slicing must use constant numbers", pos)
            return _traverse_array(lambda base: base, right)
        if left.value != int(left.value) or end.value != int(end.value):
            self.problem("slicing must use integer bounds", pos)
        lo, hi = int(left.value), int(end.value)
        return _traverse_array(lambda base: s.Slice(base, lo, hi, inclusive), right)

    # -- function calls -----------------------------------------------------------------
    def call_args(self, pos: int) -> tuple[list[s.Node], int]:
        """Arguments from ``pos`` (just inside the parenthesis) to after the ``)``."""
        args: list[s.Node] = []
        if self.char(pos) != ")":
            args, pos = self.items(pos, self.item, ")", trailing=True)
        if self.char(pos) != ")":
            self.fail('Expected ")" after function arguments', pos)
        return args, pos + 1

    def call_name(self, start: int, pos: int) -> tuple[str, str, int]:
        """(namespace, name, position of the first argument) of a call at ``start``."""
        text = self.text
        if text.startswith("::", pos):
            namespace = text[start:pos]
            pos = self.ws(pos + 2)
            name = self.ident(pos)
            if not name:
                self.fail("Expected function name", pos)
            pos = self.ws(pos + len(name))
            if self.char(pos) != "(":
                self.fail('Expected "(" after function name', pos)
            return namespace, name, self.ws(pos + 1)
        return "global", text[start:pos], self.ws(pos + 1)

    def func_call(self, start: int, pos: int) -> tuple[s.Node, int]:
        namespace, name, pos = self.call_name(start, pos)
        args, end = self.call_args(pos)
        return self.build_call(namespace, name, args, start), end

    def build_call(self, namespace: str, name: str, args: list[s.Node], pos: int) -> s.Node:
        if namespace == "global" and name == "select":
            return self.select(args, pos)
        selector_arg = {("diff", "changedAny"): 2, ("diff", "changedOnly"): 2}
        selector_arg |= {("delta", "changedAny"): 0, ("delta", "changedOnly"): 0}
        index = selector_arg.get((namespace, name))
        if index is not None and index < len(args):
            args[index] = self.selector(args[index], pos)
        if namespace == "global" and name in ("before", "after") and self.mode == "delta":
            if args:
                return self.problem(f"Incorrect number of arguments to function {name}().", pos)
            return s.Context(name)  # type: ignore[arg-type]
        if namespace == "global" and name == "boost" and not self.allow_boost:
            return self.problem("unexpected boost", pos)
        custom = self.functions.get(f"{namespace}::{name}")
        if custom is not None:
            return self.expand(custom, args, pos)
        functions = FUNCTIONS.get(namespace)
        if functions is None:
            return self.problem(f"Undefined namespace: {namespace}", pos)
        arity = functions.get(name)
        if arity is None or ((namespace, name) in _DELTA_ONLY and self.mode == "normal"):
            return self.problem(f"Undefined function: {name}", pos)
        self.check_arity(name, arity, len(args), pos)
        return s.FuncCall(namespace, name, tuple(_unwrap(arg) for arg in args))

    def check_arity(self, name: str, arity: Any, count: int, pos: int) -> None:
        if isinstance(arity, int):
            if arity != _ANY and count != arity:
                self.problem(
                    f"Incorrect number of arguments to function {name}(). "
                    f"Expected {arity}, got {count}.",
                    pos,
                )
        elif not arity(count):
            self.problem(f"Incorrect number of arguments to function {name}().", pos)

    def select(self, args: list[s.Node], pos: int) -> s.Node:
        alternatives: list[s.SelectAlternative] = []
        fallback: s.Node | None = None
        for arg in args:
            if fallback is not None:
                return self.problem("unexpected argument to select()", pos)
            if isinstance(arg, _Pair):
                alternatives.append(s.SelectAlternative(arg.left, arg.right))
            else:
                fallback = arg
        return s.Select(tuple(alternatives), fallback)

    def pipe_call(self, base: s.Node, start: int, pos: int) -> tuple[s.Node, int]:
        namespace, name, pos = self.call_name(start, pos)
        saved = self.allow_boost
        if name == "score":
            self.allow_boost = True
        try:
            args, end = self.call_args(pos)
        finally:
            self.allow_boost = saved
        if namespace != "global":
            return self.problem(f"Undefined namespace: {namespace}", start), end
        if name not in PIPE_FUNCTIONS:
            return self.problem(f"Undefined pipe function: {name}", start), end
        if not args:
            self.problem(f"Incorrect number of arguments to function {name}().", start)
        if name == "order":
            args = [
                type(arg)(_unwrap(arg.base)) if isinstance(arg, s.Asc | s.Desc) else arg
                for arg in args
            ]
        return s.PipeFuncCall(_unwrap(base), name, tuple(_unwrap(arg) for arg in args)), end

    # -- selectors (delta::changedAny and friends) -------------------------------------
    def selector(self, node: s.Node, pos: int) -> s.Node:
        if isinstance(node, s.AccessAttribute) and node.base is None:
            return node
        if isinstance(node, s.Group):
            return self.selector(node.base, pos)
        if isinstance(node, s.Tuple):
            return s.Tuple(tuple(self.selector(member, pos) for member in node.members))
        if isinstance(node, s.FuncCall) and node.name == "anywhere" and len(node.args) == 1:
            return s.SelectorFuncCall("anywhere", node.args[0])
        if isinstance(node, _Traversal):
            return self.selector_steps(node, pos)
        return self.problem("Invalid selector syntax", pos)

    def selector_steps(self, node: _Traversal, pos: int) -> s.Node:
        current = self.selector(node.base, pos)
        for step in node.steps:
            kind = step[0]
            if kind == "postfix":
                current = s.ArrayCoerce(current)
            elif kind == "attr":
                current = s.AccessAttribute(current, step[1])
            elif kind == "bracket":
                value = constant(step[1])
                if value is not None and groq_type(value.value) == "number":
                    return self.problem("Invalid array access expression", pos)
                if value is not None and groq_type(value.value) == "string":
                    current = s.AccessAttribute(current, value.value)
                else:
                    current = s.Filter(current, _unwrap(step[1]))
            elif kind == "nested":
                nested = self.selector(step[1], pos)
                current = s.SelectorNested(current, nested)
            else:
                return self.problem("Invalid selector syntax", pos)
        return current

    # -- custom functions (fn ns::name($p) = $p{...};) -----------------------------------
    def declaration(self, start: int) -> int:
        text = self.text
        pos = self.ws(start + 2)
        namespace = self.ident(pos)
        if not namespace:
            self.fail("Expected function name", pos)
        pos = self.ws(pos + len(namespace))
        if not text.startswith("::", pos):
            self.fail('Expected "::" after namespace', pos)
        pos = self.ws(pos + 2)
        name = self.ident(pos)
        if not name:
            self.fail("Expected function name", pos)
        pos = self.ws(pos + len(name))
        if self.char(pos) != "(":
            self.fail('Expected "("', pos)
        pos = self.ws(pos + 1)
        params: list[str] = []
        while pos < len(text) and self.char(pos) != ")":
            if self.char(pos) != "$":
                self.fail('Parameter should start with "$"', pos)
            param = self.ident(pos + 1)
            if not param:
                self.fail("Expected function name", pos + 1)
            params.append(param)
            pos = self.ws(pos + 1 + len(param))
            if self.char(pos) == ",":
                pos = self.ws(pos + 1)
            elif self.char(pos) != ")":
                self.fail('Expected "," or ")"', pos)
        if self.char(pos) != ")":
            self.fail('Expected ")"', pos)
        pos = self.ws(pos + 1)
        if self.char(pos) != "=":
            self.fail('Expected "="', pos)
        body_start = pos = self.ws(pos + 1)
        checkpoint = len(self.problems)
        _, end, _ = self.expr(pos, 0)
        del self.problems[checkpoint:]
        pos = self.ws(end)
        if self.char(pos) != ";":
            self.fail('Expected ";" after function declaration', pos)
        if len(params) != 1:
            self.problem("Custom functions can only have one parameter", start)
        key = f"{namespace}::{name}"
        self.functions[key] = _Func(key, params[0] if params else "", body_start)
        return pos + 1

    def check_declaration(self, func: _Func) -> None:
        self.expand(func, [s.Parameter(func.param)], func.body_start)

    def expand(self, func: _Func, args: list[s.Node], pos: int) -> s.Node:
        if func.name in self.expanding:
            return self.problem(f"Recursive function definition detected for {func.name}", pos)
        if len(args) != 1:
            return self.problem(
                f"Incorrect number of arguments to function {func.name.split('::')[1]}(). "
                f"Expected 1, got {len(args)}.",
                pos,
            )
        saved_params, saved_expanding = self.params, self.expanding
        self.params = {k: v for k, v in self.params.items() if k != func.param}
        self.expanding = (*saved_expanding, func.name)
        try:
            body, _, _ = self.expr(func.body_start, 0)
        finally:
            self.params, self.expanding = saved_params, saved_expanding
        body = _unwrap(body)
        return self.bind(func, body, _unwrap(args[0]), pos)

    def bind(self, func: _Func, body: s.Node, arg: s.Node, pos: int) -> s.Node:
        param = s.Parameter(func.param)
        if isinstance(body, s.Projection):
            if body.base == param:
                return s.Projection(arg, self.validate_body(body.expr, func.param, 1, pos))
            if isinstance(body.base, s.Deref) and body.base.base == param:
                expr = self.validate_body(body.expr, func.param, 1, pos)
                return s.Projection(s.Deref(arg), expr)
        if (
            isinstance(body, s.Map)
            and isinstance(body.base, s.ArrayCoerce)
            and body.base.base == param
        ):
            return s.Map(s.ArrayCoerce(arg), self.validate_body(body.expr, func.param, 0, pos))
        return self.problem(
            f'Unexpected function body, must be a projection. Got "{type(body).__name__}"', pos
        )

    def validate_body(self, node: s.Node, param: str, level: int, pos: int) -> s.Node:
        if isinstance(node, s.Parent) and level - node.n < 0:
            self.problem(
                f"Invalid use of parent operator (^). No parent n {node.n} at level {level}.",
                pos,
            )
        if isinstance(node, s.Parameter) and node.name == param:
            self.problem(
                f"Function parameters are not allowed outside function declarations: {param}",
                pos,
            )
        for field in dataclasses.fields(node):  # type: ignore[arg-type]
            child = getattr(node, field.name)
            inner = level + 1 if field.name == "expr" else level
            for item in child if isinstance(child, tuple) else (child,):
                if isinstance(item, s.Node):
                    self.validate_body(item, param, inner, pos)
        return node

    # -- finishing ----------------------------------------------------------------------
    def finish(self, node: s.Node) -> s.Node:
        """Strip parse-only wrappers and reject ``=>``, ``asc`` and ``desc`` out of place."""
        node = _unwrap(node)
        if isinstance(node, _Pair | s.Asc | s.Desc):
            self.fail_late(f"unexpected {_name(node).lower()}".replace("pair", "=>"))
        if isinstance(node, _Invalid):
            self.fail_late(node.message)
        changes: dict[str, Any] = {}
        for field in dataclasses.fields(node):  # type: ignore[arg-type]
            child = getattr(node, field.name)
            if isinstance(child, s.Node):
                changes[field.name] = self.finish(child)
            elif isinstance(child, tuple) and child and isinstance(child[0], s.Node):
                changes[field.name] = tuple(self.finish_arg(node, item) for item in child)
        return dataclasses.replace(node, **changes) if changes else node  # type: ignore[type-var]

    def finish_arg(self, parent: s.Node, node: s.Node) -> s.Node:
        ordering = isinstance(parent, s.PipeFuncCall) and parent.name == "order"
        if ordering and isinstance(node, s.Asc | s.Desc):
            return type(node)(self.finish(node.base))
        return self.finish(node)

    def fail_late(self, message: str) -> NoReturn:
        raise GroqSyntaxError(message, 0, self.text)


_KEYED = (
    s.PipeFuncCall, s.Deref, s.Map, s.FlatMap, s.Projection, s.Slice, s.Filter,
    s.AccessElement, s.ArrayCoerce, s.Group,
)  # fmt: skip


def _name(node: s.Node) -> str:
    return "Pair" if isinstance(node, _Pair) else type(node).__name__


def _unwrap(node: s.Node) -> s.Node:
    return node.built if isinstance(node, _Traversal) else node


def constant(node: s.Node) -> s.Value | None:
    """The value of an expression made only of literals and arithmetic, else None."""
    node = _unwrap(node)
    if isinstance(node, s.Value):
        return node
    if isinstance(node, s.Parameter):
        return s.Value(None)
    if isinstance(node, s.Group):
        return constant(node.base)
    if isinstance(node, s.Pos | s.Neg):
        inner = constant(node.base)
        if inner is None:
            return None
        if groq_type(inner.value) != "number":
            return s.Value(None)
        return s.Value(-inner.value if isinstance(node, s.Neg) else inner.value)
    if isinstance(node, s.OpCall) and node.op in ("+", "-", "*", "/", "%", "**"):
        left, right = constant(node.left), constant(node.right)
        if left is None or right is None:
            return None
        return s.Value(arithmetic(node.op, left.value, right.value))
    return None


# -- composing traversals (groq-js traversal.ts) ---------------------------------------


def _join(a: Build, b: Build) -> Build:
    return lambda base: b(a(base))


def _map(inner: Build) -> Build:
    return lambda base: s.Map(base, inner(s.This()))


def _flat_map(inner: Build) -> Build:
    return lambda base: s.FlatMap(base, inner(s.This()))


def _traverse_array(build: Build, right: tuple[str, Build] | None) -> tuple[str, Build]:
    if right is None:
        return "a-a", build
    kind, rest = right
    if kind in ("a-a", "a-b"):
        return kind, _join(build, rest)
    if kind == "b-b":
        return "a-a", _join(build, _map(rest))
    return "a-a", _join(build, _flat_map(rest))


def _traverse_plain(build: Build, right: tuple[str, Build] | None) -> tuple[str, Build]:
    if right is None:
        return "b-b", build
    kind, rest = right
    return ("b-a" if kind in ("a-a", "b-a") else "b-b"), _join(build, rest)


def _traverse_element(build: Build, right: tuple[str, Build] | None) -> tuple[str, Build]:
    if right is None:
        return "a-b", build
    kind, rest = right
    return ("a-a" if kind in ("a-a", "b-a") else "a-b"), _join(build, rest)


def _traverse_projection(build: Build, right: tuple[str, Build] | None) -> tuple[str, Build]:
    if right is None:
        return "b-b", build
    kind, rest = right
    if kind in ("a-a", "a-b"):
        return kind, _join(_map(build), rest)
    return kind, _join(build, rest)
