"""The web application: `create_app(settings)` builds it (REST API, pages, static files).

Run it with `jumpscope serve` (uvicorn; `--workers N` for several processes against
Postgres). The encoder runs in this process unless JUMPSCOPE_WORKER_URL points at a
`jumpscope worker`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.core.settings import Settings

log = logging.getLogger("jumpscope.server")

OPEN_WRITES_WARNING = (
    "no API tokens are configured: anyone who can reach this server can write ratings and queue jobs. "
    "Add tokens with `jumpscope users add NAME [--admin]`."
)


def create_app(settings: Settings | None = None, *, encoder: Any = None) -> FastAPI:
    """The FastAPI app for `settings` (default: from the environment); `encoder` overrides the configured one."""
    from app.auth.rate_limit import RateLimiter
    from app.catalog import api as catalog_api
    from app.catalog import pages as catalog_pages
    from app.core import errors, health
    from app.core.body_limit import BodyLimit
    from app.core.database import check_schema, engine_for, session_factory
    from app.encoding import api as encoding_api
    from app.encoding.encoder import make_encoder
    from app.encoding.gate import EncodeGate
    from app.features import api as features_api
    from app.features import pages as features_pages
    from app.interp import api as interp_api
    from app.interp import pages as interp_pages
    from app.jobs import api as jobs_api
    from app.jobs import pages as jobs_pages
    from app.ratings import api as ratings_api
    from app.ratings import pages as ratings_pages
    from app.steering import api as steering_api
    from app.studies import api as studies_api
    from app.studies import pages as studies_pages
    from app.studies import results_pages as studies_results_pages
    from app.sweeps import api as sweeps_api
    from app.sweeps import pages as sweeps_pages
    from app.textview import pages as textview_pages
    from app.textview import steer_pages as textview_steer_pages
    from app.web import rendering

    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from app.auth.tokens import tokens_configured

        check_schema(app.state.engine)
        with app.state.sessions() as session:
            if not tokens_configured(session):
                log.warning(OPEN_WRITES_WARNING)
        yield
        close = getattr(app.state.encoder, "aclose", None)
        if close is not None:
            await close()

    app = FastAPIOffline(  # /docs and /redoc with their assets served locally: the tool works offline
        title="jumpscope",
        summary="Browse, encode and rate JumpReLU sparse autoencoder features.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine_for(settings.database_url)
    app.state.sessions = session_factory(app.state.engine)
    app.state.encode_targets = {}  # SAE name -> (time, encoder target), see app.encoding.service
    app.state.encode_gate = EncodeGate(settings.encode_max_concurrent, settings.encode_max_waiting)
    app.state.encode_rate = RateLimiter(settings.encode_rate_limit, settings.rate_limit_storage)
    app.state.encoder = encoder or make_encoder(
        settings.worker_url, worker_token=settings.worker_token, max_loaded=settings.max_loaded_saes,
        max_tokens=settings.encode_max_tokens, max_batch_texts=settings.encode_max_batch,
        window_ms=settings.encode_window_ms, batching=settings.encode_batching, device=settings.device,
        max_values=settings.encode_max_values,
    )  # fmt: skip
    errors.install(app)
    for module in (health, catalog_api, features_api, ratings_api, encoding_api, jobs_api, sweeps_api, studies_api):
        app.include_router(module.router)
    app.include_router(steering_api.router)
    app.include_router(interp_api.router)
    rendering.mount(app)  # /static, and HTML 404 pages for browsers
    for module in (catalog_pages, features_pages, ratings_pages, studies_pages, jobs_pages, sweeps_pages):
        app.include_router(module.router)
    app.include_router(studies_results_pages.router)
    app.include_router(textview_pages.router)
    app.include_router(textview_steer_pages.router)
    app.include_router(interp_pages.router)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)  # outermost: before any route reads
    return app


def _version() -> str:
    from trainer.version import jumpscope_version

    return jumpscope_version()
