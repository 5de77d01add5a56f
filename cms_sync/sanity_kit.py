"""The Sanity side of a deployment: the webhook that feeds the worker, from the mapping.

The webhook is GROQ-powered, with a filter in delta mode (``before()``, ``after()``,
``delta::``) so that Sanity sends only the changes that can need a store or a patch:

- a document of a mapped type is created;
- an asset reference of a mapped slot changes, or a slot is added (a new slot's
  reference goes from null to a value);
- a slot that was in sync is not any more, its reference unchanged: a revision restored
  (or an older draft published) without the fields the worker wrote.

It does not fire for the worker's own write-back (slots only come into sync), for an edit
of other fields, or for other types. The worker decides on
its own read of the document anyway; the filter only spares both sides the traffic.
``deploy/sanity/webhook.json`` is :func:`webhook_definition` for the default mapping,
and a test keeps it so.
"""

from __future__ import annotations

import json
from typing import Any

from cms_sync.mapping import MediaField, MediaMapping
from cms_sync.media import SOURCE_ASSET

#: What each delivery carries: the worker reads the document itself.
PROJECTION = "{_id, _type, _rev}"
#: The GROQ API version of the filter and projection (delta mode needs 2021-03-25 or later).
API_VERSION = "v2021-03-25"
SECRET_PLACEHOLDER = "<the value of SANITY_WEBHOOK_SECRET>"  # noqa: S105 - a placeholder
URL_PLACEHOLDER = "https://<your cms-sync host>/webhooks/sanity"


def _refs_changed(fields: list[MediaField]) -> str:
    """True when an asset reference of these fields changed, or a slot came or went.

    Single fields go in one ``delta::changedAny`` tuple. groq-js (which Sanity validates
    filters with) takes no ``array[]`` selector there, and compares arrays as never
    equal, so an array's references are compared joined into one string.
    """
    single = [f"{f.name}.asset._ref" for f in fields if not f.is_array]
    tests = [f"delta::changedAny(({', '.join(single)}))"] if single else []
    for field in fields:
        if field.is_array:
            refs = f"{field.name}[].asset._ref"
            tests.append(f'array::join(before().{refs}, ",") != array::join(after().{refs}, ",")')
    return " || ".join(tests)


def _lost_sync(field: MediaField) -> str:
    """True when the change took this field's slots out of sync: fewer in sync after than
    before (for an array), or in sync before and not after."""
    source = SOURCE_ASSET
    if field.is_array:
        synced = f"{field.name}[asset._ref == {source}]"
        return f"count(before().{synced}) > count(after().{synced})"
    before, after = f"before().{field.name}", f"after().{field.name}"
    return f"({before}.asset._ref == {before}.{source} && {after}.asset._ref != {after}.{source})"


def webhook_filter(mapping: MediaMapping) -> str:
    """The delta-mode filter for ``mapping`` (see the module docstring)."""
    fields = {field.name: field for fields in mapping.types.values() for field in fields}
    ordered = [fields[name] for name in sorted(fields)]
    types = json.dumps(sorted(mapping.types))
    lost = " || ".join(_lost_sync(f) for f in ordered)
    return (
        f"_type in {types} && ("
        'delta::operation() == "create"'
        f" || {_refs_changed(ordered)}"
        f" || {lost}"
        ")"
    )


def webhook_definition(mapping: MediaMapping, *, dataset: str = "production") -> dict[str, Any]:
    """The webhook, as the body of Sanity's create-webhook call (the manage UI has the same
    fields): POST, create and update, published documents only, a secret to sign with."""
    return {
        "type": "document",
        "name": "cms-sync",
        "description": "Queues a Filestack sync when a media slot needs a store or a patch.",
        "url": URL_PLACEHOLDER,
        "dataset": dataset,
        "httpMethod": "POST",
        "apiVersion": API_VERSION,
        "includeDrafts": False,
        "headers": {},
        "secret": SECRET_PLACEHOLDER,
        "rule": {
            "on": ["create", "update"],
            "filter": webhook_filter(mapping),
            "projection": PROJECTION,
        },
    }
