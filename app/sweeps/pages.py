"""The /compare pages: every sweep, and one sweep's Pareto charts and table by architecture."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from app.core.tables import SCORE_KINDS
from app.interp.chart import Group, intervals_svg
from app.interp.queries import sweep_scores
from app.interp.schemas import SweepScores
from app.sweeps.chart import style
from app.sweeps.results import PLOTS, list_sweeps, plots, sweep_doc
from app.web.params import page_session
from app.web.rendering import error_page, render

router = APIRouter(include_in_schema=False)


@router.get("/compare", response_class=HTMLResponse)
def compare_list_page(request: Request) -> HTMLResponse:
    with page_session(request) as session:
        sweeps = list_sweeps(session)
    return render(request, "compare_list.html", {"sweeps": sweeps})


@router.get("/compare/{sweep}", response_class=HTMLResponse)
def compare_page(request: Request, sweep: str) -> HTMLResponse:
    with page_session(request) as session:
        doc = sweep_doc(session, sweep)
        scores = sweep_scores(session, sweep) if doc is not None else None
    if doc is None:
        message = f"There is no sweep named {sweep!r}. All sweeps are on /compare."
        return error_page(request, 404, "No such sweep", message)
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for row in doc["points"]:
        by_arch.setdefault(row["architecture"], []).append(row)
    return render(request, "compare.html", {"sweep": doc, "charts": plots(doc), "by_arch": by_arch,
                                            "plot_labels": PLOTS, "scores": scores,
                                            "score_charts": score_charts(scores)})  # fmt: skip


BASELINE_COLOUR = "#888888"
"""The random baselines' points on the score charts (light grey: no architecture, registered or not, uses it)."""


def score_charts(scores: SweepScores | None) -> dict[str, Markup]:
    """Per score kind, the mean with its 95% interval per architecture (and for the random baselines)."""
    if scores is None or not scores.groups:
        return {}
    return {
        kind: intervals_svg(kind, [
            Group(g.name, BASELINE_COLOUR if g.kind == "baseline" else style(g.name)[0], g.scores[kind])
            for g in scores.groups
        ], f"{kind} score per architecture")
        for kind in SCORE_KINDS
    }  # fmt: skip
