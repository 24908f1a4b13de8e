"""A sweep's results: the document (results.json), its CSV, its plots, and reading it from the store.

Pure data and SVG (no torch), shared by `jumpscope sweep`, the REST API and the /compare pages.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.schemas import csv_row
from app.core.tables import Sweep
from app.sweeps.chart import ChartPoint, pareto_svg
from trainer.sweep.pareto import METRICS, matched_l0

PLOTS: dict[str, str] = {"fvu": "FVU (fraction of variance unexplained)", "delta_lm_loss": "delta LM loss (nats)"}
"""The plots of a sweep: metric -> its axis label."""
MATCHED = (*PLOTS, "fvu_typical")
"""The metrics read at matched L0: the plotted ones and FVU without the massive-activation tokens."""

SAE_LINK = "/saes/{sae}"
"""Where a plot's point links: its SAE's page (names are URL-safe slugs)."""


def sae_link(row: dict[str, Any]) -> str | None:
    """A result row's SAE page, or None when its SAE is gone from the store."""
    return SAE_LINK.format(sae=row["sae"]) if row.get("sae") else None


CSV_FIELDS = ["sweep", "sae", "architecture", "knob", "value", *METRICS, "train_seconds"]


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(csv_row({k: row.get(k) for k in CSV_FIELDS}))  # names starting like formulas stay text
    return buffer.getvalue()


def chart_series(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, list[ChartPoint]]:
    """Points of one plot, by architecture, in the order architectures first appear."""
    series: dict[str, list[ChartPoint]] = {}
    for row in rows:
        value = row.get(metric)
        if value is None or row.get("l0") is None or not math.isfinite(float(value)):
            continue
        label = (f"{row['architecture']} {row['knob']}={row['value']:g}: L0 {row['l0']:.1f}, "
                 f"{metric} {float(value):.4g}")  # fmt: skip
        point = ChartPoint(float(row["l0"]), float(value), label, sae_link(row))
        series.setdefault(row["architecture"], []).append(point)
    return series


def plots(doc: dict[str, Any]) -> dict[str, Markup]:
    """Every plot of a results document as SVG, each point linking to its SAE's page."""
    title = f"{doc['name']}: {doc.get('model')} layer {doc.get('layer')} {doc.get('site')}"
    return {m: pareto_svg(chart_series(doc["points"], m), label, title) for m, label in PLOTS.items()}


def results_doc(
    *,
    name: str,
    model: str | None,
    layer: int | None,
    site: str | None,
    config: dict[str, Any],
    budget: dict[str, float],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """The results document of a sweep (results.json, the API): its settings, budget, one row per
    SAE and, per metric, every baseline read off at JumpReLU's L0s."""
    return {"name": name, "model": model, "layer": layer, "site": site, "config": config, "budget": budget,
            "points": rows, "matched_l0": {m: matched_l0(rows, m) for m in MATCHED}}  # fmt: skip


def sweep_doc(session: Session, name: str) -> dict[str, Any] | None:
    """A stored sweep as a results document (points carry their SAE's current name, or None)."""
    sweep = session.scalar(select(Sweep).where(Sweep.name == name))
    if sweep is None:
        return None
    rows = [
        {"sweep": sweep.name, "sae": p.sae.name if p.sae is not None else None, "architecture": p.architecture,
         "knob": p.knob, "value": p.value, **p.metrics, "train_seconds": p.train_seconds}
        for p in sweep.points
    ]  # fmt: skip
    doc = results_doc(name=sweep.name, model=sweep.model, layer=sweep.layer, site=sweep.site, config=sweep.config,
                      budget=sweep.budget, rows=rows)  # fmt: skip
    return doc | {"created_at": sweep.created_at.isoformat(), "updated_at": sweep.updated_at.isoformat()}


def list_sweeps(session: Session) -> list[dict[str, Any]]:
    """Every stored sweep, newest first: name, model, layer, site, points, architectures, budget."""
    sweeps = session.scalars(select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id.desc())).all()
    return [
        {"name": s.name, "model": s.model, "layer": s.layer, "site": s.site, "n_points": len(s.points),
         "architectures": list(dict.fromkeys(p.architecture for p in s.points)), "budget": s.budget,
         "created_at": s.created_at}
        for s in sweeps
    ]  # fmt: skip


def stored_plot(session: Session, name: str, plot: str) -> str | None:
    """The SVG text stored with a sweep, or None."""
    sweep = session.scalar(select(Sweep).where(Sweep.name == name))
    return None if sweep is None else sweep.plots.get(plot)
