from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cms_sync.errors import ConfigError
from cms_sync.mapping import (
    DEFAULT_MAPPING_TOML,
    MediaField,
    default_mapping,
    load_mapping,
    mapping_from_data,
)


def test_default_mapping_is_the_documented_one() -> None:
    mapping = default_mapping()
    assert mapping.types == {
        "product": (MediaField("mainImage"), MediaField("gallery", True), MediaField("specSheet")),
        "post": (MediaField("mainImage"),),
    }


def test_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "media.toml"
    path.write_text('[types.event]\nmedia = ["poster", "photos[]"]\n')
    assert load_mapping(path).types == {"event": (MediaField("poster"), MediaField("photos", True))}
    assert load_mapping(None) == default_mapping()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "types: Field required"),
        ({"types": {}}, "types: Dictionary should have at least 1 item"),
        ({"types": {"post": {}}}, "types.post.media: Field required"),
        ({"types": {"post": {"media": []}}}, "types.post.media: List should have at least 1"),
        ({"types": {"post": {"media": ["main image"]}}}, "types.post.media[0]: 'main image'"),
        ({"types": {"post": {"media": ["_id"]}}}, "types.post.media[0]: '_id'"),
        ({"types": {"post": {"media": ["null"]}}}, "types.post.media[0]: 'null' cannot be"),
        ({"types": {"post": {"media": ["true[]"]}}}, "types.post.media[0]: 'true[]' cannot"),
        ({"types": {"post": {"media": ["a[][]"]}}}, "types.post.media[0]"),
        ({"types": {"post": {"media": ["a", "a[]"]}}}, "types.post.media: 'a' is listed twice"),
        ({"types": {"post": {"media": ["a"], "extra": 1}}}, "types.post.extra: Extra inputs"),
        ({"types": {"po st": {"media": ["a"]}}}, "types.po st: not a document type name"),
    ],
)
def test_invalid_mappings_name_the_problem(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        mapping_from_data(data)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[types.post\nmedia=", "is not valid TOML"),
        ('[types.post]\nmedia = ["x y"]\n', "types.post.media[0]"),
    ],
)
def test_bad_files_are_config_errors_naming_the_file(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "media.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    assert str(info.value).startswith(f"CMS_SYNC_CONFIG: {path}")
    assert message in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_mapping(tmp_path / "nope.toml")


def test_default_toml_round_trips() -> None:
    import tomllib

    assert mapping_from_data(tomllib.loads(DEFAULT_MAPPING_TOML)) == default_mapping()


def test_deploy_example_is_the_default() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "media.toml"
    assert load_mapping(example) == default_mapping()
