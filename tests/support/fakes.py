"""The package's emulators with the test settings' credentials and the recorded fixtures.

``FakeContentLake`` and ``FakeFilestack`` are cms_sync.emulators' ``ContentLake`` and
``Filestack`` with the credentials ``wiring.make_settings`` uses. The fake Filestack
fetches sources from a stand-in CDN (``placeholder_cdn``) instead of the network, since
tests served through ``httpx.MockTransport`` have no asset server.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cms_sync.emulators import ContentLake, Filestack
from cms_sync.emulators.http import mime_for

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TOKEN = "sk-test-token"
API_KEY = "fs-test-key"


def load_fixture(relative: str) -> Any:
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


def recorded_document(doc_id: str) -> Any:
    """The worker's query answer for one published document, as groq-js recorded it."""
    (document,) = load_fixture(f"sanity/query/{doc_id}.json")["result"]
    return document


def load_dataset() -> list[dict[str, Any]]:
    text = (FIXTURES / "sanity" / "dataset.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def placeholder_cdn(request: httpx.Request) -> httpx.Response:
    """Any asset URL answers 1 KiB of bytes derived from its path, typed by its extension."""
    path = request.url.path
    data = (path.encode() * (1024 // max(1, len(path)) + 1))[:1024]
    return httpx.Response(200, content=data, headers={"content-type": mime_for(path)})


@dataclass
class FakeContentLake(ContentLake):
    token: str = TOKEN

    @classmethod
    def from_fixtures(cls, **kwargs: Any) -> FakeContentLake:
        return cls(documents={d["_id"]: d for d in load_dataset()}, **kwargs)

    def slot_value(self, doc_id: str, path: str) -> dict[str, Any]:
        """The media object at ``mainImage`` or ``gallery[_key=="k"]``."""
        return resolve(self.documents[doc_id], path)


@dataclass
class FakeFilestack(Filestack):
    api_key: str = API_KEY
    source_transport: httpx.BaseTransport | None = field(
        default_factory=lambda: httpx.MockTransport(placeholder_cdn)
    )

    def held_after_kill(self, granted: set[str], timeout: float = 2.0) -> set[str]:
        """The sources held at the gate once a killed process's last requests are in.

        ``granted`` are the sources whose store the process's ledger granted. A request it
        wrote just before the kill may still be on its way into the server's thread, so this
        waits for each of them to arrive; a store granted but never sent never does, hence
        the bound. (The fake runs in this process, the sender is dead: there is nothing else
        to wait on.)
        """
        deadline = time.monotonic() + timeout
        while not granted <= set(self.held) and time.monotonic() < deadline:
            time.sleep(0.01)
        return set(self.held)


#: The job store's query (SQLite and PostgreSQL) for the assets whose store its ledger
#: granted and saw no answer to: after a kill, the stores that were in flight.
GRANTED_STORES_SQL = "SELECT asset_id FROM store_log WHERE error IS NULL"

_KEYED = re.compile(r'^(?P<field>[A-Za-z_][A-Za-z0-9_]*)\[_key==(?P<key>"(?:[^"\\]|\\.)*")\]$')


def resolve(doc: dict[str, Any], path: str) -> dict[str, Any]:
    match = _KEYED.match(path)
    if match is None:
        return doc[path]  # type: ignore[no-any-return]
    key = json.loads(match["key"])
    return next(item for item in doc[match["field"]] if item.get("_key") == key)
