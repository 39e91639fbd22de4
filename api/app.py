"""The intake API application: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from gridpatrol import __version__
from gridpatrol.api import problems
from gridpatrol.api.auth import Authenticator
from gridpatrol.api.bodylimit import BodyLimit
from gridpatrol.api.db import Database
from gridpatrol.api.deps import Services
from gridpatrol.api.evidence import EvidenceStore
from gridpatrol.api.hub import Hub
from gridpatrol.api.metrics import Metrics, MetricsMiddleware
from gridpatrol.api.policy import SitePolicy
from gridpatrol.api.retention import KeyRetention
from gridpatrol.api.routers.cameras import close_snapshot_connection
from gridpatrol.api.service import CandidateService, Clock
from gridpatrol.api.settings import Settings, TokenEntry, generate_tokens, site_policy

if TYPE_CHECKING:
    from gridpatrol.api.bus import Bus

log = logging.getLogger(__name__)

# Every router of the app, by module (each module exposes ``router``).
ROUTERS = (
    "gridpatrol.api.routers.meta",
    "gridpatrol.api.routers.session",
    "gridpatrol.api.routers.evidence",
    "gridpatrol.api.routers.candidates",
    "gridpatrol.api.routers.review",
    "gridpatrol.api.routers.status",
    "gridpatrol.api.routers.feed",
    "gridpatrol.api.routers.stats",
    "gridpatrol.api.routers.events",
    "gridpatrol.api.routers.console",
    "gridpatrol.api.routers.cameras",
)

OPENAPI_URL = "/api/v1/openapi.json"
DOCS_URL = "/api/v1/docs"
# Swagger UI's script, style and icon as the fastapi-offline package ships them: FastAPI's own
# page loads them from a CDN, which a centre's network without internet access does not reach.
DOCS_ASSETS_URL = "/api/v1/docs-assets"
DOCS_ASSETS = Path(str(files("fastapi_offline").joinpath("static")))


def utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(settings: Settings | None = None, *, clock: Clock = utc_now) -> FastAPI:
    """Build the app: migrate the database, load the policy, wire the routers.

    Also the factory of each ``gridpatrol api --workers N`` process, which reads the settings
    the parent prepared (``prepare_workers``) from the environment.
    """
    settings = settings or Settings()
    settings = _with_tokens(settings)
    policy, timezone = site_policy(settings.load_site())
    site_policy_ = SitePolicy.of(policy, timezone)
    db = Database(settings.database_url)
    if settings.migrate_on_start:
        db.migrate()
    store = EvidenceStore(settings.evidence_dir)
    hub = Hub()
    metrics = Metrics(db, feed_names(settings), feed_names(settings, role="admin"))
    bus = _bus(settings, db, hub, metrics)
    services = Services(
        settings=settings,
        candidates=CandidateService(
            db, store, site_policy_, clock, hub, max_body_bytes=settings.max_body_bytes
        ),
        store=store,
        policy=site_policy_,
        hub=hub,
        auth=Authenticator(settings, db),
        clock=clock,
        db=db,
    )
    retention = KeyRetention(db, clock, timedelta(seconds=settings.idempotency_retention_s))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        if bus is not None:
            bus.start()
        task = asyncio.create_task(_release_loop(services, retention))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if bus is not None:
                # Joining the bus's threads must not stall the event loop's last requests.
                await asyncio.to_thread(bus.stop)
            # The zone editor's broker connection: closed here, the broker marks the API
            # offline at once (its last will waits for the process to go), and an app stopped
            # inside a longer-lived process (tests, an embedding) does not leave it open.
            await asyncio.to_thread(close_snapshot_connection)
            metrics.close()
            db.dispose()

    app = FastAPI(
        title="gridpatrol intake API",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served by _add_docs_page, from the installation
        openapi_url=OPENAPI_URL,
        redoc_url=None,
    )
    _add_docs_page(app)
    app.state.services = services
    app.state.db = db
    app.state.metrics = metrics
    app.state.key_retention = retention
    problems.install(app)
    app.add_middleware(
        BodyLimit, body_bytes=settings.max_body_bytes, batch_bytes=settings.max_batch_bytes
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it counts the 413s
    for name in ROUTERS:
        app.include_router(importlib.import_module(name).router)
    log.info("intake API ready: database %s, evidence in %s", db.dialect, settings.evidence_dir)
    return app


def _add_docs_page(app: FastAPI) -> None:
    """The interactive reference at DOCS_URL, readable without a token as FastAPI's own is."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def docs_page(request: Request) -> HTMLResponse:
        # Behind a proxy that strips a prefix, the URLs carry it as FastAPI's own page does.
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        )


def feed_names(settings: Settings, role: str = "platform") -> list[str]:
    """The names of the tokens of ``role`` (platform, or admin): each has a feed cursor of
    its own once it acknowledges."""
    return sorted({e.name for e in settings.api_tokens.values() if e.role == role})


def _bus(settings: Settings, db: Database, hub: Hub, metrics: Metrics) -> Bus | None:
    if not settings.bus:
        return None
    if db.dialect != "postgresql":
        raise RuntimeError("GRIDPATROL_BUS relays over PostgreSQL LISTEN/NOTIFY: use PostgreSQL")
    # Imported here: psycopg is an optional dependency that SQLite installations lack.
    from gridpatrol.api.bus import Bus

    return Bus(settings.database_url, hub, on_drop=metrics.bus_dropped.inc)


def prepare_workers(settings: Settings, workers: int) -> dict[str, str]:
    """In the parent of ``gridpatrol api --workers N``, before it spawns them: check the
    settings, migrate once (or, with GRIDPATROL_MIGRATE_ON_START false, check that the
    database is at head), and return the environment the workers must share.

    Tokens and the session secret are fixed here, so a generated token or a console cookie is
    valid on every worker; the workers skip migrations and relay notifications over the bus.
    """
    if make_url(settings.database_url).get_backend_name() != "postgresql":
        raise RuntimeError(
            f"--workers {workers} needs PostgreSQL: SQLite admits one writer at a time and one "
            "process already serves it at full rate; use --workers 1"
        )
    settings = _with_tokens(settings)
    site_policy(settings.load_site())  # a broken site file stops the parent, not each worker
    db = Database(settings.database_url)
    try:
        if settings.migrate_on_start:
            db.migrate()
        else:
            db.check_at_head()
    finally:
        db.dispose()
    tokens = {token: entry.model_dump() for token, entry in settings.api_tokens.items()}
    return {
        "GRIDPATROL_API_TOKENS": json.dumps(tokens),
        "GRIDPATROL_SESSION_SECRET": settings.session_secret,
        "GRIDPATROL_MIGRATE_ON_START": "false",
        "GRIDPATROL_BUS": "true",
    }


async def _release_loop(services: Services, retention: KeyRetention) -> None:
    """Release night-held candidates when their hold ends (reads also check), and delete
    answered idempotency keys past their retention when a purge is due (hourly)."""
    while True:
        await asyncio.sleep(services.settings.release_interval_s)
        try:
            await run_in_threadpool(services.candidates.release_held)
        except Exception:
            log.exception("releasing held candidates failed; retrying")
        try:
            await run_in_threadpool(retention.run_if_due)
        except Exception:
            log.exception("purging old idempotency keys failed; retrying")


def _with_tokens(settings: Settings) -> Settings:
    if settings.api_tokens:
        return settings
    if not settings.allow_generated_tokens:
        raise RuntimeError(
            "no API tokens: set GRIDPATROL_API_TOKENS to a JSON object "
            '{"<token or sha256:hex>": {"role": "producer|reviewer|platform|admin", "name": ...}}'
        )
    tokens = generate_tokens()
    print("generated API tokens (valid until the API stops):", file=sys.stderr)
    print(json.dumps(tokens, indent=2), file=sys.stderr)
    entries = {token: TokenEntry.model_validate(entry) for token, entry in tokens.items()}
    return settings.model_copy(update={"api_tokens": entries})
