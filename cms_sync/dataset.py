"""Read a dataset export: NDJSON (what ``sanity dataset export`` writes) or a JSON array."""

from __future__ import annotations

import json
from typing import Any


class DatasetError(ValueError):
    """The text is neither NDJSON documents nor a JSON array of documents."""


def parse_export(text: str) -> list[dict[str, Any]]:
    """The documents of an export, in file order.

    Raises:
        DatasetError: a line (or the array) is not JSON, or holds something other than
            an object; the message names the line.
    """
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            documents = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"not a JSON array: {exc}") from None
        return [_document(item, f"item {index}") for index, item in enumerate(documents)]
    result = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"line {number} is not JSON: {exc.msg}") from None
        result.append(_document(item, f"line {number}"))
    return result


def _document(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise DatasetError(f"{where} is not a document (a JSON object)")
    return item
