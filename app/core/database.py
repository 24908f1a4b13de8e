"""Database engines, sessions and migrations for the store.

SQLite (the default, a file in the working directory) runs with WAL and foreign keys on;
Postgres URLs are routed to the psycopg 3 driver. The schema is owned by the Alembic
migrations in `migrations/`: `upgrade()` is what `jumpscope db upgrade` runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.core.assets import asset_dir

MIGRATIONS = asset_dir("migrations")


class StoreError(RuntimeError):
    """The database cannot be used (unreachable, not migrated, ...); the message says what to do."""


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL; plain postgresql:// (and postgres://) use the psycopg 3 driver."""
    text = str(url) if isinstance(url, URL) else url
    if text.startswith("postgres://"):
        text = "postgresql://" + text.removeprefix("postgres://")
    parsed = make_url(text)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """A new engine for url (SQLite pragmas installed, pool pre-ping on servers)."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True, **kwargs)


@cache
def engine_for(url: str) -> Engine:
    """One shared engine per URL in this process."""
    _known_urls.add(url)
    return make_engine(url)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with session_factory(engine)() as session, session.begin():
        yield session


def alembic_config(url: str | URL) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = normalise_url(url)
    return cfg


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Apply the migrations up to revision (default: the latest)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def check_schema(engine: Engine) -> None:
    """Raise StoreError unless the database is reachable and migrated to the latest revision."""
    from sqlalchemy.exc import OperationalError

    try:
        current = current_revision(engine)
    except OperationalError as err:
        raise StoreError(f"cannot open the database {engine.url!r}: {str(err.orig).strip()}") from None
    head = head_revision()
    if current != head:
        state = "is empty" if current is None and not inspect(engine).get_table_names() else f"is at {current}"
        raise StoreError(f"the database {engine.url!r} {state}, not at {head}: run `jumpscope db upgrade`")


def open_store(url: str, *, migrate_sqlite: bool = True) -> Engine:
    """The engine for url, ready to use.

    A SQLite store (the laptop default) is created or migrated on first use; a server
    database must be migrated explicitly with `jumpscope db upgrade`, so that several
    processes never race to migrate it.
    """
    engine = engine_for(url)
    if migrate_sqlite and engine.url.get_backend_name() == "sqlite":
        try:
            if current_revision(engine) != head_revision():
                upgrade(engine.url)
        except Exception as err:  # any failure here means the file is unusable
            raise StoreError(f"cannot open the SQLite store {engine.url.database}: {err}") from None
    check_schema(engine)
    return engine


def dispose_all() -> None:
    """Close every shared engine's connections (tests, worker shutdown)."""
    for engine in _engines():
        engine.dispose()
    engine_for.cache_clear()
    _known_urls.clear()


def _engines() -> list[Engine]:
    # functools.cache keeps no public view of its values; rebuild them from the cache keys.
    return [engine_for(url) for url in _known_urls]


_known_urls: set[str] = set()
