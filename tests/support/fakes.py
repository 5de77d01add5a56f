"""In-memory fakes of the Content Lake and Filestack that speak the wire formats of WIRE.md.

Each fake is an ``httpx.Request -> httpx.Response`` handler: tests use it through
``httpx.MockTransport`` or behind a real socket (``servers.serve``). The Content Lake fake
evaluates any query with cms_sync.groq over its published documents (checked against
groq-js recordings in tests/groq) and applies JSONMatch ``set`` patches
of the two path shapes the worker writes, with ``ifRevisionID``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

from cms_sync import groq
from cms_sync.mapping import MediaMapping, default_mapping

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def load_fixture(relative: str) -> Any:
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


def load_dataset() -> list[dict[str, Any]]:
    text = (FIXTURES / "sanity" / "dataset.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeContentLake:
    """A Content Lake holding one dataset, published perspective only."""

    documents: dict[str, dict[str, Any]]
    token: str = "sk-test-token"
    dataset: str = "production"
    mapping: MediaMapping = field(default_factory=default_mapping)
    queries: list[httpx.Request] = field(default_factory=list)
    #: Every mutate request, applied or not.
    mutations: list[list[dict[str, Any]]] = field(default_factory=list)
    #: The mutations that were applied (a 409 is not a commit).
    commits: list[list[dict[str, Any]]] = field(default_factory=list)
    #: Responses served (once each, in order) before normal handling: inject failures.
    scripted: list[Handler] = field(default_factory=list)
    #: Called before each mutation is applied: simulate a concurrent editor.
    before_mutate: Callable[[FakeContentLake], None] | None = None
    #: Called with the ids a committed transaction changed (as Sanity would fire webhooks).
    on_commit: Callable[[list[dict[str, Any]]], None] | None = None
    _revs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_fixtures(cls, **kwargs: Any) -> FakeContentLake:
        return cls(documents={d["_id"]: d for d in load_dataset()}, **kwargs)

    # -- HTTP -------------------------------------------------------------------------
    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)(request)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return _json(
                    401,
                    {"statusCode": 401, "error": "Unauthorized", "message": "Session not found"},
                )
            path = request.url.path
            if re.fullmatch(rf"/v[^/]+/data/query/{self.dataset}", path):
                return self._query(request)
            if re.fullmatch(rf"/v[^/]+/data/mutate/{self.dataset}", path):
                return self._mutate(request)
            return _json(404, {"statusCode": 404, "error": "Not Found", "message": path})

    def _query(self, request: httpx.Request) -> httpx.Response:
        self.queries.append(request)
        if request.method == "GET":
            args = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
            query = args.pop("query", "")
            params = {k[1:]: json.loads(v) for k, v in args.items() if k.startswith("$")}
            perspective = args.get("perspective")
        else:
            body = json.loads(request.content)
            query, params = body["query"], body.get("params", {})
            perspective = request.url.params.get("perspective")
        if perspective != "published":
            return _json(
                400, {"error": {"type": "queryParseError", "description": "fake: published only"}}
            )
        try:
            result = self.query(query, params)
        except groq.GroqSyntaxError as exc:
            error = {"type": "queryParseError", "description": exc.message, "query": query}
            error |= {"start": exc.position, "end": exc.position + 1}
            return _json(400, {"error": error})
        return _json(200, {"ms": 1, "query": query, "result": result})

    def _mutate(self, request: httpx.Request) -> httpx.Response:
        mutations = json.loads(request.content)["mutations"]
        self.mutations.append(mutations)
        if self.before_mutate is not None:
            self.before_mutate(self)
        staged = copy.deepcopy(self.documents)
        results = []
        for index, mutation in enumerate(mutations):
            patch = mutation["patch"]
            doc = staged.get(patch["id"])
            if doc is None:
                return _json(
                    404,
                    {
                        "error": {
                            "type": "mutationError",
                            "description": "not found",
                            "items": [{"index": index, "error": {"type": "documentNotFoundError"}}],
                        }
                    },
                )
            if "ifRevisionID" in patch and patch["ifRevisionID"] != doc["_rev"]:
                body = load_fixture("sanity/errors/revision-mismatch.json")
                item = body["error"]["items"][0]["error"]
                item["currentRevisionID"], item["expectedRevisionID"] = (
                    doc["_rev"],
                    patch["ifRevisionID"],
                )
                return _json(409, body)
            for path, value in patch.get("set", {}).items():
                set_path(doc, path, value)
            self.touch(doc)
            results.append({"id": doc["_id"], "operation": "update"})
        self.documents = staged
        self.commits.append(mutations)
        if self.on_commit is not None:
            self.on_commit([copy.deepcopy(staged[r["id"]]) for r in results])
        return _json(200, {"transactionId": f"tx{len(self.mutations)}", "results": results})

    # -- state ------------------------------------------------------------------------
    def edit(self, doc_id: str, change: Callable[[dict[str, Any]], None]) -> None:
        """An editor's publish: one atomic change with a new revision, as Sanity makes it."""
        with self._lock:
            doc = copy.deepcopy(self.documents[doc_id])
            change(doc)
            self.touch(doc)
            self.documents = {**self.documents, doc_id: doc}

    def add(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self.documents = {**self.documents, doc["_id"]: doc}

    def touch(self, doc: dict[str, Any]) -> None:
        doc["_rev"] = f"rev{next(self._revs):06d}"
        doc["_updatedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def published(self, doc_id: str) -> dict[str, Any] | None:
        if doc_id.startswith(("drafts.", "versions.")):
            return None
        return self.documents.get(doc_id)

    def query(self, text: str, params: dict[str, Any]) -> Any:
        """A query over the published perspective, evaluated by cms_sync.groq."""
        published = [
            doc
            for doc in self.documents.values()
            if not doc["_id"].startswith(("drafts.", "versions."))
        ]
        return groq.evaluate(text, published, params)

    def slot_value(self, doc_id: str, path: str) -> dict[str, Any]:
        """The media object at ``mainImage`` or ``gallery[_key=="k"]``."""
        return resolve(self.documents[doc_id], path)


_KEYED = re.compile(r'^(?P<field>[A-Za-z_][A-Za-z0-9_]*)\[_key==(?P<key>"(?:[^"\\]|\\.)*")\]$')


def resolve(doc: dict[str, Any], path: str) -> dict[str, Any]:
    match = _KEYED.match(path)
    if match is None:
        return doc[path]  # type: ignore[no-any-return]
    key = json.loads(match["key"])
    return next(item for item in doc[match["field"]] if item.get("_key") == key)


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Apply ``set`` for ``field.attr`` or ``field[_key=="k"].attr`` (what the worker sends)."""
    container_path, _, attr = path.rpartition(".")
    resolve(doc, container_path)[attr] = value


@dataclass
class FakeFilestack:
    """Filestack's ``/process`` store-from-URL, with policy verification."""

    api_key: str = "fs-test-key"
    app_secret: str | None = None
    cdn: str = "https://cdn.filestackcontent.com"
    stores: list[dict[str, Any]] = field(default_factory=list)
    #: Sources Filestack refuses (400), as if it could not fetch them.
    refuse: set[str] = field(default_factory=set)
    scripted: list[Handler] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    #: Storage key -> handle of the object there: a store to an existing key overwrites it.
    objects: dict[str, str] = field(default_factory=dict)
    #: When it returns a response (or raises, e.g. ``httpx.ReadTimeout``), the store is done
    #: but its answer is replaced: an answer lost after the file was stored.
    lose_answer: Callable[[httpx.Response], httpx.Response] | None = None
    #: When set, every store waits here until the event is set (sources listed in ``held``).
    gate: threading.Event | None = None
    held: list[str] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.gate is not None and not self.gate.is_set():
            with self._lock:
                self.held.append(json.loads(request.content)["sources"][0])
                self.arrived.set()
            self.gate.wait(timeout=60)
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)(request)
            if request.method != "POST" or not request.url.path.endswith("/process"):
                return httpx.Response(404, text="Not Found")
            body = json.loads(request.content)
            if body.get("apikey") != self.api_key:
                return httpx.Response(
                    403, text="storage provider error: Invalid Application (idx 0)"
                )
            problem = self._security_problem(body)
            if problem:
                return _json(403, {"error": problem})
            (source,) = body["sources"]
            if source in self.refuse:
                return httpx.Response(400, text=f"Invalid URL: could not fetch {source}")
            store = next(t["params"] for t in body["tasks"] if t["name"] == "store")
            self.stores.append(body)
            handle = hashlib.sha1(f"{len(self.stores)}:{source}".encode()).hexdigest()[:20]
            filename = store.get("filename") or source.rsplit("/", 1)[-1]
            path = store.get("path", "")
            # A path ending in "/" is a folder (a random prefix is added); else the exact key.
            key = path if path and not path.endswith("/") else f"{path}{handle[:4]}_{filename}"
            self.objects[key] = handle
            answer = _json(
                200,
                {
                    "container": "fs-test-bucket",
                    "filename": filename,
                    "handle": handle,
                    "key": key,
                    "size": 1000 + len(self.stores),
                    "type": _mime(filename),
                    "url": f"{self.cdn}/{handle}",
                },
            )
            return answer if self.lose_answer is None else self.lose_answer(answer)

    def _security_problem(self, body: dict[str, Any]) -> str | None:
        security = next((t["params"] for t in body["tasks"] if t["name"] == "security"), None)
        if self.app_secret is None:
            return None
        if security is None:
            return "Invalid App policy: missing"
        expected = hmac.new(
            self.app_secret.encode(), security["policy"].encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, security["signature"]):
            return "Invalid App policy: signature"
        policy = json.loads(base64.urlsafe_b64decode(security["policy"]))
        if policy["expiry"] < self.clock() or "store" not in policy.get("call", []):
            return "Invalid App policy: expired or not for store"
        return None


def _mime(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower()
    return {
        "jpg": "image/jpeg",
        "png": "image/png",
        "webp": "image/webp",
        "pdf": "application/pdf",
    }.get(ext, "application/octet-stream")
