"""Liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from cms_sync.errors import StoreUnavailable
from cms_sync.service import Service


async def healthz(request: Request) -> JSONResponse:
    """The process is up and serving."""
    return JSONResponse({"status": "ok"})


#: /readyz answers within a second: a probe that cannot write by then counts as a failure.
READY_PROBE_BUDGET = 0.8


async def readyz(request: Request) -> JSONResponse:
    """Ready when a delivery could be written now and the worker is running."""
    service: Service = request.app.state.service
    problems: list[str] = []
    try:
        await service.store.check_writable(budget=READY_PROBE_BUDGET)
    except StoreUnavailable as exc:
        problems.append(str(exc))
    if service.worker_required and not service.worker.running:
        problems.append("worker is not running")
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})
