"""The resources of a running webhook service, owned by the app's lifespan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import SecretStr

from cms_sync.events import Events, LogEvents
from cms_sync.jobs import JobStore
from cms_sync.mapping import MediaMapping
from cms_sync.sync import Syncer


class WorkerHandle(Protocol):
    """What the service needs of its worker: a :class:`~cms_sync.worker.Worker` on its
    own loop, or a :class:`~cms_sync.worker_process.WorkerProcess` beside it."""

    @property
    def running(self) -> bool: ...

    def wake(self) -> None: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Service:
    store: JobStore
    worker: WorkerHandle
    mapping: MediaMapping
    #: None only with ``--insecure-skip-signature``.
    webhook_secret: SecretStr | None
    max_body: int
    max_documents: int
    signature_tolerance: float | None
    clock: Callable[[], float]
    worker_required: bool = True
    #: Told how each delivery was answered (the log, metrics).
    events: Events = field(default_factory=LogEvents)
    #: Filestack's webhook: None answers 404 (not configured).
    filestack_secret: SecretStr | None = None
    filestack_max_age: float = 900.0
    #: ``<project>/<dataset>``: stores tagged for another dataset are not ours.
    dataset_tag: str = ""
    #: The worker's syncer, for reading a document's plan (the operator page).
    syncer: Syncer | None = None
