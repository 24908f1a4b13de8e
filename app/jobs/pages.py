"""The jobs pages: the latest jobs, and one job with its training curves (refreshing while it runs).

Like the API, a page shows a job's texts whole only to an admin (a request with an admin bearer token,
or any request while no token is configured); everyone else sees host paths as `<path>` (app.jobs.views).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app.core.tables import ACTIVE_JOB_STATUSES, Job
from app.jobs.views import job_fields, reader_is_admin
from app.web.params import page_session, parse_index
from app.web.rendering import error_page, render
from app.web.svg import line_chart_svg

CURVES = (("loss", "loss"), ("l0", "L0"), ("fvu", "FVU"))
"""The training curves of a job page: (metric key, label)."""

router = APIRouter(include_in_schema=False)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    with page_session(request) as session:
        admin = reader_is_admin(session, request.headers.get("authorization"))
        jobs = session.scalars(select(Job).order_by(Job.id.desc()).limit(100)).all()
        rows = [{"id": j.id, "kind": j.kind, "status": j.status, "progress": j.progress,
                 "message": job_fields(j, admin)["message"], "created_at": j.created_at,
                 "name": (j.params or {}).get("name") or (j.params or {}).get("sae")}
                for j in jobs]  # fmt: skip
    return render(request, "jobs.html", {"jobs": rows})


def _curve(metrics: list[Any], key: str) -> list[tuple[float, float]]:
    points = []
    for row in metrics:
        if not isinstance(row, dict):
            continue
        x, y = row.get("step"), row.get(key)
        if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(y, bool):
            points.append((float(x), float(y)))
    return points


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    number = parse_index(job_id)
    with page_session(request) as session:
        job = session.get(Job, number) if number is not None and number < 2**31 else None
        if job is None:
            return error_page(request, 404, "No such job", f"There is no job {job_id}.")
        metrics = list(job.metrics or [])
        admin = reader_is_admin(session, request.headers.get("authorization"))
        view = {"id": job.id, "kind": job.kind, "status": job.status, "progress": job.progress or 0.0,
                **job_fields(job, admin), "attempts": job.attempts, "worker": job.worker,
                "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
                "redacted": not admin}  # fmt: skip
    charts = [line_chart_svg(_curve(metrics, key), label) for key, label in CURVES]
    last = metrics[-1] if metrics and isinstance(metrics[-1], dict) else {}
    return render(request, "job.html", {"job": view, "charts": charts, "last": last, "points": len(metrics),
                                        "refresh": view["status"] in ACTIVE_JOB_STATUSES})  # fmt: skip
