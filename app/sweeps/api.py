"""Sparsity sweeps (jumpscope sweep): results, CSV and the stored plots."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.catalog.saes import NotFound
from app.core.deps import SessionDep
from app.core.errors import INVALID, NOT_FOUND
from app.sweeps import results as sweep_results
from app.sweeps.schemas import SweepDetail, SweepSummary

router = APIRouter(prefix="/api/v1/sweeps", tags=["sweeps"], responses=INVALID)


def _doc(session: SessionDep, sweep: str) -> dict[str, object]:
    doc = sweep_results.sweep_doc(session, sweep)
    if doc is None:
        raise NotFound(f"no sweep named {sweep!r}")
    return doc


@router.get("", response_model=list[SweepSummary], summary="All sparsity sweeps, newest first")
def list_sweeps(session: SessionDep) -> list[SweepSummary]:
    return [SweepSummary.model_validate(row) for row in sweep_results.list_sweeps(session)]


@router.get("/{sweep}", response_model=SweepDetail, responses=NOT_FOUND, summary="A sweep: every SAE's metrics")
def get_sweep(sweep: str, session: SessionDep) -> SweepDetail:
    return SweepDetail.model_validate(_doc(session, sweep))


@router.get(
    "/{sweep}/results.csv", response_class=Response, summary="A sweep's results as CSV",
    responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}, "description": "One row per SAE"}},
)  # fmt: skip
def sweep_csv(sweep: str, session: SessionDep) -> Response:
    doc = _doc(session, sweep)
    headers = {"Content-Disposition": f'attachment; filename="{sweep}-results.csv"'}
    return Response(sweep_results.results_csv(doc["points"]), media_type="text/csv", headers=headers)  # type: ignore[arg-type]


@router.get(
    "/{sweep}/plots/{plot}.svg",
    responses={**NOT_FOUND, 200: {"content": {"image/svg+xml": {}}, "description": "The plot stored with the sweep"}},
    response_class=Response, summary="A sweep's plot (fvu or delta_lm_loss against L0) as SVG",
)  # fmt: skip
def sweep_plot(sweep: str, plot: str, session: SessionDep) -> Response:
    _doc(session, sweep)
    svg = sweep_results.stored_plot(session, sweep, plot)
    if svg is None:
        raise NotFound(f"sweep {sweep!r} has no plot {plot!r} (plots: {', '.join(sweep_results.PLOTS)})")
    return Response(svg, media_type="image/svg+xml")
