"""The media mapping: which fields of which document types hold media.

TOML form (also the built-in default)::

    [types.product]
    media = ["mainImage", "gallery[]", "specSheet"]

    [types.post]
    media = ["mainImage"]

``name`` is an image or file object field; ``name[]`` is an array of image/file objects
whose items carry ``_key``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from cms_sync.errors import ConfigError

# A GROQ identifier that is not a system field: field names are spliced into the query
# text (ids and types never are), so only plain identifiers are accepted.
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_GROQ_LITERALS = frozenset({"null", "true", "false"})
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class MediaField:
    """One media field of a document type."""

    name: str
    is_array: bool = False

    @property
    def spec(self) -> str:
        return f"{self.name}[]" if self.is_array else self.name


@dataclass(frozen=True)
class MediaMapping:
    """Document type -> its media fields, in mapping order."""

    types: dict[str, tuple[MediaField, ...]]

    @property
    def type_names(self) -> list[str]:
        return list(self.types)


class _TypeEntry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    media: list[str] = pydantic.Field(min_length=1)


class _MappingFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    types: dict[str, _TypeEntry] = pydantic.Field(min_length=1)


DEFAULT_MAPPING_TOML = """\
[types.product]
media = ["mainImage", "gallery[]", "specSheet"]

[types.post]
media = ["mainImage"]
"""


def parse_field(spec: str) -> MediaField:
    """``"gallery[]"`` -> ``MediaField("gallery", is_array=True)``.

    Raises:
        ValueError: the spec is not a plain field name, optionally followed by ``[]``.
    """
    name, is_array = (spec[:-2], True) if spec.endswith("[]") else (spec, False)
    if name in _GROQ_LITERALS:
        raise ValueError(f"{spec!r} cannot be a media field: GROQ reads {name} as a literal")
    if not _FIELD.match(name):
        raise ValueError(
            f"{spec!r} is not a field name (letters, digits and _, not starting with _ "
            "or a digit; add [] for an array)"
        )
    return MediaField(name=name, is_array=is_array)


def mapping_from_data(data: dict[str, Any]) -> MediaMapping:
    """Validate parsed TOML data into a :class:`MediaMapping`.

    Raises:
        ValueError: with a message locating the first problem.
    """
    try:
        raw = _MappingFile.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        raise ValueError(f"{where}: {err['msg']}") from None
    types: dict[str, tuple[MediaField, ...]] = {}
    for type_name, entry in raw.types.items():
        if not _TYPE_NAME.match(type_name):
            raise ValueError(f"types.{type_name}: not a document type name")
        fields: list[MediaField] = []
        for index, spec in enumerate(entry.media):
            try:
                field = parse_field(spec)
            except ValueError as exc:
                raise ValueError(f"types.{type_name}.media[{index}]: {exc}") from None
            if any(f.name == field.name for f in fields):
                raise ValueError(f"types.{type_name}.media: {field.name!r} is listed twice")
            fields.append(field)
        types[type_name] = tuple(fields)
    return MediaMapping(types=types)


def default_mapping() -> MediaMapping:
    return mapping_from_data(tomllib.loads(DEFAULT_MAPPING_TOML))


def load_mapping(path: Path | None) -> MediaMapping:
    """Read the mapping from a TOML file, or the built-in default when ``path`` is None.

    Raises:
        ConfigError: unreadable file, bad TOML or an invalid mapping, naming the file.
    """
    if path is None:
        return default_mapping()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"CMS_SYNC_CONFIG: cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"CMS_SYNC_CONFIG: {path} is not valid TOML: {exc}") from None
    try:
        return mapping_from_data(data)
    except ValueError as exc:
        raise ConfigError(f"CMS_SYNC_CONFIG: {path}: {exc}") from None
