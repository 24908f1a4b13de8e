"""The SAEs: list and detail."""

from __future__ import annotations

from fastapi import APIRouter

from app.catalog import queries
from app.catalog.schemas import SAEDetail, SAESummary
from app.core.deps import SessionDep
from app.core.errors import INVALID, NOT_FOUND

router = APIRouter(prefix="/api/v1/saes", tags=["saes"], responses=INVALID)


@router.get("", response_model=list[SAESummary], summary="All registered SAEs")
def list_saes(session: SessionDep) -> list[SAESummary]:
    return queries.list_saes(session)


@router.get("/{sae}", response_model=SAEDetail, responses=NOT_FOUND, summary="One SAE with its eval metrics")
def get_sae(sae: str, session: SessionDep) -> SAEDetail:
    return queries.sae_detail(session, sae)
