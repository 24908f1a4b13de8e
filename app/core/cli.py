"""`jumpscope db`: apply and inspect the store's Alembic migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from app.core.commands import console, fail
from app.core.settings import Settings

db_app = typer.Typer(help="Database schema: apply Alembic migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations to DATABASE_URL (or JUMPSCOPE_DATABASE_URL; default sqlite:///jumpscope.db)."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.core.database import current_revision, engine_for, upgrade

    url = Settings().database_url
    try:
        upgrade(url, revision)
        now = current_revision(engine_for(url))
    except (SQLAlchemyError, OSError) as err:
        raise fail(f"cannot migrate {url}: {str(getattr(err, 'orig', err) or err).strip()}") from None
    console.print(f"database {engine_for(url).url!r} is at revision {now}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's migration revision and the latest one."""
    from app.core.database import current_revision, engine_for, head_revision

    url = Settings().database_url
    typer.echo(f"current: {current_revision(engine_for(url))}  head: {head_revision()}")


def register(cli: typer.Typer) -> None:
    """Add the db group to the root command."""
    cli.add_typer(db_app, name="db")
