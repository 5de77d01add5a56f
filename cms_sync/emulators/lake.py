"""A Content Lake emulator: Sanity's query, mutate and doc APIs, asset bytes and webhooks.

It holds one dataset in memory and speaks the wire formats of WIRE.md:

- ``GET|POST /v{version}/data/query/{dataset}``: GROQ evaluated by :mod:`cms_sync.groq`,
  with ``$name`` JSON parameters and the ``published`` and ``raw`` perspectives (the
  default is ``published`` from API version 2025-02-19, ``raw`` before, as at Sanity).
- ``POST /v{version}/data/mutate/{dataset}``: create, createOrReplace, createIfNotExists,
  delete and patch (by id or by query), patches over JSONMatch paths, ``ifRevisionID``
  with Sanity's 409 body, all-or-nothing transactions, ``returnIds``/``returnDocuments``.
- ``GET /v{version}/data/doc/{dataset}/{id}[,{id}...]``.
- ``POST /v{version}/assets/{images|files}/{dataset}?filename=NAME``: the raw bytes as the
  body, as an editor's upload from Studio; answers ``{"document": <asset document>}``. The
  same bytes twice are one asset (Sanity's id comes from their SHA-1).
- Asset bytes at ``/images/{project}/{dataset}/...`` and ``/files/...``, so asset URLs
  resolve: give ``asset_base`` and the asset documents' CDN URLs are rewritten to it.
- GROQ-powered webhooks on every committed change (:mod:`.webhooks`).

Every data call needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import string
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from cms_sync import groq
from cms_sync.emulators.faults import Faults
from cms_sync.emulators.http import Handler, json_response, mime_for
from cms_sync.emulators.jsonmatch import PatchError, apply_patch
from cms_sync.emulators.webhooks import Dispatcher, Webhook, transaction_time

#: API versions from this date default to the published perspective.
PUBLISHED_BY_DEFAULT = "2025-02-19"
_DATA = re.compile(r"^/v(?P<version>[^/]+)/data/(?P<kind>query|mutate|doc)/(?P<rest>.+)$")
_UPLOAD = re.compile(r"^/v(?P<version>[^/]+)/assets/(?P<kind>images|files)/(?P<dataset>[^/]+)$")
#: The largest upload the emulator takes.
MAX_UPLOAD = 64 * 1024 * 1024
_ALPHABET = string.ascii_letters + string.digits


class _Failed(Exception):
    """A mutation that fails the whole transaction."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _mutation_error(index: int, status: int, item: dict[str, Any]) -> _Failed:
    description = f"The mutation(s) failed: {item['description']}"
    body = {"type": "mutationError", "description": description}
    return _Failed(status, {"error": {**body, "items": [{"index": index, "error": item}]}})


def _is_asset(request: httpx.Request) -> bool:
    return request.method in ("GET", "HEAD") and request.url.path.startswith(
        ("/images/", "/files/")
    )


Changes = dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]


@dataclass(frozen=True)
class _View:
    """A perspective's documents, and where each id is among them: kept until a
    document is added or removed (a patch keeps every position), so that a query does not
    rebuild the id index of the whole dataset."""

    ids: list[str]
    positions: list[int]  # of the perspective's documents in ``documents``
    index: dict[str, list[int]]  # id -> position among them

    @classmethod
    def of(cls, ids: list[str], *, published: bool) -> _View:
        hidden = ("drafts.", "versions.")
        positions = [n for n, i in enumerate(ids) if not (published and i.startswith(hidden))]
        return cls(ids, positions, {ids[p]: [n] for n, p in enumerate(positions)})

    def select(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(self.positions) == len(docs):
            return docs
        return [docs[p] for p in self.positions]


@dataclass(frozen=True)
class _Commit:
    """A committed transaction: the mutate response, each document's (before, after), and
    the transaction time its documents carry as ``_updatedAt``."""

    response: dict[str, Any]
    changes: Changes
    when: str


def _bad_request(description: str, kind: str = "invalidMutationError") -> _Failed:
    return _Failed(400, {"error": {"type": kind, "description": description}})


@dataclass
class ContentLake:
    """One dataset of a Sanity project, in memory."""

    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    project_id: str = "cmsdemo"
    dataset: str = "production"
    token: str = "emulator-token"  # noqa: S105 - the emulator's default, not a credential
    #: Where asset URLs point: ``http://127.0.0.1:PORT``. None keeps Sanity's CDN URLs.
    asset_base: str | None = None
    webhooks: list[Webhook] = field(default_factory=list)
    dispatcher: Dispatcher | None = None
    faults: Faults | None = None
    clock: Callable[[], float] = time.time
    #: Asset bytes by URL path (``/images/p/d/x.png``) with their content type.
    assets: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    # -- what happened, for tests and benchmarks ------------------------------------
    queries: list[httpx.Request] = field(default_factory=list)
    #: Every mutate request's mutations, applied or not.
    mutations: list[list[dict[str, Any]]] = field(default_factory=list)
    #: The mutations that were committed (a 409 is not a commit).
    commits: list[list[dict[str, Any]]] = field(default_factory=list)
    # -- hooks ----------------------------------------------------------------------
    #: Answers served (once each, in order) before normal handling.
    scripted: list[Handler] = field(default_factory=list)
    #: Called before each mutation is applied: a concurrent editor.
    before_mutate: Callable[[ContentLake], None] | None = None
    #: Called with the documents a committed transaction changed.
    on_commit: Callable[[list[dict[str, Any]]], None] | None = None
    _transactions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _handler: Handler | None = field(default=None, init=False)
    _views: dict[str, _View] = field(default_factory=dict, init=False, repr=False)
    _paths_of: tuple[list[str], dict[str, str]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for webhook in self.webhooks:
            self._check(webhook)
        if self.webhooks and self.dispatcher is None:
            self.dispatcher = Dispatcher(self.project_id, self.dataset)
        if self.asset_base is not None:
            self.documents = {i: self._local(d) for i, d in self.documents.items()}
        inner: Handler = self._serve
        if self.faults is None:
            self._handler = inner
            return
        faulty = self.faults.wrap(inner, is_mutation=lambda r: "/data/mutate/" in r.url.path)

        def handler(request: httpx.Request) -> httpx.Response:
            # Faults are the API's: asset bytes come from Sanity's CDN, another service
            # with limits of its own, so they are served as they are.
            return inner(request) if _is_asset(request) else faulty(request)

        self._handler = handler

    def _check(self, webhook: Webhook) -> None:
        if not webhook.url:
            raise ValueError("a webhook needs a URL")

    def add_webhook(self, webhook: Webhook) -> None:
        self._check(webhook)
        with self._lock:
            self.webhooks.append(webhook)
            if self.dispatcher is None:
                self.dispatcher = Dispatcher(self.project_id, self.dataset)

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.faults is not None:
            self.faults.close()

    # -- HTTP -------------------------------------------------------------------------
    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert self._handler is not None
        return self._handler(request)

    def _serve(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)(request)
        path = request.url.path
        if _is_asset(request):
            return self._asset(path)
        match = _DATA.match(path)
        upload = _UPLOAD.match(path) if request.method == "POST" else None
        if match is None and upload is None:
            return json_response(404, {"statusCode": 404, "error": "Not Found", "message": path})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return json_response(
                401, {"statusCode": 401, "error": "Unauthorized", "message": "Session not found"}
            )
        if upload is not None:
            return self._upload(request, upload["kind"], unquote(upload["dataset"]))
        assert match is not None
        kind, rest = match["kind"], unquote(match["rest"])
        dataset, _, ids = rest.partition("/")
        if dataset != self.dataset:
            return json_response(
                404,
                {"error": {"type": "notFoundError", "description": "Dataset not found"}},
            )
        if kind == "query" and not ids:
            return self._query(request, match["version"])
        if kind == "mutate" and not ids and request.method == "POST":
            return self._mutate(request)
        if kind == "doc" and ids and request.method == "GET":
            return self._doc(ids.split(","))
        return json_response(405, {"statusCode": 405, "error": "Method Not Allowed"})

    def _upload(self, request: httpx.Request, kind: str, dataset: str) -> httpx.Response:
        if dataset != self.dataset:
            return json_response(
                404, {"error": {"type": "notFoundError", "description": "Dataset not found"}}
            )
        data = request.read()
        if not data or len(data) > MAX_UPLOAD:
            return json_response(
                400, {"statusCode": 400, "error": "Bad Request", "message": "Empty or too large"}
            )
        mime = request.headers.get("content-type", "").split(";")[0].strip() or None
        filename = request.url.params.get("filename") or (
            "upload.png" if kind == "images" else "upload.bin"
        )
        if kind == "images" and not (mime or mime_for(filename)).startswith("image/"):
            return json_response(
                400,
                {
                    "statusCode": 400,
                    "error": "Bad Request",
                    "message": "Invalid image, not an image",
                },
            )
        return json_response(200, {"document": self.add_asset(data, filename, mime=mime)})

    def _query(self, request: httpx.Request, version: str) -> httpx.Response:
        self.queries.append(request)
        if request.method == "GET":
            args = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
            query = args.get("query", "")
            raw_params = {k[1:]: v for k, v in args.items() if k.startswith("$")}
            try:
                params = {k: json.loads(v) for k, v in raw_params.items()}
            except json.JSONDecodeError as exc:
                return _query_error(f"param is not JSON: {exc}", query)
        elif request.method == "POST":
            try:
                body = json.loads(request.content)
                query, params = body["query"], body.get("params") or {}
            except (json.JSONDecodeError, KeyError, TypeError):
                return _query_error("the body must be {query, params}", "")
            args = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        else:
            return json_response(405, {"statusCode": 405, "error": "Method Not Allowed"})
        perspective = args.get("perspective") or _default_perspective(version)
        if perspective not in ("published", "raw"):
            return _query_error(f"perspective {perspective!r} is not emulated", query)
        started = time.perf_counter()
        try:
            result = self.query(query, params, perspective=perspective)
        except groq.GroqSyntaxError as exc:
            error: dict[str, Any] = {"type": "queryParseError", "description": exc.message}
            error |= {"query": query, "start": exc.position, "end": exc.position + 1}
            return json_response(400, {"error": error})
        except groq.GroqError as exc:
            return _query_error(str(exc), query, kind="queryExecutionError")
        ms = max(1, round((time.perf_counter() - started) * 1000))
        return json_response(200, {"ms": ms, "query": query, "result": result})

    def _doc(self, ids: list[str]) -> httpx.Response:
        with self._lock:
            found = [copy.deepcopy(self.documents[i]) for i in ids if i in self.documents]
            omitted = [{"id": i, "reason": "existence"} for i in ids if i not in self.documents]
        return json_response(200, {"documents": found, "omitted": omitted})

    def _asset(self, path: str) -> httpx.Response:
        found = self.asset_bytes(path)
        if found is None:
            return json_response(404, {"statusCode": 404, "error": "Not Found", "message": path})
        data, mime = found
        return httpx.Response(200, content=data, headers={"content-type": mime})

    # -- mutations --------------------------------------------------------------------
    def _mutate(self, request: httpx.Request) -> httpx.Response:
        try:
            mutations = json.loads(request.content)["mutations"]
            if not isinstance(mutations, list) or not all(isinstance(m, dict) for m in mutations):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            return json_response(400, _bad_request("the body must be {mutations: [...]}").body)
        flags = request.url.params
        with self._lock:
            self.mutations.append(mutations)
            if self.before_mutate is not None:
                self.before_mutate(self)
            try:
                commit = self._transaction(
                    mutations,
                    return_documents=flags.get("returnDocuments") == "true",
                )
            except _Failed as failed:
                return json_response(failed.status, failed.body)
            self.commits.append(mutations)
            if self.on_commit is not None and commit.changes:
                changed = commit.changes.values()
                self.on_commit([copy.deepcopy(a) for _, a in changed if a is not None])
            self._fire(commit)
        return json_response(200, commit.response)

    def _transaction(self, mutations: list[dict[str, Any]], *, return_documents: bool) -> _Commit:
        staged = dict(self.documents)  # copy-on-write: documents are copied when changed
        original: dict[str, dict[str, Any] | None] = {}
        results: list[dict[str, Any]] = []

        def write(doc_id: str, doc: dict[str, Any] | None) -> None:
            original.setdefault(doc_id, self.documents.get(doc_id))
            if doc is None:
                staged.pop(doc_id, None)
            else:
                staged[doc_id] = doc

        for index, mutation in enumerate(mutations):
            if len(mutation) != 1:
                raise _bad_request(f"mutation {index} must have exactly one operation")
            ((kind, arg),) = mutation.items()
            if not isinstance(arg, dict):
                raise _bad_request(f"mutation {index}: {kind} takes an object")
            for doc_id, operation in self._apply(index, kind, arg, staged, write):
                results.append({"id": doc_id, "operation": operation})

        tx = self._new_revision()
        when = transaction_time(self.clock())
        response: dict[str, Any] = {"transactionId": tx, "results": results}
        changes: Changes = {}
        for doc_id, before in original.items():
            after = staged.get(doc_id)
            if after is not None:
                after["_rev"] = tx
                after["_updatedAt"] = when
                after.setdefault("_createdAt", after["_updatedAt"])
            if before is not None or after is not None:
                changes[doc_id] = (before, after)
        self.documents = staged
        if return_documents:
            docs = [copy.deepcopy(staged[r["id"]]) for r in results if r["id"] in staged]
            response["documents"] = docs
            for result in results:
                if result["id"] in staged:
                    result["document"] = copy.deepcopy(staged[result["id"]])
        return _Commit(response, changes, when)

    def _apply(
        self,
        index: int,
        kind: str,
        arg: dict[str, Any],
        staged: dict[str, dict[str, Any]],
        write: Callable[[str, dict[str, Any] | None], None],
    ) -> Iterable[tuple[str, str]]:
        if kind in ("create", "createOrReplace", "createIfNotExists"):
            doc = copy.deepcopy(arg)
            if kind != "create" and not isinstance(doc.get("_id"), str):
                raise _bad_request(f"mutation {index}: {kind} needs an _id")
            if not isinstance(doc.get("_type"), str) or not doc["_type"]:
                raise _bad_request(f"mutation {index}: the document needs a _type")
            doc_id = doc.setdefault("_id", self._new_revision())
            if doc_id.endswith("."):
                doc_id = doc["_id"] = doc_id + self._new_revision()
            existing = staged.get(doc_id)
            if existing is not None and kind == "create":
                description = f'Document by ID "{doc_id}" already exists'
                item = {"type": "documentAlreadyExistsError", "id": doc_id}
                raise _mutation_error(index, 409, {**item, "description": description})
            if existing is not None and kind == "createIfNotExists":
                return [(doc_id, "none")]
            if existing is not None:
                doc.setdefault("_createdAt", existing.get("_createdAt"))
            write(doc_id, doc)
            return [(doc_id, "update" if existing is not None else "create")]
        if kind == "delete":
            ids = self._selection(index, arg, staged)
            for doc_id in ids:
                write(doc_id, None)
            return [(doc_id, "delete") for doc_id in ids]
        if kind == "patch":
            return self._patch(index, arg, staged, write)
        raise _bad_request(f"mutation {index}: unknown operation {kind!r}")

    def _selection(self, index: int, arg: dict[str, Any], staged: dict[str, Any]) -> list[str]:
        """The ids a delete or patch addresses: ``id`` (existing only) or ``query``."""
        if isinstance(arg.get("id"), str):
            return [arg["id"]] if arg["id"] in staged else []
        if isinstance(arg.get("query"), str):
            try:
                found = groq.evaluate(arg["query"], list(staged.values()), arg.get("params"))
            except groq.GroqError as exc:
                raise _bad_request(f"mutation {index}: {exc}", "queryParseError") from exc
            found = found if isinstance(found, list) else [found]
            return [d["_id"] for d in found if isinstance(d, dict) and "_id" in d]
        raise _bad_request(f"mutation {index}: needs an id or a query")

    def _patch(
        self,
        index: int,
        patch: dict[str, Any],
        staged: dict[str, dict[str, Any]],
        write: Callable[[str, dict[str, Any] | None], None],
    ) -> list[tuple[str, str]]:
        ids = self._selection(index, patch, staged)
        if not ids and "id" in patch:
            doc_id = patch["id"]
            description = f'Cannot modify document "{doc_id}" because it does not exist'
            item = {"type": "documentNotFoundError", "id": doc_id, "description": description}
            raise _mutation_error(index, 404, item)
        done = []
        for doc_id in ids:
            current = staged[doc_id]
            expected = patch.get("ifRevisionID")
            if expected is not None and expected != current.get("_rev"):
                description = (
                    f'Document "{doc_id}" has unexpected revision ID '
                    f'("{current.get("_rev")}"), expected "{expected}"'
                )
                item = {
                    "type": "documentRevisionIDDoesNotMatchError",
                    "currentRevisionID": current.get("_rev"),
                    "expectedRevisionID": expected,
                    "description": description,
                }
                raise _mutation_error(index, 409, item)
            doc = copy.deepcopy(current)
            try:
                apply_patch(doc, patch)
            except PatchError as exc:
                raise _bad_request(f"mutation {index}: {exc}") from exc
            if doc["_id"] != doc_id or doc["_type"] != current["_type"]:
                item = {"type": "cannotModifyImmutableAttributeError", "id": doc_id}
                item["description"] = "Cannot modify immutable attribute _id or _type"
                raise _mutation_error(index, 409, item)
            write(doc_id, doc)
            done.append((doc_id, "update"))
        return done

    def _fire(self, commit: _Commit) -> None:
        """Webhooks for a commit; the transaction time is the one its documents carry."""
        if self.dispatcher is None or not self.webhooks:
            return
        tx, when = commit.response["transactionId"], commit.when
        for doc_id, (before, after) in commit.changes.items():
            for webhook in self.webhooks:
                message = webhook.message(before, after)
                if message is not None:
                    operation, body = message
                    self.dispatcher.enqueue(webhook, operation, doc_id, body, tx, when)

    # -- state, for emulator users ------------------------------------------------
    def _new_revision(self) -> str:
        """A 22-character id like Sanity's, deterministic per emulator run."""
        n = next(self._transactions)
        digest = int.from_bytes(hashlib.sha256(f"{self.dataset}:{n}".encode()).digest())
        chars = []
        for _ in range(22):
            digest, r = divmod(digest, len(_ALPHABET))
            chars.append(_ALPHABET[r])
        return "".join(chars)

    def publish(self, mutations: list[dict[str, Any]]) -> dict[str, Any]:
        """Commit mutations as an editor would (webhooks fire; not counted in ``commits``,
        which holds what came over HTTP)."""
        with self._lock:
            try:
                commit = self._transaction(mutations, return_documents=False)
            except _Failed as failed:
                raise ValueError(json.dumps(failed.body)) from None
            self._fire(commit)
        return commit.response

    def edit(self, doc_id: str, change: Callable[[dict[str, Any]], None]) -> None:
        """An editor's publish: one atomic change with a new revision (webhooks fire)."""
        with self._lock:
            doc = copy.deepcopy(self.documents[doc_id])
            change(doc)
            self.publish([{"createOrReplace": doc}])

    def add(self, doc: dict[str, Any]) -> None:
        """Put a document in place as an import would: no revision change, no webhook."""
        with self._lock:
            self.documents = {**self.documents, doc["_id"]: self._local(doc)}

    def touch(self, doc: dict[str, Any]) -> None:
        """Give ``doc`` (in place) a new revision, as a write that changed nothing visible."""
        doc["_rev"] = self._new_revision()
        doc["_updatedAt"] = transaction_time(self.clock())

    def add_asset(self, data: bytes, filename: str, *, mime: str | None = None) -> dict[str, Any]:
        """Store bytes as an image or file asset; returns the asset document."""
        mime = mime or mime_for(filename)
        digest = hashlib.sha1(data).hexdigest()  # noqa: S324 - Sanity's own asset hash
        ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
        if mime.startswith("image/"):
            width, height = _dimensions(data)
            kind, asset_id = "images", f"image-{digest}-{width}x{height}-{ext}"
            name, doc_type = f"{digest}-{width}x{height}.{ext}", "sanity.imageAsset"
            extra: dict[str, Any] = {"metadata": {"dimensions": {"width": width, "height": height}}}
        else:
            kind, asset_id = "files", f"file-{digest}-{ext}"
            name, doc_type, extra = f"{digest}.{ext}", "sanity.fileAsset", {}
        path = f"/{kind}/{self.project_id}/{self.dataset}/{name}"
        base = self.asset_base or "https://cdn.sanity.io"
        doc = {
            "_id": asset_id,
            "_type": doc_type,
            "assetId": digest,
            "extension": ext,
            "mimeType": mime,
            "originalFilename": filename,
            "path": path.lstrip("/"),
            "sha1hash": digest,
            "size": len(data),
            "url": f"{base}{path}",
            **extra,
        }
        with self._lock:
            self.assets[path] = (data, mime)
            if asset_id not in self.documents:
                self.publish([{"createIfNotExists": doc}])
        return copy.deepcopy(self.documents[asset_id])

    def asset_bytes(self, path: str) -> tuple[bytes, str] | None:
        """The bytes at an asset path; an asset document without bytes gets placeholder bytes
        of its recorded size (capped), so datasets exported without files still resolve."""
        with self._lock:
            if path in self.assets:
                return self.assets[path]
            doc = self.documents.get(self._asset_paths().get(path, ""))
            if doc is None:
                return None
            size = min(int(doc.get("size") or 1024), 256 * 1024)
            seed = hashlib.sha256(doc["_id"].encode()).digest()
            data = (seed * (size // len(seed) + 1))[:size]
            found = (data, doc.get("mimeType") or mime_for(path))
            self.assets[path] = found
            return found

    def _asset_paths(self) -> dict[str, str]:
        """URL path -> asset document id, kept until a document is added or removed."""
        ids = list(self.documents)
        if self._paths_of is not None and self._paths_of[0] == ids:
            return self._paths_of[1]
        paths: dict[str, str] = {}
        for doc_id, doc in self.documents.items():
            url = doc.get("url")
            if doc.get("_type") in ("sanity.imageAsset", "sanity.fileAsset") and isinstance(
                url, str
            ):
                paths.setdefault(urlsplit(url).path, doc_id)
        self._paths_of = (ids, paths)
        return paths

    def published(self, doc_id: str) -> dict[str, Any] | None:
        if doc_id.startswith(("drafts.", "versions.")):
            return None
        return self.documents.get(doc_id)

    def query(
        self, text: str, params: dict[str, Any] | None = None, *, perspective: str = "published"
    ) -> Any:
        """A query over the ``published`` (or ``raw``) perspective."""
        with self._lock:
            ids, docs = list(self.documents), list(self.documents.values())
        view = self._views.get(perspective)
        if view is None or view.ids != ids:  # a document was added or removed
            view = _View.of(ids, published=perspective == "published")
            self._views[perspective] = view
        return groq.evaluate(text, view.select(docs), params, id_index=view.index)

    def _local(self, doc: dict[str, Any]) -> dict[str, Any]:
        """An asset document's CDN URL pointed at ``asset_base``."""
        url = doc.get("url")
        if (
            self.asset_base is None
            or doc.get("_type") not in ("sanity.imageAsset", "sanity.fileAsset")
            or not isinstance(url, str)
        ):
            return doc
        parts = urlsplit(url)
        if parts.hostname != "cdn.sanity.io":
            return doc
        return {**doc, "url": f"{self.asset_base}{parts.path}"}


def _default_perspective(version: str) -> str:
    return "published" if version >= PUBLISHED_BY_DEFAULT and version[0].isdigit() else "raw"


def _query_error(description: str, query: str, kind: str = "queryParseError") -> httpx.Response:
    return json_response(400, {"error": {"type": kind, "description": description, "query": query}})


def _dimensions(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, GIF or JPEG; (0, 0) when unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20]), int.from_bytes(data[20:24])
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                break
            marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4])
            if marker in (0xC0, 0xC1, 0xC2):
                return int.from_bytes(data[i + 7 : i + 9]), int.from_bytes(data[i + 5 : i + 7])
            i += 2 + length
    return 0, 0
