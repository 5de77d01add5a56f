"""Liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from cms_sync.errors import StoreUnavailable
from cms_sync.service import Service


async def healthz(request: Request) -> JSONResponse:
    """The process is up and serving."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """The job store answers and the worker is running."""
    service: Service = request.app.state.service
    problems: list[str] = []
    try:
        await service.store.ping()
    except StoreUnavailable as exc:
        problems.append(str(exc))
    if service.worker_required and not service.worker.running:
        problems.append("worker is not running")
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})
