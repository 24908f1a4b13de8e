"""The /compare pages: every sweep, and one sweep's Pareto charts and table by architecture."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

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
    if doc is None:
        message = f"There is no sweep named {sweep!r}. All sweeps are on /compare."
        return error_page(request, 404, "No such sweep", message)
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for row in doc["points"]:
        by_arch.setdefault(row["architecture"], []).append(row)
    return render(request, "compare.html", {"sweep": doc, "charts": plots(doc), "by_arch": by_arch,
                                            "plot_labels": PLOTS})  # fmt: skip
