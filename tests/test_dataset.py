from __future__ import annotations

import pytest

from cms_sync.dataset import DatasetError, parse_export


def test_ndjson_export_in_file_order_blank_lines_skipped() -> None:
    text = '{"_id": "b"}\n\n{"_id": "a"}\n'
    assert parse_export(text) == [{"_id": "b"}, {"_id": "a"}]


def test_json_array_export() -> None:
    assert parse_export(' [{"_id": "a"}]') == [{"_id": "a"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"_id": "a"}\n{oops\n', "line 2 is not JSON"),
        ('{"_id": "a"}\n[1]\n', "line 2 is not a document"),
        ("[1, 2]", "item 0 is not a document"),
        ("[{", "not a JSON array"),
    ],
)
def test_bad_exports_name_the_line(text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_export(text)
