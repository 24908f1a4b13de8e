"""Alembic environment: the URL comes from app.core.database.alembic_config (or DATABASE_URL via Settings)."""

from __future__ import annotations

from alembic import context

from app.core.database import make_engine, normalise_url
from app.core.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> object:
    url = config.attributes.get("url")
    if url is None:
        from app.core.settings import Settings

        url = normalise_url(Settings().database_url)
    return url


def run_migrations_offline() -> None:
    context.configure(url=str(_url()), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())  # type: ignore[arg-type]
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
