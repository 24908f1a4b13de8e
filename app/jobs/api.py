"""Jobs: queue training and indexing for `jumpscope worker`, and follow them.

Queueing needs an admin token (once tokens exist) and is checked before anything is stored
(app.jobs.checks: local data only inside JUMPSCOPE_DATASETS_DIR, tokens and memory within the job
bounds: 422; app.jobs.queue: a train job's name free: 409). Reading is open; readers without an
admin token see jobs with host paths redacted (app.jobs.views).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from app.auth.deps import BEARER, AdminDep
from app.catalog.saes import NotFound, get_sae
from app.core.deps import SessionDep
from app.core.errors import INVALID, NOT_FOUND, UNAUTHORIZED, ErrorOut
from app.core.settings import Settings
from app.core.tables import Job
from app.jobs import checks, queue
from app.jobs.schemas import ExplainJobParams, IndexJobParams, JobCreated, JobIn, JobOut
from app.jobs.views import job_out, reader_is_admin

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], responses=INVALID)

CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "The SAE name is registered or taken by a queued or running job"}
}


@router.post(
    "", status_code=202, response_model=JobCreated, responses={**UNAUTHORIZED, **NOT_FOUND, **CONFLICT},
    summary="Queue a training, indexing or explain job",
)  # fmt: skip
def create_job(body: JobIn, session: SessionDep, caller: AdminDep, request: Request) -> JobCreated | JSONResponse:
    settings: Settings = request.app.state.settings
    params = body.params
    if isinstance(params, IndexJobParams):
        sae = get_sae(session, params.sae)  # 404 for an unknown SAE
        checks.check_index_queued(dataset=params.dataset, tokens=params.tokens, top_k=params.top_k,
                                  window=params.window, d_in=sae.d_in, d_sae=sae.d_sae, settings=settings)  # fmt: skip
        job = queue.add_job(session, "index", params.model_dump())
    elif isinstance(params, ExplainJobParams):
        sae = get_sae(session, params.sae)  # 404 for an unknown SAE
        checks.check_explain_queued(sae=sae, features=params.features, llm=params.llm, baseline=params.baseline,
                                    settings=settings)  # fmt: skip
        job = queue.add_job(session, "explain", params.model_dump())
    else:
        checks.check_train_queued(dataset=params.dataset, activations=params.activations, model=params.model,
                                  tokens=params.tokens, index_tokens=params.index_tokens, width=params.width,
                                  batch_size=params.batch_size, settings=settings)  # fmt: skip
        try:
            job = queue.add_train_job(session, params.model_dump())
        except queue.NameTaken as err:
            return JSONResponse({"detail": str(err)}, status_code=409)
    return JobCreated(id=job.id, status=job.status)


@router.get(
    "", response_model=list[JobOut],
    summary="Recent jobs, newest first (host paths redacted without an admin token)",
)  # fmt: skip
def list_jobs(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    authorization: Annotated[str | None, BEARER] = None,
) -> list[JobOut]:
    admin = reader_is_admin(session, authorization)
    return [job_out(j, admin) for j in session.scalars(select(Job).order_by(Job.id.desc()).limit(limit))]


@router.get(
    "/{job_id}", response_model=JobOut, responses=NOT_FOUND,
    summary="A job's status, progress and metrics (host paths redacted without an admin token)",
)  # fmt: skip
def get_job(job_id: int, session: SessionDep, authorization: Annotated[str | None, BEARER] = None) -> JobOut:
    job = session.get(Job, job_id) if -(2**31) <= job_id < 2**31 else None
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job_out(job, reader_is_admin(session, authorization))
