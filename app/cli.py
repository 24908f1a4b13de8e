"""The `jumpscope` command line (interface.md): each domain registers its own commands here.

Heavy imports (torch, transformers, the database) stay inside the commands, so `--help` is fast.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from app.auth import cli as auth_cli
from app.catalog import cli as catalog_cli
from app.core import cli as core_cli
from app.core.commands import console, open_store
from app.core.settings import Settings
from app.features import cli as features_cli
from app.interp import cli as interp_cli
from app.interp.llm import cli as llm_cli
from app.jobs import cli as jobs_cli
from app.pipeline import cli as pipeline_cli
from app.sweeps import cli as sweeps_cli

app = typer.Typer(
    name="jumpscope",
    help="Train, evaluate, inspect and rate JumpReLU sparse autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="Logging level: debug, info, warning.")] = "warning",
) -> None:
    """jumpscope: JumpReLU sparse autoencoders on Gemma activations."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (use Postgres when > 1).")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the web server: REST API under /api/v1, OpenAPI docs at /docs, feature pages at /."""
    import uvicorn

    settings = Settings()
    open_store(settings)  # migrate a fresh SQLite store, or fail early with the fix
    if workers > 1 and settings.database_url.startswith("sqlite"):
        console.print("[yellow]note:[/] several workers share one SQLite file; use Postgres for real concurrency")
    console.print(f"jumpscope on http://{host}:{port} (API docs: http://{host}:{port}/docs)")
    uvicorn.run("app.server:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level)


for domain in (pipeline_cli, core_cli, catalog_cli, features_cli, jobs_cli, auth_cli, sweeps_cli, llm_cli, interp_cli):
    domain.register(app)
app.command()(serve)
