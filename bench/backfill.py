"""Backfill benchmark: ``cms-sync backfill --now`` at the limits, beside the seed guide's flow.

    python bench/backfill.py [--documents 10000] [--concurrency 16,32,64]
                             [--store-latency 0.25] [--sanity-latency 0.04]
                             [--baseline 40] [--memory 1000] [--service 480]

One run generates a dataset (``--documents``; two thirds products with a main image, a
two-image gallery and a PDF spec sheet, one third posts with a main image: three media
slots a document on average, a fifth of them on a pool of shared assets) and serves it
from the Content Lake and Filestack emulators in this process. Each Sanity call takes
``--sanity-latency`` seconds and the lake enforces Sanity's limits (25 mutate requests
and 500 calls a second, 429 above); each store takes ``--store-latency`` seconds. Then,
each against fresh emulators and a fresh SQLite database on the real disk:

- ``backfill``: ``cms-sync backfill --now`` in a child process, once per store
  concurrency. It reports wall time, documents/s, stores/s, duplicate stores, requests,
  429s, the child's peak RSS, the CPU the worker and the emulators used (in cores: CPU
  seconds over wall seconds; this machine has two), and the ratio to the theoretical
  bound, the larger of ``distinct assets x store latency / concurrency`` and
  ``documents / (20 mutate requests/s x 50 patches, a full batch)``.
- ``baseline``: the seed guide's flow (one document at a time: a GROQ fetch, the
  filestack-python SDK's ``upload_url`` in a thread for each slot, one patch), timed
  over ``--baseline`` documents spread over the dataset and extrapolated to all of it.
- ``memory``: the backfill's peak RSS at ``--memory`` documents, beside the first
  concurrency's run at ``--documents``.
- ``service``: ``--service`` documents published to the lake, delivered by signed
  webhooks to ``cms-sync serve`` (16 workers, 16 stores in flight), until every slot
  converged; its ratio to the store bound and its 429s.

It prints one table. A benchmark, not a test: the figures depend on the machine and
its load; the ratios are the figures to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cms_sync.emulators import Webhook
from cms_sync.emulators.faults import SANITY_LIMITS, Faults
from cms_sync.emulators.running import Emulators, running
from cms_sync.lake import MAX_BATCH
from cms_sync.mapping import default_mapping

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))
from scenarios import asset as image_asset  # noqa: E402 - the tests' generated image assets

CMS_SYNC = str(Path(sys.executable).with_name("cms-sync"))
SECRET = "whsec-bench"  # noqa: S105 - the benchmark's own throwaway secret
MUTATE_RATE = 20.0  # the client's default: CMS_SYNC_SANITY_MUTATE_RATE


# -- the dataset ----------------------------------------------------------------------
def _asset(seed: str, *, pdf: bool = False) -> dict[str, Any]:
    if not pdf:
        return image_asset(seed)
    digest = hashlib.sha1(seed.encode()).hexdigest()  # noqa: S324 - an id, not security
    return {
        "_id": f"file-{digest}-pdf",
        "_type": "sanity.fileAsset",
        "url": f"https://cdn.sanity.io/files/cmsdemo/production/{digest}.pdf",
        "originalFilename": f"{seed}.pdf",
        "mimeType": "application/pdf",
        "size": 2048,
        "extension": "pdf",
    }


def _media(asset: dict[str, Any], **extra: Any) -> dict[str, Any]:
    kind = "file" if asset["_type"] == "sanity.fileAsset" else "image"
    return {"_type": kind, **extra, "asset": {"_type": "reference", "_ref": asset["_id"]}}


@dataclass(frozen=True)
class Dataset:
    documents: list[dict[str, Any]]  # the products and posts
    assets: list[dict[str, Any]]

    @property
    def everything(self) -> list[dict[str, Any]]:
        return [*self.assets, *self.documents]

    @property
    def ids(self) -> list[str]:
        return [d["_id"] for d in self.documents]

    @property
    def slots(self) -> int:
        return sum(len(_slots(d)) for d in self.documents)

    @property
    def distinct_assets(self) -> int:
        return len({s["asset"]["_ref"] for d in self.documents for s in _slots(d)})


def generate(count: int, *, shared: float = 0.2, seed: int = 2026) -> Dataset:
    rng = random.Random(seed)  # noqa: S311 - a repeatable dataset, not a secret
    pool = [_asset(f"shared-{n}") for n in range(max(1, count // 10))]
    assets: dict[str, dict[str, Any]] = {a["_id"]: a for a in pool}

    def pick(name: str, *, pdf: bool = False) -> dict[str, Any]:
        if not pdf and rng.random() < shared:
            return pool[rng.randrange(len(pool))]
        made = _asset(name, pdf=pdf)
        assets[made["_id"]] = made
        return made

    documents = []
    for n in range(count):
        base = {"_rev": f"r{n}", "_updatedAt": "2026-11-20T10:00:00Z"}
        if n % 3 == 2:
            main = pick(f"post-{n}")
            documents.append(
                {"_id": f"post-{n:06d}", "_type": "post", **base, "mainImage": _media(main)}
            )
            continue
        document = {
            "_id": f"product-{n:06d}",
            "_type": "product",
            **base,
            "mainImage": _media(pick(f"product-{n}")),
            "gallery": [_media(pick(f"product-{n}-{k}"), _key=f"g{k}") for k in range(2)],
            "specSheet": _media(pick(f"product-{n}-spec", pdf=rng.random() >= shared), _key="s"),
        }
        documents.append(document)
    return Dataset(documents, list(assets.values()))


def _slots(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found = [doc.get("mainImage"), *doc.get("gallery", []), doc.get("specSheet")]
    return [s for s in found if isinstance(s, dict)]


def converged(emu: Emulators, ids: list[str]) -> bool:
    docs = emu.lake.documents
    return all(
        s.get("filestackSourceAsset") == s["asset"]["_ref"] and s.get("filestackHandle")
        for i in ids
        for s in _slots(docs[i])
    )


# -- the emulators ----------------------------------------------------------------------
@dataclass
class Pace:
    store: float
    sanity: float


@contextmanager
def emulators(data: Dataset, pace: Pace) -> Iterator[tuple[Emulators, Faults]]:
    lake_faults = Faults(latency=pace.sanity, latency_is_total=True, rate_limits=SANITY_LIMITS)
    with running(
        json.loads(json.dumps(data.everything)),  # a fresh copy: runs patch documents
        sanity_faults=lake_faults,
        filestack_faults=Faults(latency=pace.store, latency_is_total=True),
    ) as emu:
        yield emu, lake_faults


def worker_env(emu: Emulators, database: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMS_SYNC_", "SANITY_"))}
    return {
        **env,
        **emu.worker_env(),
        "SANITY_WEBHOOK_SECRET": SECRET,
        "CMS_SYNC_DATABASE": str(database),
        "CMS_SYNC_LOG_LEVEL": "warning",
        **extra,
    }


def run_child(args: list[str], env: dict[str, str], *, timeout: float) -> Child:
    """Run a child process to its end: its wall time, peak RSS, CPU time and exit status.

    The peak is the child's own ``VmHWM``, read as it runs. Not ``wait4``'s
    ``ru_maxrss``: the child is spawned with vfork, and Linux carries the parent's
    high-water mark into the child's at exec, so ``ru_maxrss`` reports this process
    (whose emulators hold the whole dataset) whenever it is the larger.
    """
    started = time.monotonic()
    ours = _cpu_seconds(resource.getrusage(resource.RUSAGE_SELF))
    child = subprocess.Popen(  # noqa: S603 - our own command
        args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    errors = threading.Thread(target=_drain, args=(child,), daemon=True)
    errors.start()
    deadline = started + timeout
    peak_kb = 0
    while True:
        peak_kb = max(peak_kb, _high_water_kb(child.pid))
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            child.kill()
            pid, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.02)
    child.returncode = os.waitstatus_to_exitcode(status)
    errors.join(1)
    return Child(
        seconds=time.monotonic() - started,
        rss_mb=peak_kb / 1024,
        status=child.returncode,
        cpu=_cpu_seconds(usage),
        emulators_cpu=_cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)) - ours,
    )


@dataclass
class Child:
    seconds: float
    rss_mb: float
    status: int
    cpu: float  # the child's CPU seconds, user and system
    emulators_cpu: float  # this process's meanwhile: the emulators'


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _high_water_kb(pid: int) -> int:
    """The process's peak resident set so far (0 once it has gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _drain(child: subprocess.Popen[bytes]) -> None:
    assert child.stderr is not None
    tail: list[bytes] = []
    for line in child.stderr:
        tail = [*tail[-20:], line]
    child.stderr_tail = b"".join(tail).decode(errors="replace")  # type: ignore[attr-defined]


# -- the measurements -----------------------------------------------------------------------
@dataclass
class Row:
    what: str
    documents: int
    concurrency: int | str
    seconds: float
    stores: int = 0
    distinct: int = 0
    mutate_requests: int = 0
    patches: int = 0
    queries: int = 0
    throttled: int = 0
    rss_mb: float | None = None
    #: CPU seconds of the worker and of the emulators (this process) during the run.
    cpu: tuple[float, float] | None = None
    bound: float | None = None
    converged: bool = True
    note: str = ""

    @property
    def per_request(self) -> float:
        return self.patches / self.mutate_requests if self.mutate_requests else 0.0


def lake_counts(emu: Emulators, lake_faults: Faults) -> dict[str, int]:
    commits = emu.lake.commits
    return {
        "mutate_requests": len(emu.lake.mutations),
        "patches": sum(len(c) for c in commits),
        "queries": len(emu.lake.queries),
        "throttled": lake_faults.injected.get("429", 0),
    }


def bound(distinct: int, documents: int, concurrency: int, pace: Pace) -> float:
    """The fastest the limits allow: every store slot always busy, and every mutate
    request as full as a batch may be (``MAX_BATCH`` patches)."""
    stores = distinct * pace.store / concurrency
    writes = documents / (MUTATE_RATE * MAX_BATCH)
    return max(stores, writes)


def bench_backfill(data: Dataset, pace: Pace, concurrency: int, scratch: Path) -> Row:
    with emulators(data, pace) as (emu, lake_faults):
        database = scratch / f"backfill-{len(data.documents)}-{concurrency}.db"
        env = worker_env(emu, database, CMS_SYNC_STORE_CONCURRENCY=str(concurrency))
        child = run_child([CMS_SYNC, "backfill", "--now"], env, timeout=3600)
        stores = emu.filestack.stores
        counts = lake_counts(emu, lake_faults)
        row = Row(
            "backfill",
            len(data.documents),
            concurrency,
            child.seconds,
            stores=len(stores),
            distinct=len({s["sources"][0] for s in stores}),
            rss_mb=child.rss_mb,
            cpu=(child.cpu, child.emulators_cpu),
            converged=child.status == 0 and converged(emu, data.ids),
            **counts,
        )
        row.bound = bound(data.distinct_assets, len(data.documents), concurrency, pace)
        return row


def bench_baseline(data: Dataset, pace: Pace, sample: int) -> Row:
    """The seed guide's flow, over ``sample`` documents spread over the dataset."""
    import filestack

    step = max(1, len(data.documents) // sample)
    chosen = data.ids[::step][:sample]
    with emulators(data, pace) as (emu, lake_faults):
        type(filestack.models.client.config).CDN_URL = emu.filestack_url
        sdk = filestack.Client(emu.filestack.api_key)
        started = time.monotonic()
        asyncio.run(_guide_flow(emu, sdk, chosen))
        seconds = time.monotonic() - started
        stores = emu.filestack.stores
        return Row(
            "baseline",
            len(chosen),
            1,
            seconds,
            stores=len(stores),
            distinct=len({s["sources"][0] for s in stores}),
            converged=converged(emu, chosen),
            **lake_counts(emu, lake_faults),
        )


GUIDE_QUERY = (
    "*[_id == $id][0]{_id, _rev, mainImage{asset->{url, originalFilename}}, "
    "gallery[]{_key, asset->{url, originalFilename}}, specSheet{asset->{url, originalFilename}}}"
)


async def _guide_flow(emu: Emulators, sdk: Any, ids: list[str]) -> None:
    """What the seed guide's handler does per document, in the FastAPI pattern's Python."""
    headers = {"Authorization": f"Bearer {emu.lake.token}"}
    base = f"{emu.sanity_url}/v2025-02-19/data"
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        for doc_id in ids:
            params = {"query": GUIDE_QUERY, "$id": json.dumps(doc_id)}
            doc = (await http.get(f"{base}/query/production", params=params)).json()["result"]
            sets: dict[str, Any] = {}
            paths = [("mainImage", doc.get("mainImage")), ("specSheet", doc.get("specSheet"))]
            paths += [(f'gallery[_key=="{g["_key"]}"]', g) for g in doc.get("gallery") or []]
            for path, media in paths:
                if not media or not media.get("asset"):
                    continue
                asset = media["asset"]
                link = await asyncio.to_thread(
                    sdk.upload_url,
                    asset["url"],
                    store_params={"filename": asset["originalFilename"]},
                )
                meta = link.upload_response
                sets |= {
                    f"{path}.filestackHandle": link.handle,
                    f"{path}.filestackUrl": meta.get("url"),
                    f"{path}.filestackSize": meta.get("size"),
                    f"{path}.filestackMimeType": meta.get("type") or meta.get("mimetype"),
                    f"{path}.filestackSourceAsset": media_ref(emu, doc_id, path),
                }
            mutation = {"patch": {"id": doc_id, "set": sets}}
            reply = await http.post(f"{base}/mutate/production", json={"mutations": [mutation]})
            reply.raise_for_status()


def media_ref(emu: Emulators, doc_id: str, path: str) -> str:
    """The asset a slot holds (the guide does not record it; the convergence check does)."""
    doc = emu.lake.documents[doc_id]
    if path.startswith("gallery"):
        key = path.split('"')[1]
        return next(g for g in doc["gallery"] if g["_key"] == key)["asset"]["_ref"]
    return doc[path]["asset"]["_ref"]


def bench_service(data: Dataset, pace: Pace, scratch: Path) -> Row:
    """Publish every document; signed webhooks reach ``cms-sync serve``; until converged."""
    with emulators(data, pace) as (emu, lake_faults):
        for doc in data.documents:  # the run starts from an empty dataset of documents
            emu.lake.documents.pop(doc["_id"])
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = worker_env(
            emu,
            scratch / "service.db",
            CMS_SYNC_PORT=str(port),
            CMS_SYNC_WORKERS="16",
            CMS_SYNC_STORE_CONCURRENCY="16",
        )
        child = subprocess.Popen(  # noqa: S603 - our own command
            [CMS_SYNC, "serve"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url)
            types = json.dumps(default_mapping().type_names)
            emu.lake.add_webhook(
                Webhook(
                    f"{url}/webhooks/sanity",
                    secret=SECRET,
                    filter=f"_type in {types}",
                    projection="{_id, _type, _rev}",
                    id="bench",
                )
            )
            started = time.monotonic()
            for doc in json.loads(json.dumps(data.documents)):
                emu.lake.publish([{"createOrReplace": doc}])
            done = False
            while time.monotonic() - started < 600:
                if converged(emu, data.ids):
                    done = True
                    break
                time.sleep(0.05)
            seconds = time.monotonic() - started
        finally:
            child.terminate()
            child.wait(30)
        stores = emu.filestack.stores
        counts = lake_counts(emu, lake_faults)
        row = Row(
            "service",
            len(data.documents),
            16,
            seconds,
            stores=len(stores),
            distinct=len({s["sources"][0] for s in stores}),
            converged=done,
            **counts,
        )
        row.bound = data.distinct_assets * pace.store / 16
        return row


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("cms-sync serve did not become ready")


# -- the report ---------------------------------------------------------------------------
def report(rows: list[Row], baseline: Row | None, full: Dataset) -> None:
    per_doc = baseline.seconds / baseline.documents if baseline else None
    print(
        "| run | docs | stores in flight | wall s | docs/s | stores/s | stores (distinct) "
        "| mutate requests (patches each) | queries | 429s | peak RSS MB "
        "| CPU cores: worker + emulators | bound s | of bound | vs baseline |"
    )
    print("|---" * 15 + "|")
    for row in rows:
        versus = ""
        if per_doc is not None and row.what == "backfill":
            versus = f"{per_doc * row.documents / row.seconds:.1f}x"
        elif per_doc is not None and row.what == "baseline":
            versus = f"{per_doc:.3f} s a document: {per_doc * len(full.documents):,.0f} s for all"
        cells = [
            row.what + ("" if row.converged else " (NOT converged)"),
            f"{row.documents:,}",
            str(row.concurrency),
            f"{row.seconds:.1f}",
            f"{row.documents / row.seconds:.1f}",
            f"{row.stores / row.seconds:.1f}",
            f"{row.stores:,} ({row.distinct:,})",
            f"{row.mutate_requests:,} ({row.per_request:.1f})",
            f"{row.queries:,}",
            str(row.throttled),
            f"{row.rss_mb:.0f}" if row.rss_mb is not None else "",
            f"{row.cpu[0] / row.seconds:.2f} + {row.cpu[1] / row.seconds:.2f}" if row.cpu else "",
            f"{row.bound:.1f}" if row.bound else "",
            f"{row.bound / row.seconds:.2f}" if row.bound else "",
            versus,
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--concurrency", default="16,32,64")
    parser.add_argument("--store-latency", type=float, default=0.25)
    parser.add_argument("--sanity-latency", type=float, default=0.04)
    parser.add_argument("--baseline", type=int, default=40, help="documents (0: skip)")
    parser.add_argument("--memory", type=int, default=1000, help="documents (0: skip)")
    parser.add_argument("--service", type=int, default=480, help="documents (0: skip)")
    args = parser.parse_args()
    pace = Pace(store=args.store_latency, sanity=args.sanity_latency)
    full = generate(args.documents)
    print(
        f"dataset: {len(full.documents):,} documents, {full.slots:,} media slots, "
        f"{full.distinct_assets:,} distinct assets; store {pace.store} s, Sanity {pace.sanity} s, "
        f"Sanity's limits enforced {SANITY_LIMITS}",
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-backfill-", dir=ROOT))
    rows: list[Row] = []
    try:
        baseline = bench_baseline(full, pace, args.baseline) if args.baseline else None
        if baseline:
            rows.append(baseline)
        if args.memory:
            rows.append(bench_backfill(generate(args.memory), pace, 16, scratch))
        for concurrency in (int(c) for c in args.concurrency.split(",") if c):
            rows.append(bench_backfill(full, pace, concurrency, scratch))
            report(rows[-1:], baseline, full)
        if args.service:
            rows.append(bench_service(generate(args.service), pace, scratch))
        print()
        report(rows, baseline, full)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
