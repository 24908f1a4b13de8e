"""What every command shares: the error console, the one-line error exit, opening the store."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from app.core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

console = Console(stderr=True, soft_wrap=True)
"""Messages and errors go to stderr; results (JSON, tokens) to stdout."""


def fail(message: str) -> typer.Exit:
    """Print a one-line error and return the exit to raise (code 2)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code=2)


def open_store(settings: Settings | None = None) -> Engine:
    from app.core.database import StoreError
    from app.core.database import open_store as open_engine

    settings = settings or Settings()
    try:
        return open_engine(settings.database_url)
    except StoreError as err:
        raise fail(str(err)) from None


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title, show_header=False)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    Console().print(table)


def parse_overrides(specs: list[str]) -> dict[str, Any]:
    """['bandwidth=0.01', 'threshold_param=raw'] -> {'bandwidth': 0.01, 'threshold_param': 'raw'}.

    Values are read as JSON (numbers, true/false, lists), anything else as text."""
    out: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes FIELD=VALUE (e.g. bandwidth=0.01), got {spec!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
