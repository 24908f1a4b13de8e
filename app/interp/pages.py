"""The /saes/{sae}/explanations page: an SAE's score distributions with its random baseline overlaid (the
paper's Fig. 7) and its explanations as a searchable table sortable by score. No JavaScript needed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.catalog.saes import NotFound, get_sae
from app.core.tables import SCORE_KINDS
from app.interp.chart import distribution_svg
from app.interp.queries import ExplanationSort, SortOrder, StatusFilter, explanation_summary, list_explanations
from app.interp.store import baseline_info
from app.web.params import page_session
from app.web.rendering import error_page, render

PAGE_SIZES = (25, 50, 100, 200)
SORTS: tuple[str, ...] = get_args(ExplanationSort)
ORDERS: tuple[str, ...] = get_args(SortOrder)
STATUSES: tuple[str, ...] = get_args(StatusFilter)

router = APIRouter(include_in_schema=False)


@dataclass
class ListQuery:
    """The explanation table's search, sort and page, parsed leniently from a GET form (bad values: defaults)."""

    q: str = ""
    sort: str = "feature"
    order: str = "asc"
    status: str = "ok"
    limit: int = 50
    offset: int = 0

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ListQuery:
        """The table's settings from a query string; a value out of bounds becomes its default."""
        t = cls()
        t.q = params.get("q", "").replace("\x00", "").strip()[:200]
        sort = params.get("sort", "feature")
        t.sort = sort if sort in SORTS else "feature"
        default_order = "asc" if t.sort in ("feature", "created_at") else "desc"
        t.order = params["order"] if params.get("order") in ORDERS else default_order
        t.status = params["status"] if params.get("status") in STATUSES else "ok"
        limit = params.get("limit", "")
        t.limit = int(limit) if limit.isdigit() and int(limit) in PAGE_SIZES else 50
        offset = params.get("offset", "")
        t.offset = min(int(offset), 100_000_000) if offset.isascii() and offset.isdigit() and len(offset) < 12 else 0
        return t

    def url(self, name: str, **changes: Any) -> str:
        """This table's URL with some settings changed (defaults left out)."""
        values = {"q": self.q, "sort": self.sort, "order": self.order, "status": self.status, "limit": self.limit,
                  "offset": self.offset, **changes}  # fmt: skip
        default_order = "asc" if values["sort"] in ("feature", "created_at") else "desc"
        defaults = {"sort": "feature", "order": default_order, "status": "ok", "limit": 50, "offset": 0}
        kept = {k: v for k, v in values.items() if v not in (None, "") and defaults.get(k) != v}
        return f"/saes/{name}/explanations" + (f"?{urlencode(kept)}" if kept else "")

    def sort_url(self, name: str, column: str) -> str:
        """Sort by `column`; a second click flips the order."""
        if column == self.sort:
            return self.url(name, order="desc" if self.order == "asc" else "asc", offset=0)
        return self.url(name, sort=column, order="asc" if column in ("feature", "created_at") else "desc", offset=0)


@router.get("/saes/{sae}/explanations", response_class=HTMLResponse)
def explanations_page(request: Request, sae: str) -> HTMLResponse:
    """The SAE's score distributions beside its random baseline's, and its explanations (404 for an unknown SAE)."""
    table = ListQuery.parse(request.query_params)
    try:
        with page_session(request) as session:
            row = get_sae(session, sae)
            baseline_of = (baseline_info(row) or {}).get("of")
            summary = explanation_summary(session, sae)
            items = list_explanations(
                session, sae, q=table.q or None, sort=table.sort, order=table.order,  # type: ignore[arg-type]
                status=table.status, limit=table.limit, offset=table.offset,  # type: ignore[arg-type]
            )  # fmt: skip
    except NotFound as e:
        return error_page(request, 404, "No such SAE", str(e))
    base = summary.baseline
    charts = {
        kind: distribution_svg(kind, sae, summary.scores[kind], (base.sae, base.scores[kind]) if base else None)
        for kind in SCORE_KINDS
    }
    return render(request, "explanations.html", {
        "name": sae, "summary": summary, "baseline_of": baseline_of, "charts": charts, "items": items,
        "table": table, "page_sizes": PAGE_SIZES, "score_kinds": SCORE_KINDS,
    })  # fmt: skip
