"""GET /healthz: is the database reachable, is an encoder available."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from app.core.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness of the server, its database and its encoder")
async def healthz(request: Request) -> Health:
    from starlette.concurrency import run_in_threadpool

    def ping() -> bool:
        try:
            with request.app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # any failure means "unavailable"; the endpoint itself must answer
            return False

    database = await run_in_threadpool(ping)
    try:
        encoder_ok = (await request.app.state.encoder.health()) == "ok"
    except Exception:
        encoder_ok = False
    return Health(database="ok" if database else "unavailable", encoder="ok" if encoder_ok else "unavailable")
