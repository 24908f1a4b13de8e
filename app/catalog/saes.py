"""Registering SAEs in the store (`jumpscope import`) and writing them out (`jumpscope export`).

Imported weights are converted once to the native format and kept under
`data_dir/saes/NAME`; the database row holds that location and the SAE's metadata.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.core import errors
from app.core.tables import IndexRun, Model, Rating, SAERow
from trainer.formats import FORMATS

if TYPE_CHECKING:
    from trainer.formats.native import LoadedSAE, SAEMetadata

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


class RegistryError(errors.InvalidInput):
    """A request the store cannot honour, with a one-line message saying why and what to do."""


class NotFound(errors.NotFound, RegistryError):
    """An unknown SAE (or model) name."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise RegistryError(
            f"invalid SAE name {name!r}: use 1-100 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. gemma3-270m-l9-resid-4k)"
        )
    return name


def width_label(d_sae: int) -> str:
    return f"{d_sae // 1024}k" if d_sae % 1024 == 0 else str(d_sae)


def default_name(meta: SAEMetadata, architecture: str, d_sae: int) -> str:
    """A slug like gemma3-270m-l9-resid-4k (architecture appended unless JumpReLU)."""
    model = Path(meta.model).name if meta.model else "sae"
    parts = [model]
    if meta.layer is not None:
        parts.append(f"l{meta.layer}")
    if meta.site:
        parts.append(meta.site)
    parts.append(width_label(d_sae))
    if architecture != "jumprelu":
        parts.append(architecture)
    slug = re.sub(r"[^a-z0-9._-]+", "-", "-".join(parts).lower()).strip("-._")
    return slug[:100] or "sae"


def get_sae(session: Session, name: str) -> SAERow:
    sae = session.scalar(select(SAERow).where(SAERow.name == name)) if NAME_PATTERN.match(name) else None
    if sae is None:
        known = session.scalars(select(SAERow.name).order_by(SAERow.name).limit(20)).all()
        listing = ", ".join(known) if known else "none yet; register one with `jumpscope import`"
        raise NotFound(f"no SAE named {name!r} (known: {listing})")
    return sae


def get_or_create_model(session: Session, name: str, **fields: Any) -> Model:
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        model = Model(name=name, **fields)
        session.add(model)
        session.flush()
    else:
        for key, value in fields.items():
            if value is not None and getattr(model, key) is None:
                setattr(model, key, value)
    return model


def _apply(row: SAERow, loaded: LoadedSAE, path: Path, model: Model | None, cfg: dict[str, Any]) -> None:
    meta = loaded.meta
    row.model = model
    row.layer = meta.layer
    row.site = meta.site
    row.architecture = loaded.sae.cfg.architecture
    row.d_in = loaded.sae.cfg.d_in
    row.d_sae = loaded.sae.cfg.d_sae
    row.path = str(path)
    row.dtype = str(cfg.get("dtype", "float32"))
    row.normalization_scale = float(meta.normalization_scale)
    row.context_size = meta.context_size
    row.prepend_bos = bool(meta.prepend_bos)
    row.dataset = meta.dataset
    row.tokens_trained = int(meta.tokens_trained or 0)
    row.config = cfg


def import_sae(
    session: Session,
    source: Path,
    *,
    data_dir: Path,
    format: str = "auto",
    name: str | None = None,
    model: str | None = None,
    layer: int | None = None,
    site: str | None = None,
    replace: bool = False,
    metrics: dict[str, Any] | None = None,
) -> tuple[SAERow, bool]:
    """Register the SAE at `source`; returns (row, replaced). The caller commits.

    `model`/`layer`/`site` fill in what the file does not say (and override it when given).
    Re-importing an existing name needs `replace=True`: the weights and metadata are replaced,
    the old index is dropped (it described other weights) and ratings are kept.
    """
    from trainer.formats import load_sae
    from trainer.formats.files import NATIVE_CFG
    from trainer.formats.native import read_native_cfg, save_native
    from trainer.lm.site_names import SITES

    if format not in ("auto", *FORMATS):
        raise RegistryError(f"unknown format {format!r} (allowed: auto, {', '.join(FORMATS)})")
    if site is not None and site not in SITES:
        raise RegistryError(f"unknown site {site!r} (allowed: {', '.join(SITES)})")
    if layer is not None and layer < 0:
        raise RegistryError(f"--layer must be >= 0, got {layer}")
    loaded = load_sae(source, format)  # type: ignore[arg-type]
    overrides: dict[str, Any] = {
        k: v for k, v in {"model": model, "layer": layer, "site": site}.items() if v is not None
    }
    meta = dc_replace(loaded.meta, **overrides)
    loaded = loaded._replace(meta=meta)
    arch, d_sae = loaded.sae.cfg.architecture, loaded.sae.cfg.d_sae
    name = check_name(name) if name is not None else default_name(meta, arch, d_sae)
    existing = session.scalar(select(SAERow).where(SAERow.name == name))
    if existing is not None and not replace:
        raise RegistryError(f"an SAE named {name!r} is already registered: pass --replace to overwrite it")
    target = (data_dir / "saes" / name).resolve()
    staging = target.with_name(f".{name}.importing")
    shutil.rmtree(staging, ignore_errors=True)
    save_native(staging, loaded.sae, meta)
    cfg = read_native_cfg(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    assert (target / NATIVE_CFG).exists()
    model_row = get_or_create_model(session, meta.model) if meta.model else None
    row = existing or SAERow(name=name)
    if existing is not None:
        session.execute(update(SAERow).where(SAERow.id == existing.id).values(index_run_id=None, indexed_tokens=0))
        session.execute(delete(IndexRun).where(IndexRun.sae_id == existing.id))
        session.refresh(existing)
    _apply(row, loaded, target, model_row, cfg)
    row.metrics = dict(metrics or (existing.metrics if existing is not None else {}) or {})
    session.add(row)
    session.flush()
    return row, existing is not None


def ratings_count(session: Session, sae: SAERow) -> int:
    from sqlalchemy import func

    return session.scalar(select(func.count()).select_from(Rating).where(Rating.sae_id == sae.id)) or 0


def load_registered(sae: SAERow, device: str = "cpu") -> LoadedSAE:
    """The SAE's weights from its native folder."""
    from trainer.formats.files import SAEFormatError
    from trainer.formats.native import load_native

    try:
        return load_native(Path(sae.path), device)
    except (SAEFormatError, OSError) as err:
        raise RegistryError(f"SAE {sae.name!r}: its weights at {sae.path} cannot be read ({err})") from None


def export_sae(session: Session, name: str, out: Path, format: str = "native") -> Path:
    """Write a registered SAE in one of the three formats; returns what was written."""
    from trainer.formats import save_sae

    if format not in FORMATS:
        raise RegistryError(f"unknown format {format!r} (allowed: {', '.join(FORMATS)})")
    loaded = load_registered(get_sae(session, name))
    return save_sae(out, loaded.sae, loaded.meta, format)  # type: ignore[arg-type]
