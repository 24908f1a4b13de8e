"""`jumpscope import` and `export`: SAEs in and out of the store in every format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.core.commands import console, fail, open_store
from app.core.settings import Settings
from trainer.formats import FormatOrAuto, SAEFormat


def import_(
    path: Annotated[Path, typer.Argument(help="A native folder, a Gemma Scope params.npz or a SAELens folder.")],
    format: Annotated[FormatOrAuto, typer.Option(help="Format of PATH (auto detects it).")] = "auto",
    name: Annotated[str | None, typer.Option(help="URL-safe name (default: MODEL-lLAYER-SITE-WIDTH).")] = None,
    model: Annotated[str | None, typer.Option(help="The SAE's model, where the file does not say.")] = None,
    layer: Annotated[int | None, typer.Option(help="The SAE's layer, where the file does not say.")] = None,
    site: Annotated[str | None, typer.Option(help="resid, mlp or attn, where the file does not say.")] = None,
    metrics: Annotated[
        Path | None, typer.Option(help="A JSON file of eval metrics (`jumpscope eval --json`) to store with it.")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Overwrite an SAE registered under the same name.")] = False,
) -> None:
    """Register an SAE in the database (its weights are kept as a native folder under the data dir)."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.catalog.saes import RegistryError, import_sae, ratings_count
    from app.core.database import session_scope
    from trainer.formats.files import SAEFormatError

    settings = Settings()
    engine = open_store(settings)
    extra: dict[str, Any] | None = None
    if metrics is not None:
        try:
            extra = json.loads(metrics.read_text())
        except (OSError, ValueError) as err:
            raise fail(f"--metrics {metrics}: {err}") from None
    try:
        with session_scope(engine) as session:
            row, replaced = import_sae(
                session, path, data_dir=settings.data_dir, format=format, name=name, model=model,
                layer=layer, site=site, replace=replace, metrics=extra,
            )  # fmt: skip
            kept = ratings_count(session, row) if replaced else 0
            summary = f"{row.name}: {row.architecture} {row.d_in}x{row.d_sae}, weights in {row.path}"
    except (RegistryError, SAEFormatError, OSError) as err:
        raise fail(str(err)) from None
    except SQLAlchemyError as err:
        raise fail(f"database error: {str(getattr(err, 'orig', err)).strip()}") from None
    verb = "replaced" if replaced else "registered"
    console.print(f"{verb} {summary}" + (f" ({kept} ratings kept, index dropped)" if replaced else ""))


def export(
    name: Annotated[str, typer.Argument(help="A registered SAE.")],
    out: Annotated[Path, typer.Argument(help="Folder (or .npz file for gemmascope) to write.")],
    format: Annotated[SAEFormat, typer.Option(help="Output format.")] = "native",
) -> None:
    """Write a registered SAE as a native folder, a Gemma Scope params.npz or a SAELens folder."""
    from app.catalog.saes import RegistryError, export_sae
    from app.core.database import session_scope
    from trainer.formats.files import SAEFormatError

    engine = open_store()
    try:
        with session_scope(engine) as session:
            written = export_sae(session, name, out, format)
    except (RegistryError, SAEFormatError, OSError) as err:
        raise fail(str(err)) from None
    console.print(f"wrote {name} as {format} to {written}")


def register(cli: typer.Typer) -> None:
    """Add import and export to the root command."""
    cli.command("import")(import_)
    cli.command()(export)
