"""Which model, layer, site and weights an SAE encodes with, looked up by name (briefly cached per app)."""

from __future__ import annotations

import time

from fastapi import Request

from app.catalog.saes import RegistryError, get_sae
from app.encoding.types import SAETarget

TARGET_TTL = 5.0
"""Seconds an SAE's encode target (model, layer, site, weights path) is reused without asking the database."""


def cached_target(request: Request, sae: str) -> SAETarget | None:
    """The SAE's encode target if the app's short-lived cache holds a fresh one (never blocks)."""
    hit: tuple[float, SAETarget] | None = request.app.state.encode_targets.get(sae)
    return hit[1] if hit is not None and time.monotonic() - hit[0] < TARGET_TTL else None


def encode_target(request: Request, sae: str) -> SAETarget:
    """The SAE's encode target, from the app's short-lived cache or the database (blocking)."""
    target = cached_target(request, sae)
    if target is None:
        target = _lookup(request, sae)
        request.app.state.encode_targets[sae] = (time.monotonic(), target)
    return target


def _lookup(request: Request, sae: str) -> SAETarget:
    with request.app.state.sessions() as session:
        row = get_sae(session, sae)
        if row.model is None or row.layer is None or row.site is None:
            raise RegistryError(f"SAE {sae!r} names no model, layer and site, so it cannot encode text")
        return SAETarget(name=row.name, path=row.path, model=row.model.name, layer=row.layer, site=row.site,
                         prepend_bos=row.prepend_bos)  # fmt: skip
