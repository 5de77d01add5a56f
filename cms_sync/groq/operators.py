"""GROQ's binary operators over values, with groq-js's null and type rules."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from cms_sync.groq.values import (
    DateTime,
    Path,
    groq_type,
    is_equal,
    number,
    partial_compare,
)


def arithmetic(op: str, left: Any, right: Any) -> Any:
    """``+ - * / % **``: numbers as doubles; ``+`` also joins strings, arrays and
    objects, and moves a date-time by seconds; ``-`` of two date-times is seconds.
    """
    left_type, right_type = groq_type(left), groq_type(right)
    if op == "+":
        if left_type == "datetime" and right_type == "number":
            return left.add_seconds(right)
        if left_type == "number" and right_type == "datetime":
            return right.add_seconds(left)
        if left_type == right_type and left_type in ("string", "array"):
            return left + right if left_type == "string" else [*left, *right]
        if left_type == right_type == "object":
            return {**left, **right}
    if op == "-":
        if left_type == "datetime" and right_type == "number":
            return left.add_seconds(-right)
        if left_type == right_type == "datetime":
            return left.seconds_since(right)
    if left_type != "number" or right_type != "number":
        return None
    return number(_NUMERIC[op](left, right))


def _divide(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 else math.copysign(math.inf, a) * math.copysign(1, b)
    quotient = a / b
    if type(a) is int and type(b) is int and a % b == 0 and abs(a) <= 2**53:
        return a // b
    return quotient


def _remainder(a: float, b: float) -> float:
    if b == 0:
        return math.nan
    if type(a) is int and type(b) is int:
        result = abs(a) % abs(b)
        return -result if a < 0 else result
    return math.fmod(a, b)


def _power(a: float, b: float) -> float:
    if (
        type(a) is int
        and type(b) is int
        and b >= 0
        and (abs(a) <= 1 or b * abs(a).bit_length() <= 64)
    ):
        result: int = a**b
        if abs(result) <= 2**53:
            return result
    try:
        return math.pow(a, b)
    except ValueError:  # a negative base to a fractional power, or 0 to a negative one
        return math.nan if a < 0 else math.inf
    except OverflowError:
        return math.inf


_NUMERIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _divide,
    "%": _remainder,
    "**": _power,
}


def compare(op: str, left: Any, right: Any) -> bool | None:
    """``== != < <= > >=``; ordering is null between values that cannot be ordered."""
    if op == "==":
        return is_equal(left, right)
    if op == "!=":
        return not is_equal(left, right)
    order = partial_compare(left, right)
    if order is None:
        return None
    if op == "<":
        return order < 0
    if op == "<=":
        return order <= 0
    if op == ">":
        return order > 0
    return order >= 0


def contains(left: Any, right: Any) -> bool | None:
    """``in``: membership of an array, or a string matched against a ``path()``."""
    kind = groq_type(right)
    if kind == "path":
        if groq_type(left) != "string":
            return None
        return bool(Path.matches(right, left))
    if kind == "array":
        return any(is_equal(left, item) for item in right)
    return None


# -- match ----------------------------------------------------------------------------

_JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_TOKEN = re.compile(rf"[^!@#$%^&*(),\\/?\";:{{}}|\[\]+<>{_JS_SPACE}-]+")
_TERM = re.compile(rf"[^!@#$%^&(),\\/?\";:{{}}|\[\]+<>{_JS_SPACE}-]+")
_EDGE = re.compile(r"(\b\.+|\.+\b)", re.ASCII)
_MAX_TERM = 1024


def tokens(text: str) -> list[str]:
    """The words of a text as ``match`` sees them."""
    return _TOKEN.findall(_EDGE.sub("", text))


def term_patterns(text: str) -> list[re.Pattern[str]]:
    """Each search term as a case-insensitive pattern; ``*`` is a wildcard."""
    patterns = []
    for term in _TERM.findall(_EDGE.sub("", text)):
        body = "".join(
            ".*" if char == "*" else "." if char == "." else re.escape(char)
            for char in term[:_MAX_TERM]
        )
        patterns.append(re.compile(f"^{body}$", re.IGNORECASE))
    return patterns


def gather_text(value: Any, split: Callable[[str], list[Any]]) -> tuple[list[Any], bool]:
    """(parts, every value was a string) of a string or an array of strings."""
    kind = groq_type(value)
    if kind == "string":
        return split(value), True
    if kind == "array":
        parts: list[Any] = []
        ok = True
        for item in value:
            if groq_type(item) == "string":
                parts.extend(split(item))
            else:
                ok = False
        return parts, ok
    return [], False


def match(left: Any, right: Any) -> bool:
    words, _ = gather_text(left, tokens)
    patterns, ok = gather_text(right, term_patterns)
    if not ok or not words or not patterns:
        return False
    return all(any(p.search(word) for word in words) for p in patterns)


__all__ = ["DateTime", "arithmetic", "compare", "contains", "match"]
