"""Jobs: queue training and indexing for `jumpscope worker`, and follow them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy import select

from app.auth.deps import AdminDep
from app.catalog.saes import NotFound, get_sae
from app.core.deps import SessionDep
from app.core.errors import INVALID, NOT_FOUND, UNAUTHORIZED, ErrorOut
from app.core.tables import Job, SAERow
from app.jobs.schemas import IndexJobParams, JobCreated, JobIn, JobOut

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], responses=INVALID)


def job_out(job: Job) -> JobOut:
    return JobOut.model_validate(job, from_attributes=True)


@router.post(
    "", status_code=202, response_model=JobCreated,
    responses={**UNAUTHORIZED, **NOT_FOUND, 409: {"model": ErrorOut, "description": "The SAE name is taken"}},
    summary="Queue a training or indexing job",
)  # fmt: skip
def create_job(body: JobIn, session: SessionDep, caller: AdminDep) -> JobCreated | JSONResponse:
    params = body.params
    if isinstance(params, IndexJobParams):
        get_sae(session, params.sae)  # 404 for an unknown SAE
    elif session.scalar(select(SAERow.id).where(SAERow.name == params.name)) is not None:
        detail = f"an SAE named {params.name!r} is already registered: choose another name"
        return JSONResponse({"detail": detail}, status_code=409)
    job = Job(kind=body.kind, params=params.model_dump(), status="queued", metrics=[], result={})
    session.add(job)
    session.flush()
    return JobCreated(id=job.id, status=job.status)


@router.get("", response_model=list[JobOut], summary="Recent jobs, newest first")
def list_jobs(session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[JobOut]:
    return [job_out(j) for j in session.scalars(select(Job).order_by(Job.id.desc()).limit(limit))]


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND, summary="A job's status, progress and metrics")
def get_job(job_id: int, session: SessionDep) -> JobOut:
    job = session.get(Job, job_id) if -(2**31) <= job_id < 2**31 else None
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job_out(job)
