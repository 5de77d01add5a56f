"""``GET /metrics``: Prometheus's text format (see :mod:`cms_sync.metrics`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cms_sync.metrics import CONTENT_TYPE, Metrics
from cms_sync.service import Service


async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    registry: Metrics = request.app.state.metrics
    body = await registry.exposition(service.store, now=service.clock())
    return Response(body, media_type=CONTENT_TYPE)
