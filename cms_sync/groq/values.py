"""GROQ values: types, ordering, equality, date-times and paths.

A value is plain JSON data (``None``, ``bool``, ``int``/``float``, ``str``, ``list``,
``dict``) or one of the two values GROQ adds: :class:`DateTime` and :class:`Path`.
Numbers behave as IEEE doubles, as in groq-js (the reference implementation): a result
that is not finite is null, and an integer past 2**53 becomes a float.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

GroqType = Literal["null", "boolean", "number", "string", "array", "object", "datetime", "path"]

_SAFE_INTEGER = 2**53


def groq_type(value: object) -> GroqType:
    """The GROQ type of a value (``bool`` is a boolean, never a number)."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is bool:
        return "boolean"
    if kind is int or kind is float:
        return "number"
    if kind is str:
        return "string"
    if kind is list:
        return "array"
    if kind is dict:
        return "object"
    if kind is DateTime:
        return "datetime"
    if kind is Path:
        return "path"
    return _slow_type(value)


def _slow_type(value: object) -> GroqType:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return "array"
    return "null"


def number(value: float) -> float | None:
    """A computed number as a double would hold it: null when not finite."""
    if type(value) is int:
        return value if -_SAFE_INTEGER <= value <= _SAFE_INTEGER else float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return value


def js_truthy(value: object) -> bool:
    """JavaScript truthiness, which two groq-js algorithms rely on."""
    if value is None or value is False:
        return False
    if type(value) in (int, float):
        return value != 0
    if type(value) is str:
        return value != ""
    return True


# -- date-times -----------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|([-+])(\d{2}):(\d{2}))$"
)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (any year, even 0)."""
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = (days if days >= 0 else days - 146096) // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


@dataclass(frozen=True, slots=True)
class DateTime:
    """An instant with millisecond precision, as groq-js holds it (a JavaScript Date)."""

    millis: int

    @classmethod
    def parse(cls, text: str) -> DateTime | None:
        """An RFC 3339 date-time, or None when the text is not one.

        Like JavaScript's Date, a day past the month's end rolls over (April 31st is
        May 1st) and hour 24 is the next midnight; other out-of-range fields are invalid.
        """
        match = _RFC3339.match(text)
        if match is None:
            return None
        year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
        fraction = match.group(7) or ".0"
        millis = int((fraction[1:] + "00")[:3])
        if not (1 <= month <= 12 and 1 <= day <= 31 and minute <= 59 and second <= 59):
            return None
        if hour > 24 or (hour == 24 and (minute or second or millis)):
            return None
        offset = 0
        if match.group(8) != "Z":
            off_hours, off_minutes = int(match.group(10)), int(match.group(11))
            if off_hours > 23 or off_minutes > 59:
                return None
            offset = (off_hours * 60 + off_minutes) * (1 if match.group(9) == "+" else -1)
        days = _days_from_civil(year, month, day)
        total = ((days * 24 + hour) * 60 + minute - offset) * 60 + second
        return cls(total * 1000 + millis)

    def add_seconds(self, seconds: float) -> DateTime:
        # JavaScript's setTime truncates a fractional millisecond toward zero.
        return DateTime(int(self.millis + seconds * 1000))

    def seconds_since(self, other: DateTime) -> float | int:
        difference = self.millis - other.millis
        return difference // 1000 if difference % 1000 == 0 else difference / 1000

    def __str__(self) -> str:
        seconds, millis = divmod(self.millis, 1000)
        days, seconds = divmod(seconds, 86400)
        year, month, day = _civil_from_days(days)
        hour, rest = divmod(seconds, 3600)
        minute, second = divmod(rest, 60)
        fraction = f".{millis:03d}" if millis else ""
        return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}Z"


# -- paths ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Path:
    """A ``path()`` pattern: ``*`` matches one dot-separated segment, ``**`` any."""

    pattern: str

    def matches(self, text: str) -> bool:
        parts = []
        for part in self.pattern.split("."):
            if part == "*":
                parts.append("[^.]+")
            elif part == "**":
                parts.append(".*")
            else:
                parts.append(re.escape(part))
        return re.fullmatch(r"\.".join(parts), text) is not None

    def __str__(self) -> str:
        return self.pattern


# -- comparison -----------------------------------------------------------------------


def _compare_strings(left: str, right: str) -> int:
    # JavaScript compares UTF-16 code units; code points differ only past the BMP.
    if not (left.isascii() and right.isascii()):
        left_units, right_units = left.encode("utf-16-be"), right.encode("utf-16-be")
        return (left_units > right_units) - (left_units < right_units)
    return (left > right) - (left < right)


def partial_compare(left: Any, right: Any) -> int | None:
    """Order of two values of one comparable type; None when they cannot be ordered."""
    kind = groq_type(left)
    if kind != groq_type(right):
        return None
    if kind == "string":
        return _compare_strings(left, right)
    if kind == "datetime":
        left, right = left.millis, right.millis
    elif kind not in ("number", "boolean"):
        return None
    return int(left > right) - int(left < right)


_TYPE_ORDER = {"datetime": 1, "number": 2, "string": 3, "boolean": 4}


def total_compare(left: object, right: object) -> int:
    """The order used by ``order()``: by type first, then by value; others tie."""
    left_rank = _TYPE_ORDER.get(groq_type(left), 100)
    right_rank = _TYPE_ORDER.get(groq_type(right), 100)
    if left_rank != right_rank:
        return left_rank - right_rank
    return partial_compare(left, right) or 0


def is_equal(left: object, right: object) -> bool:
    """``==``: only null, booleans, numbers, strings and date-times are ever equal."""
    kind = groq_type(left)
    if kind != groq_type(right) or kind not in _EQUATABLE:
        return False
    return bool(left == right)


_EQUATABLE = frozenset({"null", "boolean", "number", "string", "datetime"})


def deep_equal(left: object, right: object) -> bool:
    """Structural equality as groq-js's delta functions use it."""
    if left is None or right is None:
        return left is right
    left_kind, right_kind = groq_type(left), groq_type(right)
    if left_kind in ("array", "object") and right_kind in ("array", "object"):
        left_items, right_items = _entries(left), _entries(right)
        if len(left_items) != len(right_items):
            return False
        return all(
            key in right_items and deep_equal(value, right_items[key])
            for key, value in left_items.items()
        )
    if left_kind != right_kind:
        return False
    return bool(left == right)


def _entries(value: Any) -> dict[str, Any]:
    if groq_type(value) == "array":
        return {str(index): item for index, item in enumerate(value)}
    return dict(value)


# -- text -----------------------------------------------------------------------------


def number_text(value: float) -> str:
    """A number as JavaScript's ``String(n)`` writes it (``1e+21``, ``1e-7``, ``0.1``)."""
    if type(value) is int and abs(value) < 10**21:
        return str(value)
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    text = "".join(map(str, digits))
    k = len(text)
    n = k + int(exponent)
    prefix = "-" if sign else ""
    if k <= n <= 21:
        return prefix + text + "0" * (n - k)
    if 0 < n <= 21:
        return prefix + text[:n] + "." + text[n:]
    if -6 < n <= 0:
        return prefix + "0." + "0" * -n + text
    mantissa = text[0] + ("." + text[1:] if k > 1 else "")
    return f"{prefix}{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"


def scalar_text(value: object) -> str | None:
    """``string()`` of a number, string, boolean or date-time; None for other types."""
    kind = groq_type(value)
    if kind == "string":
        return value  # type: ignore[return-value]
    if kind == "number":
        return number_text(value)  # type: ignore[arg-type]
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "datetime":
        return str(value)
    return None


def to_json(value: Any) -> Any:
    """A result as JSON data: date-times and paths become strings, whole floats ints."""
    kind = groq_type(value)
    if kind == "number":
        if type(value) is float and value.is_integer() and abs(value) <= _SAFE_INTEGER:
            return int(value)
        return value
    if kind == "array":
        return [to_json(item) for item in value]
    if kind == "object":
        return {key: to_json(item) for key, item in value.items()}
    if kind in ("datetime", "path"):
        return str(value)
    return value
