"""Jobs: queue training and indexing for `jumpscope worker`, and follow them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import ValidationError
from sqlalchemy import select

from app.api_models import IndexJobParams, JobCreated, JobIn, JobOut, TrainJobParams
from app.deps import AdminDep, SessionDep
from app.registry import NotFound, RegistryError, get_sae
from app.routers.errors import NOT_FOUND, UNAUTHORIZED
from app.schema import Job

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


def job_out(job: Job) -> JobOut:
    return JobOut.model_validate(job, from_attributes=True)


@router.post("", status_code=202, response_model=JobCreated, responses=UNAUTHORIZED, summary="Queue a job")
def create_job(body: JobIn, session: SessionDep, caller: AdminDep) -> JobCreated:
    model = TrainJobParams if body.kind == "train" else IndexJobParams
    try:
        params = model.model_validate(body.params)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in err.errors())
        raise RegistryError(f"invalid {body.kind} params: {problems}") from None
    if isinstance(params, IndexJobParams):
        try:
            get_sae(session, params.sae)
        except NotFound as err:
            raise RegistryError(str(err)) from None
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
