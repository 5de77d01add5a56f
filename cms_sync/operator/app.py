"""``/operator``: what is wrong, and the button that replays it, in a browser.

Server-rendered (Jinja2, autoescaped) and usable without JavaScript; ``operator.js`` only
refreshes the overview and sends the replay buttons without reloading the page. Every
page is drawn from :mod:`cms_sync.operations`, the same use cases the CLI prints: the
page holds no logic of its own, so it answers alike on SQLite and PostgreSQL.

Security (see :mod:`.auth`): off unless ``CMS_SYNC_OPERATOR_TOKEN`` is set; a login
exchanges the token for a signed session cookie; every change is a POST with a CSRF
token; a strict Content-Security-Policy (no inline script or style at all) and
``no-store`` on every answer; failed logins limited per address; errors shown scrubbed
of every configured secret.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jinja2
import structlog
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cms_sync import operations
from cms_sync.backfill import format_progress
from cms_sync.deliveries import id_problem
from cms_sync.jobs import JobState, RunOutcome
from cms_sync.metrics import Metrics
from cms_sync.operator import auth, chart
from cms_sync.scrub import Scrubber
from cms_sync.service import Service
from cms_sync.settings import Settings
from cms_sync.storage import Storage

log = structlog.get_logger(__name__)

#: Filestack's CDN, where the thumbnails of stored images come from.
FILESTACK_CDN = "https://cdn.filestackcontent.com"


@dataclass(frozen=True)
class OperatorOptions:
    token: SecretStr
    session_hours: float = 12.0
    secure_cookie: bool = True
    studio_url: str | None = None
    #: Origins images may come from (the CSP's ``img-src``), besides the page's own.
    image_origins: tuple[str, ...] = (FILESTACK_CDN,)
    scrub: Scrubber = field(default_factory=Scrubber)

    @classmethod
    def from_settings(cls, settings: Settings) -> OperatorOptions | None:
        """None when ``CMS_SYNC_OPERATOR_TOKEN`` is unset: no page at all."""
        if settings.cms_sync_operator_token is None:
            return None
        process = urlsplit(settings.filestack_process_url)
        origins = dict.fromkeys((FILESTACK_CDN, f"{process.scheme}://{process.netloc}"))
        return cls(
            token=settings.cms_sync_operator_token,
            session_hours=settings.cms_sync_operator_session_hours,
            secure_cookie=settings.cms_sync_operator_secure_cookie,
            studio_url=settings.sanity_studio_url,
            image_origins=tuple(origins),
            scrub=Scrubber(settings.secret_values()),
        )


def content_security_policy(image_origins: tuple[str, ...]) -> str:
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' " + " ".join(image_origins),
            "connect-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )


class SecurityHeaders:
    """The headers every operator answer carries (pure ASGI, so streaming is untouched)."""

    def __init__(self, app: ASGIApp, *, policy: str) -> None:
        self.app = app
        self.headers = {
            "content-security-policy": policy,
            "x-content-type-options": "nosniff",
            "x-frame-options": "DENY",
            "referrer-policy": "no-referrer",
            "cache-control": "no-store",
            "cross-origin-opener-policy": "same-origin",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for a request body over ``limit`` bytes, counted as it arrives (a form has no
    business being large, and a chunked body has no length to check up front)."""

    def __init__(self, app: ASGIApp, *, limit: int = 64 * 1024) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:
                raise
            response = JSONResponse({"error": f"body larger than {self.limit} bytes"}, 413)
            await response(scope, receive, send)


Handler = Callable[[Request], Awaitable[Response]]


def operator_app(
    service: Callable[[], Service],
    options: OperatorOptions,
    *,
    metrics: Callable[[], Metrics | None] = lambda: None,
) -> Starlette:
    """The page, to mount at ``/operator``; ``service`` gives the running service and
    ``metrics`` its metrics (for the error rates of this process's calls)."""
    templates = Jinja2Templates(
        env=jinja2.Environment(
            loader=jinja2.PackageLoader("cms_sync.operator", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
    )
    templates.env.filters["when"] = _when
    templates.env.filters["age"] = _age
    templates.env.filters["percent"] = _percent
    templates.env.filters["progress"] = format_progress
    templates.env.globals["outcomes"] = RunOutcome
    templates.env.globals["states"] = JobState
    limiter = auth.LoginLimiter()

    def storage() -> Storage:
        store = service().store
        return Storage(store, store.records)

    def page(request: Request, name: str, code: int = 200, **context: Any) -> Response:
        session = request.session
        return templates.TemplateResponse(
            request,
            name,
            {
                "csrf": auth.csrf_token(session),
                "logged_in": auth.logged_in(session),
                "studio_url": options.studio_url,
                "notice": session.pop("notice", None),
                **context,
            },
            status_code=code,
        )

    def requires_login(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not auth.logged_in(request.session):
                if request.method == "GET":
                    return RedirectResponse(request.url_for("login").path, status_code=303)
                return JSONResponse({"error": "log in first"}, status_code=401)
            if request.method == "POST" and not await _csrf_ok(request):
                return _csrf_refused()
            return await handler(request)

        return guarded

    async def login_form(request: Request) -> Response:
        if auth.logged_in(request.session):
            return RedirectResponse(request.url_for("overview").path, status_code=303)
        return page(request, "login.html", title="Log in")

    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(client)
        if wait is not None:
            log.warning("operator_login_limited", client=client)
            response = page(
                request,
                "login.html",
                429,
                title="Log in",
                error=f"Too many failed logins. Try again in {wait:.0f} s.",
            )
            response.headers["retry-after"] = str(int(wait) + 1)
            return response
        if not await _csrf_ok(request):
            return _csrf_refused()
        form = await request.form()
        given = form.get("token")
        if not isinstance(given, str) or not auth.token_matches(
            given, options.token.get_secret_value()
        ):
            limiter.failed(client)
            log.warning("operator_login_failed", client=client)
            return page(request, "login.html", 401, title="Log in", error="That is not the token.")
        limiter.succeeded(client)
        auth.log_in(request.session, now=time.time())
        log.info("operator_logged_in", client=client)
        return RedirectResponse(request.url_for("overview").path, status_code=303)

    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse(request.url_for("login").path, status_code=303)

    async def overview(request: Request) -> Response:
        svc = service()
        now = svc.clock()
        status = await operations.status(storage(), now=now)
        failed = await operations.failures(storage(), scrub=options.scrub)
        orphans = await operations.orphans(storage(), scrub=options.scrub)
        throughput = await operations.throughput(storage(), now=now)
        backfills = await operations.backfills(storage(), now=now, limit=1)
        meters = metrics()
        return page(
            request,
            "overview.html",
            title="Overview",
            status=status,
            failures=failed[:5],
            failure_count=len(failed),
            orphans=orphans,
            throughput=throughput,
            chart=chart.bars(throughput),
            calls=None if meters is None else meters.recent_calls.rates(),
            recent=await operations.recent_documents(storage(), scrub=options.scrub),
            backfills=[b for b in backfills if b.run.finished_at is None],
            now=now,
        )

    async def document(request: Request) -> Response:
        document_id = request.path_params["document_id"]
        svc = service()
        view = await operations.document(
            storage(),
            document_id,
            plan=None if svc.syncer is None else svc.syncer.plan,
            scrub=options.scrub,
        )
        return page(request, "document.html", title=document_id, doc=view, now=svc.clock())

    async def find_document(request: Request) -> Response:
        document_id = request.query_params.get("id", "").strip()
        if not document_id:
            return RedirectResponse(request.url_for("overview").path, status_code=303)
        problem = id_problem(document_id)
        if problem is not None:
            return page(
                request, "find.html", 400, title="Find a document", error=problem, asked=document_id
            )
        path = request.url_for("document", document_id=document_id).path
        return RedirectResponse(path, status_code=303)

    async def backfill(request: Request) -> Response:
        now = service().clock()
        runs = await operations.backfills(storage(), now=now)
        return page(request, "backfill.html", title="Backfill", runs=runs, now=now)

    async def failures(request: Request) -> Response:
        failed = await operations.failures(storage(), scrub=options.scrub)
        return page(request, "failures.html", title="Failures", failures=failed)

    async def replay(request: Request) -> Response:
        form = await request.form()
        ids = [v for v in form.getlist("document_id") if isinstance(v, str) and v]
        everything = form.get("all") == "failed"
        svc = service()
        replayed = await operations.replay(storage(), ids, all_failed=everything, now=svc.clock())
        if replayed.queued:
            svc.worker.wake()
        log.info("operator_replay", queued=list(replayed.queued), refused=replayed.refused)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(
                {"queued": list(replayed.queued), "refused": replayed.refused},
                status_code=200 if replayed.ok else 400,
            )
        request.session["notice"] = _replay_notice(replayed)
        return RedirectResponse(request.url_for("failures").path, status_code=303)

    routes = [
        Route("/", requires_login(overview), name="overview"),
        Route("/failures", requires_login(failures), name="failures"),
        Route("/documents", requires_login(find_document), name="find_document"),
        Route("/documents/{document_id}", requires_login(document), name="document"),
        Route("/backfill", requires_login(backfill), name="backfill"),
        Route("/replay", requires_login(replay), methods=["POST"], name="replay"),
        Route("/login", login_form, name="login"),
        Route("/login", login, methods=["POST"]),
        Route("/logout", requires_login(logout), methods=["POST"], name="logout"),
        Mount("/static", StaticFiles(packages=[("cms_sync.operator", "static")]), name="static"),
    ]
    middleware = [
        Middleware(BodyLimit),
        Middleware(SecurityHeaders, policy=content_security_policy(options.image_origins)),
        Middleware(
            SessionMiddleware,
            secret_key=auth.session_key(options.token.get_secret_value()),
            session_cookie=auth.COOKIE,
            max_age=int(options.session_hours * 3600),
            path="/operator",
            same_site="strict",
            https_only=options.secure_cookie,
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)


async def _csrf_ok(request: Request) -> bool:
    given = request.headers.get(auth.CSRF_HEADER)
    if given is None:
        form = await request.form()
        value = form.get(auth.CSRF_FIELD)
        given = value if isinstance(value, str) else None
    return auth.csrf_ok(request.session, given)


def _csrf_refused() -> Response:
    return JSONResponse(
        {"error": "missing or wrong CSRF token: reload the page and try again"}, status_code=403
    )


def _replay_notice(replayed: operations.Replayed) -> str:
    parts = []
    if replayed.queued:
        parts.append(f"Queued {len(replayed.queued)}: {', '.join(replayed.queued)}.")
    else:
        parts.append("Nothing to replay.")
    for doc_id, reason in replayed.refused.items():
        parts.append(f"Refused {doc_id}: {reason}.")
    return " ".join(parts)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
