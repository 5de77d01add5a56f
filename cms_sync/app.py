"""The webhook service: ``create_app(settings)`` builds the Starlette app.

The lifespan owns every resource: the storage (unless it is handed in, opened in the
same event loop), the HTTP clients, the Syncer and the worker, stopped gracefully on
shutdown (uvicorn turns SIGTERM into that shutdown). The worker runs on the app's own
loop (``WorkerMode.INLINE``, what tests inject transports and a clock into), in a child
process (``WorkerMode.PROCESS``, what ``cms-sync serve`` runs), or not at all.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from cms_sync.errors import ConfigError
from cms_sync.events import Fanout, LogEvents
from cms_sync.handlers.filestack import filestack_webhook
from cms_sync.handlers.health import healthz, readyz
from cms_sync.handlers.metrics import metrics
from cms_sync.handlers.webhooks import SanityWebhook
from cms_sync.mapping import MediaMapping
from cms_sync.metrics import Metrics
from cms_sync.operator import OperatorOptions, operator_app
from cms_sync.retry import RetryPolicy
from cms_sync.scrub import Scrubber
from cms_sync.service import Service, WorkerHandle
from cms_sync.serving import AcceptErrorLog
from cms_sync.settings import Settings
from cms_sync.storage import Storage, open_storage
from cms_sync.sync import open_syncer, rate_limiter
from cms_sync.worker import Worker, worker_options
from cms_sync.worker_process import START_TIMEOUT, WorkerProcess, WorkerSpec

log = structlog.get_logger(__name__)


def check_settings(settings: Settings, *, verify_signatures: bool) -> None:
    """What the service needs beyond the sync settings.

    Raises:
        ConfigError: ``SANITY_WEBHOOK_SECRET`` is missing while signatures are verified.
    """
    if verify_signatures and settings.sanity_webhook_secret is None:
        raise ConfigError(
            "SANITY_WEBHOOK_SECRET is required to verify deliveries "
            "(--insecure-skip-signature turns verification off for local experiments only)"
        )


class WorkerMode(enum.Enum):
    INLINE = "inline"  # on the app's event loop, in its process
    PROCESS = "process"  # in a child process (cms_sync.worker_process)
    NONE = "none"  # another process on the same database syncs (serve --no-worker)


SANITY_PATH = "/webhooks/sanity"


class App(Starlette):
    """The service's Starlette app, which hands ``POST /webhooks/sanity`` straight to its
    endpoint, ahead of Starlette's middleware and router (the route is there as well).

    That path takes every delivery, and the stack in front of it (two exception
    middlewares, each wrapping ``send``, the router trying each route) cost 14 µs of a
    delivery's 140 µs of CPU, measured side by side over sockets (``bench/README.md``).
    The endpoint answers a bug with a 500 itself, as Starlette's error middleware would;
    any other method, and a server mounted under a ``root_path``, go through Starlette.
    """

    def __init__(self, *, sanity: SanityWebhook, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sanity = sanity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == SANITY_PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            scope["app"] = self
            await self._sanity(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    mapping: MediaMapping,
    storage: Storage | None = None,
    verify_signatures: bool = True,
    worker_mode: WorkerMode = WorkerMode.INLINE,
    clock: Callable[[], float] = time.time,
    retry: RetryPolicy | None = None,
    sanity_transport: httpx.AsyncBaseTransport | None = None,
    filestack_transport: httpx.AsyncBaseTransport | None = None,
) -> App:
    """Build the service.

    A worker in a child process builds its clients from ``settings`` alone: the
    transports, clock and retry policy given here are the inline worker's.

    Raises:
        ConfigError: ``SANITY_WEBHOOK_SECRET`` is missing while signatures are verified.
    """
    check_settings(settings, verify_signatures=verify_signatures)
    secret = settings.sanity_webhook_secret

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        AcceptErrorLog().install(asyncio.get_running_loop())
        async with AsyncExitStack() as stack:
            opened = storage
            if opened is None:
                opened = await stack.enter_async_context(
                    open_storage(
                        settings.cms_sync_database,
                        ingest_timeout=settings.cms_sync_ingest_timeout,
                    )
                )
            job_store = opened.jobs
            limiter = rate_limiter(settings)
            app.state.metrics = meters = Metrics(limiter, clock=clock)
            child: WorkerProcess | None = None
            if worker_mode is WorkerMode.PROCESS:
                # The child logs its own events; the metrics here count them.
                child = WorkerProcess(
                    WorkerSpec(settings, mapping, owner=""),
                    events=meters,
                    stop_timeout=settings.cms_sync_shutdown_grace + 10,
                )
                meters.add_limiter(child)
            events = Fanout([LogEvents(), meters])
            async with open_syncer(
                settings,
                mapping,
                opened.records,
                retry=retry,
                sanity_transport=sanity_transport,
                filestack_transport=filestack_transport,
                clock=clock,
                limiter=limiter,
                events=events,
            ) as syncer:
                worker: WorkerHandle
                if child is not None:
                    worker = child
                else:
                    worker = inline = Worker(
                        job_store,
                        syncer,
                        worker_options(settings),
                        clock=clock,
                        scrub=Scrubber(settings.secret_values()),
                        events=events,
                    )
                    if worker_mode is WorkerMode.INLINE:
                        job_store.add_waker(inline.wake)  # other replicas' jobs, where told
                app.state.service = Service(
                    store=job_store,
                    worker=worker,
                    mapping=mapping,
                    webhook_secret=secret if verify_signatures else None,
                    max_body=settings.cms_sync_webhook_max_body,
                    max_documents=settings.cms_sync_webhook_max_documents,
                    signature_tolerance=settings.cms_sync_webhook_tolerance,
                    clock=clock,
                    worker_required=worker_mode is not WorkerMode.NONE,
                    events=events,
                    filestack_secret=settings.filestack_webhook_secret,
                    filestack_max_age=settings.cms_sync_filestack_webhook_max_age,
                    dataset_tag=settings.dataset_tag,
                    syncer=syncer,
                )
                if not verify_signatures:
                    log.warning(
                        "signatures_not_verified",
                        message="INSECURE: --insecure-skip-signature is set; anyone who can "
                        "reach this port can queue syncs. Never run this way in production.",
                    )
                if worker_mode is not WorkerMode.NONE:
                    worker.start()
                if child is not None and not await child.wait_started(START_TIMEOUT):
                    log.error("worker_process_not_started", waited=START_TIMEOUT)
                try:
                    yield
                finally:
                    await worker.stop()

    sanity = SanityWebhook()
    routes = [
        Route(SANITY_PATH, sanity, methods=["POST"]),
        Route("/webhooks/filestack", filestack_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = App(routes=routes, lifespan=lifespan, sanity=sanity)
    operator = OperatorOptions.from_settings(settings)
    if operator is not None:  # otherwise /operator is a 404 like any unknown path
        app.router.routes.append(
            Mount(
                "/operator",
                operator_app(
                    lambda: app.state.service, operator, metrics=lambda: app.state.metrics
                ),
            )
        )
    return app
