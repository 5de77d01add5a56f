"""Both emulators on local sockets, and the settings a worker needs to use them.

``cms-sync emulate``, ``cms-sync demo`` and the end-to-end tests start the emulators
through :func:`running`. The worker needs only three settings changed to use them:
``SANITY_API_HOST``, ``FILESTACK_PROCESS_URL`` and ``CMS_SYNC_ALLOWED_ASSET_HOSTS``
(:meth:`Emulators.worker_env` also names the credentials the emulators accept).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from cms_sync.emulators.faults import Faults
from cms_sync.emulators.filestack import Filestack
from cms_sync.emulators.http import bind, serve
from cms_sync.emulators.lake import ContentLake
from cms_sync.emulators.webhooks import Dispatcher


@dataclass
class Emulators:
    lake: ContentLake
    filestack: Filestack
    sanity_url: str
    filestack_url: str

    @property
    def asset_hosts(self) -> str:
        """The allow-list entries for this dataset's assets on the emulated CDN."""
        host = self.sanity_url.removeprefix("http://")
        lake = self.lake
        return ",".join(
            f"{host}/{kind}/{lake.project_id}/{lake.dataset}/" for kind in ("images", "files")
        )

    def worker_env(self) -> dict[str, str]:
        env = {
            "SANITY_PROJECT_ID": self.lake.project_id,
            "SANITY_DATASET": self.lake.dataset,
            "SANITY_WRITE_TOKEN": self.lake.token,
            "SANITY_API_HOST": self.sanity_url,
            "FILESTACK_API_KEY": self.filestack.api_key,
            "FILESTACK_PROCESS_URL": f"{self.filestack_url}/process",
            "CMS_SYNC_ALLOWED_ASSET_HOSTS": self.asset_hosts,
        }
        if self.filestack.app_secret:
            env["FILESTACK_APP_SECRET"] = self.filestack.app_secret
        if self.filestack.notifier is not None:
            env["FILESTACK_WEBHOOK_SECRET"] = self.filestack.notifier.secret
        return env


@contextmanager
def running(
    documents: Iterable[dict[str, Any]] = (),
    *,
    sanity_port: int = 0,
    filestack_port: int = 0,
    host: str = "127.0.0.1",
    project_id: str = "cmsdemo",
    dataset: str = "production",
    token: str = "emulator-token",  # noqa: S107 - the emulator's default, not a credential
    api_key: str = "emulator-key",
    app_secret: str | None = None,
    sanity_faults: Faults | None = None,
    filestack_faults: Faults | None = None,
    dispatcher: Dispatcher | None = None,
) -> Iterator[Emulators]:
    """Serve a Content Lake holding ``documents`` and a Filestack until the block ends."""
    with ExitStack() as stack:
        sanity_sock = bind(sanity_port, host)
        sanity_url = f"http://{host}:{sanity_sock.getsockname()[1]}"
        lake = ContentLake(
            documents={d["_id"]: d for d in documents},
            project_id=project_id,
            dataset=dataset,
            token=token,
            asset_base=sanity_url,
            faults=sanity_faults,
            dispatcher=dispatcher or Dispatcher(project_id, dataset),
        )
        stack.callback(lake.close)
        filestack = Filestack(api_key=api_key, app_secret=app_secret, faults=filestack_faults)
        stack.callback(filestack.close)
        stack.enter_context(serve(lake, sanity_sock))
        filestack_url, _ = stack.enter_context(serve(filestack, bind(filestack_port, host)))
        yield Emulators(lake, filestack, sanity_url, filestack_url)
