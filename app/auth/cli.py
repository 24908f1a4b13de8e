"""`jumpscope users`: the API tokens that may write ratings and queue jobs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from app.auth.names import NAME_RULE, check_name
from app.core.commands import console, fail, open_store

users_app = typer.Typer(help="API tokens: who may write ratings and queue jobs.", no_args_is_help=True)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help=f"The rater name the token writes as: {NAME_RULE}.")],
    admin: Annotated[bool, typer.Option(help="May also queue jobs.")] = False,
) -> None:
    """Create a token for NAME and print it (it is stored hashed and cannot be shown again)."""
    from app.auth.tokens import add_token
    from app.core.database import session_scope

    try:
        check_name(name)
    except ValueError as err:
        raise fail(escape(f"NAME: {err}")) from None
    with session_scope(open_store()) as session:
        token = add_token(session, name, admin=admin)
    console.print(f"token for {name!r}{' (admin)' if admin else ''}; keep it, it is shown only once:")
    typer.echo(token)


@users_app.command("list")
def users_list() -> None:
    """Token holders (names, admin flag, last use); never the tokens."""
    from sqlalchemy import select

    from app.core.database import session_scope
    from app.core.tables import ApiToken

    with session_scope(open_store()) as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.name, ApiToken.id)).all()
        for row in rows:
            typer.echo(f"{row.name}\t{'admin' if row.admin else 'rater'}\tcreated {row.created_at:%Y-%m-%d}"
                       f"\tlast used {row.last_used_at or 'never'}")  # fmt: skip
    if not rows:
        console.print("no tokens: writes are open to anyone who can reach the server")


@users_app.command("remove")
def users_remove(name: Annotated[str, typer.Argument(help="Remove every token of NAME.")]) -> None:
    """Revoke NAME's tokens (their ratings stay)."""
    from app.auth.tokens import remove_tokens
    from app.core.database import session_scope

    with session_scope(open_store()) as session:
        n = remove_tokens(session, name)
    if n == 0:
        raise fail(escape(f"no tokens for {name!r}"))
    console.print(escape(f"removed {n} token(s) of {name!r}"))


def register(cli: typer.Typer) -> None:
    """Add the users group to the root command."""
    cli.add_typer(users_app, name="users")
