"""``cms-sync groq``: a query over an export, printed as JSON; errors with a caret."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cms_sync.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, caret, main, run_groq

EXPORT = '{"_id": "a", "_type": "product", "price": 3}\n{"_id": "b", "_type": "post"}\n'


def groq(query: str, dataset: str | None = EXPORT, *params: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_groq(query, dataset, params, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_prints_the_result_as_json() -> None:
    code, out, _ = groq("*[_type == $type]{_id, price}", EXPORT, 'type="product"')
    assert code == EXIT_OK
    assert json.loads(out) == [{"_id": "a", "price": 3}]


def test_params_are_json_and_may_be_written_with_a_dollar() -> None:
    code, out, _ = groq("[$n + 1, $flag]", None, "$n=41", "flag=true")
    assert (code, json.loads(out)) == (EXIT_OK, [42, True])


def test_syntax_error_shows_the_query_with_a_caret_and_exits_1() -> None:
    code, out, err = groq("*[_type == ]")
    assert (code, out) == (EXIT_FAILED, "")
    assert err.splitlines()[1:] == ["*[_type == ]", "          ^"]
    assert "column 11" in err


def test_caret_points_into_the_right_line() -> None:
    assert caret("*[\n  a == ]", 10) == "  a == ]\n       ^"


@pytest.mark.parametrize("param", ["x=bad", "novalue", "=1"])
def test_bad_param_is_a_usage_error(param: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["groq", "1", "--param", param]) == EXIT_USAGE
    assert "--param" in capsys.readouterr().err


def test_dataset_file_and_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export.ndjson"
    export.write_text(EXPORT, encoding="utf-8")
    assert main(["groq", "count(*)", "--dataset", str(export)]) == EXIT_OK
    assert capsys.readouterr().out.strip() == "2"
    monkeypatch.setattr("sys.stdin", io.StringIO(EXPORT))
    assert main(["groq", "*[0]._id", "--dataset", "-"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == '"a"'


def test_unreadable_or_bad_dataset_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["groq", "1", "--dataset", str(tmp_path / "missing")]) == EXIT_USAGE
    bad = tmp_path / "bad.ndjson"
    bad.write_text("{nope\n", encoding="utf-8")
    assert main(["groq", "1", "--dataset", str(bad)]) == EXIT_USAGE
    assert "line 1" in capsys.readouterr().err
