"""The pages of study results: `/studies` (every study) and `/studies/{study}` (its Fig. 6, tables and list)."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.studies.chart import shares_svg
from app.studies.queries import list_studies
from app.studies.results import study_results
from app.web.params import page_session
from app.web.rendering import error_page, render

router = APIRouter(include_in_schema=False)


@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request) -> HTMLResponse:
    with page_session(request) as session:
        studies = list_studies(session)
    return render(request, "studies.html", {"studies": studies})


@router.get("/studies/{study:path}", response_class=HTMLResponse)
def study_page(request: Request, study: str) -> HTMLResponse:
    with page_session(request) as session:
        results = study_results(session, study)
    if results is None:
        message = f"No rating carries the study name {study!r}. Every study is listed on /studies."
        return error_page(request, 404, "No such study", message)
    path = quote(study, safe="")
    saes = [group.name for group in results.by_sae]
    query = {"saes": ",".join(saes), "study": study, **({"blind": 1} if results.blinded else {})}
    return render(request, "study_results.html", {
        "results": results,
        "charts": {
            "architecture": shares_svg(results.by_architecture, "Answers per architecture"),
            "sae": shares_svg(results.by_sae, "Answers per SAE"),
        },
        "api": f"/api/v1/studies/{path}",
        "rate_url": f"/rate?{urlencode(query, safe=',')}",
    })  # fmt: skip
