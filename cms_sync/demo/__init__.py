"""``cms-sync demo``: the whole loop on one machine, with no credentials and no network.

It starts the Content Lake and Filestack emulators and the webhook service on free ports
of 127.0.0.1, with a signed GROQ-powered webhook from the Content Lake to the service and
Filestack's signed store notifications from the Filestack emulator to the service. It loads a
small catalogue (``data/catalogue.json``: products with galleries and a PDF spec sheet,
and posts, over real image and PDF files), publishes it, and waits until every document
carries its Filestack fields. Then it replaces one product's image and waits for the new
handle. The service is the same one ``cms-sync serve`` runs; only its Sanity host, its
Filestack URL and its asset allow-list point at the emulators.

With ``--keep-running`` everything stays up afterwards, with the operator page on (a
made-up token, printed; the cookie not Secure, as the page is plain HTTP on 127.0.0.1),
and the demo prints how to make an editor's change and inject a Filestack failure over
the emulators' HTTP APIs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import uvicorn

from cms_sync.app import create_app
from cms_sync.emulators import ContentLake, Webhook, bind
from cms_sync.emulators.filestack import REFUSE_PATH, Notifier
from cms_sync.emulators.running import Emulators, running
from cms_sync.mapping import MediaMapping, default_mapping
from cms_sync.media import HANDLE, MIME_TYPE, SIZE, SOURCE_ASSET, URL
from cms_sync.sanity_kit import PROJECTION, webhook_filter
from cms_sync.settings import Settings, load_settings
from cms_sync.storage import open_storage

FIELDS = (HANDLE, URL, SIZE, MIME_TYPE)


@dataclass(frozen=True)
class Slot:
    document_id: str
    path: str
    value: dict[str, Any]

    @property
    def done(self) -> bool:
        """Every Filestack field is there, written for the asset the slot now holds."""
        asset = self.value.get("asset") or {}
        written = all(self.value.get(name) not in (None, "") for name in FIELDS)
        return written and self.value.get(SOURCE_ASSET) == asset.get("_ref")


def slots(doc: dict[str, Any], mapping: MediaMapping) -> Iterator[Slot]:
    for media in mapping.types.get(doc.get("_type", ""), ()):
        value = doc.get(media.name)
        if media.is_array and isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and isinstance(item.get("asset"), dict):
                    yield Slot(doc["_id"], f'{media.name}[_key=="{item["_key"]}"]', item)
        elif isinstance(value, dict) and isinstance(value.get("asset"), dict):
            yield Slot(doc["_id"], media.name, value)


def catalogue() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("data", "catalogue.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def data_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("data", name).read_bytes()


def resolve_media(value: Any, lake: ContentLake) -> Any:
    """``{"file": NAME}`` anywhere in a catalogue document -> an image or file object."""
    if isinstance(value, list):
        return [resolve_media(v, lake) for v in value]
    if not isinstance(value, dict):
        return value
    if "file" in value:
        asset = lake.add_asset(data_file(value["file"]), value["file"])
        kind = "image" if asset["_type"] == "sanity.imageAsset" else "file"
        rest = {k: v for k, v in value.items() if k != "file"}
        return {"_type": kind, **rest, "asset": {"_type": "reference", "_ref": asset["_id"]}}
    return {k: resolve_media(v, lake) for k, v in value.items()}


class Progress:
    """Prints what changed since the last look, one line at a time."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.clock, self.started = out, clock, clock()
        self.last: tuple[int, int] | None = None

    def show(self, done: int, total: int, stores: int) -> None:
        if (done, stores) != self.last:
            self.last = (done, stores)
            elapsed = self.clock() - self.started
            print(
                f"  {elapsed:5.1f}s  {done}/{total} media slots synced, {stores} stores",
                file=self.out,
            )


async def wait_until(check: Callable[[], bool], *, within: float, tick: Callable[[], None]) -> bool:
    deadline = time.monotonic() + within
    while not check():
        tick()
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    tick()
    return True


async def run_demo(
    out: TextIO,
    *,
    within: float = 60.0,
    keep_running: bool = False,
    database: str | Path | None = None,
    inspect: Callable[[Emulators], None] | None = None,
) -> int:
    """Run the demo; ``inspect`` sees the emulators once it has converged (for tests)."""
    mapping = default_mapping()
    secret = secrets.token_urlsafe(24)
    notices_secret = secrets.token_urlsafe(24)
    # The page only when the demo stays up to be looked at; its token is made up here.
    operator: dict[str, Any] = {}
    if keep_running:
        operator = {
            "cms_sync_operator_token": secrets.token_urlsafe(24),
            "cms_sync_operator_secure_cookie": False,  # plain HTTP on 127.0.0.1
        }
    with (
        tempfile.TemporaryDirectory(prefix="cms-sync-demo-") as scratch,
        running(token=secrets.token_urlsafe(18), api_key="demo-" + secrets.token_hex(6)) as emu,
    ):
        service_sock = bind()
        service_url = f"http://127.0.0.1:{service_sock.getsockname()[1]}"
        # the webhook deploy/filestack/webhook.md registers
        emu.filestack.notifier = Notifier(f"{service_url}/webhooks/filestack", notices_secret)
        settings = load_settings(
            Settings,
            **{k.lower(): v for k, v in emu.worker_env().items()},  # with the notifier's secret
            sanity_webhook_secret=secret,
            cms_sync_database=str(database or Path(scratch) / "cms-sync.db"),
            cms_sync_log_level="warning",
            **operator,
        )
        print("cms-sync demo: everything runs on this machine, nothing leaves it", file=out)
        print(f"  Content Lake emulator  {emu.sanity_url}", file=out)
        print(f"  Filestack emulator     {emu.filestack_url}", file=out)
        print(f"  cms-sync serve         {service_url}", file=out)
        async with AsyncExitStack() as stack:
            storage = await stack.enter_async_context(open_storage(settings.cms_sync_database))
            app = create_app(settings, mapping=mapping, storage=storage)
            server = uvicorn.Server(
                uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
            )
            serving = asyncio.create_task(server.serve(sockets=[service_sock]))
            stack.callback(service_sock.close)
            try:
                while not server.started:
                    if serving.done():
                        print("cms-sync demo: the service did not start", file=out)
                        return 1
                    await asyncio.sleep(0.02)
                token = operator.get("cms_sync_operator_token")
                code = await _walk_through(
                    emu, mapping, secret, service_url, out, within, keep_running, token
                )
                if inspect is not None:
                    inspect(emu)
                return code
            finally:
                server.should_exit = True
                await serving


async def _walk_through(
    emu: Emulators,
    mapping: MediaMapping,
    secret: str,
    service_url: str,
    out: TextIO,
    within: float,
    keep_running: bool,
    token: str | None = None,
) -> int:
    lake = emu.lake
    lake.add_webhook(  # the webhook deploy/sanity/webhook.json defines
        Webhook(
            f"{service_url}/webhooks/sanity",
            secret=secret,
            filter=webhook_filter(mapping),
            projection=PROJECTION,
            on=("create", "update"),
            id="cms-sync-demo",
        )
    )
    data = catalogue()
    docs = [resolve_media(copy.deepcopy(d), lake) for d in data["documents"]]
    print(f"\nPublishing {len(docs)} documents ({_describe(docs)})", file=out)
    for doc in docs:
        lake.publish([{"createOrReplace": doc}])
    ids = [d["_id"] for d in docs]
    progress = Progress(out)

    def all_slots() -> list[Slot]:
        return [s for i in ids for s in slots(lake.documents[i], mapping)]

    def tick() -> None:
        current = all_slots()
        progress.show(sum(s.done for s in current), len(current), len(emu.filestack.stores))

    if not await wait_until(lambda: all(s.done for s in all_slots()), within=within, tick=tick):
        missing = [f"{s.document_id}.{s.path}" for s in all_slots() if not s.done]
        print(f"cms-sync demo: not converged after {within:.0f}s: {', '.join(missing)}", file=out)
        return 1
    print("\nThe Content Lake now holds these Filestack URLs:", file=out)
    for doc_id in ids:
        print(f"  {doc_id}", file=out)
        for s in slots(lake.documents[doc_id], mapping):
            print(
                f"    {s.path:<26} {s.value[URL]}  ({s.value[SIZE]} B, {s.value[MIME_TYPE]})",
                file=out,
            )
    slot_count = len(all_slots())
    distinct = len({s.value["asset"]["_ref"] for s in all_slots()})
    print(
        f"\n{len(ids)} documents, {slot_count} media slots, {distinct} distinct assets, "
        f"{len(emu.filestack.stores)} stores in Filestack",
        file=out,
    )
    notifier = emu.filestack.notifier
    if notifier is not None and await asyncio.to_thread(notifier.wait_idle, within):
        delivered = sum(n.outcome == "delivered" for n in notifier.sent)
        print(
            f"Filestack notified the service of {delivered} of {len(notifier.sent)} stores "
            "(POST /webhooks/filestack)",
            file=out,
        )

    edit = data["edit"]
    doc_id, field = edit["document"], edit["field"]
    before = lake.documents[doc_id][field]
    replacement = resolve_media({"file": edit["file"]}, lake)
    print(f"\nAn editor replaces {doc_id}.{field} with {edit['file']}", file=out)
    lake.edit(doc_id, lambda doc: doc[field].update(asset=replacement["asset"]))
    replaced = await wait_until(
        lambda: Slot(doc_id, field, lake.documents[doc_id][field]).done,
        within=within,
        tick=tick,
    )
    after = lake.documents[doc_id][field]
    if not replaced:
        print(f"cms-sync demo: {doc_id}.{field} did not get a new handle", file=out)
        return 1
    print(f"  handle {before[HANDLE]} -> {after[HANDLE]}", file=out)
    print(f"  {after[URL]}", file=out)
    print("\ncms-sync demo: converged", file=out)
    if keep_running:
        _still_running(emu, service_url, token, out)
        await asyncio.Event().wait()
    return 0


def _still_running(emu: Emulators, service_url: str, token: str | None, out: TextIO) -> None:
    lake = emu.lake
    auth = f"-H 'Authorization: Bearer {lake.token}'"
    lines = [
        "Still running (Ctrl-C to stop).",
        f"  Operator page   {service_url}/operator/   (token: {token})",
        "",
        "Change a document as an editor would (the service is told by the webhook):",
        f"  curl {auth} -H 'Content-Type: image/png' --data-binary @NEW.png \\",
        f"    '{emu.sanity_url}/v2021-06-07/assets/images/{lake.dataset}?filename=NEW.png'",
        f"  curl {auth} -H 'Content-Type: application/json' \\",
        f"    '{emu.sanity_url}/v2025-02-19/data/mutate/{lake.dataset}' -d '{{\"mutations\": "
        '[{"patch": {"id": "DOC", "set": {"mainImage.asset._ref": "ASSET ID"}}}]}\'',
        "Make Filestack refuse a source (a failure on the page; [] undoes it):",
        f"  curl -X PUT '{emu.filestack_url}{REFUSE_PATH}' -d '{{\"sources\": [\"ASSET URL\"]}}'",
        "",
        "Point another worker at the emulators with:",
        *(f"  {name}={value}" for name, value in emu.worker_env().items()),
    ]
    for line in lines:
        print(line, file=out)
    out.flush()


def _describe(docs: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for doc in docs:
        counts[doc["_type"]] = counts.get(doc["_type"], 0) + 1
    return ", ".join(f"{n} {t}{'s' if n > 1 else ''}" for t, n in counts.items())
