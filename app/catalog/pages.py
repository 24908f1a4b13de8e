"""The home page: every SAE in the catalogue."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.catalog.queries import list_saes
from app.web.params import page_session
from app.web.rendering import render

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    with page_session(request) as session:
        saes = list_saes(session)
    return render(request, "index.html", {"saes": saes})
