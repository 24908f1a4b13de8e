"""The job queue in the database: enqueue, claim, heartbeat, finish, requeue the dead.

Claiming is one atomic statement. On Postgres the candidate row is locked with
`FOR UPDATE SKIP LOCKED`, so several workers never take the same job and never wait on
each other; on SQLite (one writer at a time) a guarded UPDATE does the same. A job whose
worker stopped heart-beating for `stale_after` seconds goes back to the queue, and its
next run resumes from the checkpoint the last one left in its run folder.

A train job's name is taken while the job is queued or running, and once its SAE is registered:
`add_train_job` checks both and inserts under a lock on the name (a transaction-scoped advisory lock
on Postgres, the database's write lock on SQLite), so two requests for one name never both get in.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, and_, false, or_, select, text, update
from sqlalchemy.orm import Session

from app.core.database import session_scope
from app.core.tables import ACTIVE_JOB_STATUSES, JOB_KINDS, Job, SAERow, utcnow

MAX_ATTEMPTS = 3
MAX_METRIC_POINTS = 2000


class NameTaken(Exception):
    """A train job's name is registered or taken by a queued or running train job (HTTP 409)."""


def enqueue(engine: Engine, kind: str, params: dict[str, Any]) -> int:
    """Queue a job as given, unchecked (scripts and tests; the API uses add_job / add_train_job)."""
    with session_scope(engine) as session:
        return add_job(session, kind, params).id


def add_job(session: Session, kind: str, params: dict[str, Any]) -> Job:
    """Queue a job in the caller's transaction."""
    job = Job(kind=kind, params=params, status="queued", metrics=[], result={})
    session.add(job)
    session.flush()
    return job


def _lock_name(session: Session, name: str) -> None:
    """Hold a lock on a train job name until the caller's transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"jumpscope train name {name}".encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:  # SQLite: a write statement takes the database's one write lock now, not at the insert
        session.execute(update(Job).where(false()).values(status=Job.status))


def add_train_job(session: Session, params: dict[str, Any]) -> Job:
    """Queue a train job for params['name'] unless that name is taken (NameTaken); race-safe, see above."""
    name = str(params["name"])
    _lock_name(session, name)
    if session.scalar(select(SAERow.id).where(SAERow.name == name)) is not None:
        raise NameTaken(f"an SAE named {name!r} is already registered: choose another name")
    active = session.execute(
        select(Job.id, Job.status, Job.params).where(Job.kind == "train", Job.status.in_(ACTIVE_JOB_STATUSES))
    ).all()
    for job_id, status, other in active:
        if isinstance(other, dict) and other.get("name") == name:
            raise NameTaken(f"train job {job_id} ({status}) already trains an SAE named {name!r}: choose another name")
    return add_job(session, "train", params)


def requeue_stale(engine: Engine, stale_after: float) -> list[int]:
    """Running jobs without a heartbeat for stale_after seconds: back to the queue (or failed after MAX_ATTEMPTS)."""
    cutoff = utcnow() - timedelta(seconds=stale_after)
    with session_scope(engine) as session:
        stale = session.scalars(
            select(Job).where(Job.status == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
            .with_for_update(skip_locked=True)
        ).all()  # fmt: skip
        for job in stale:
            if job.attempts >= MAX_ATTEMPTS:
                job.status, job.error, job.finished_at = "failed", f"worker lost {job.attempts} times", utcnow()
            else:
                job.message = f"requeued: worker {job.worker} stopped responding"
                job.status, job.worker = "queued", None
        return [job.id for job in stale]


def claim(engine: Engine, worker: str, kinds: tuple[str, ...] = JOB_KINDS) -> Job | None:
    """Take the oldest queued job for this worker, or None."""
    with session_scope(engine) as session:
        candidate = select(Job.id).where(Job.status == "queued", Job.kind.in_(kinds)).order_by(Job.created_at, Job.id)
        if engine.dialect.name == "postgresql":
            job_id = session.scalar(candidate.limit(1).with_for_update(skip_locked=True))
            if job_id is None:
                return None
        else:
            job_id = session.scalar(candidate.limit(1))
            if job_id is None:
                return None
        now = utcnow()
        claimed = session.execute(
            update(Job)
            .where(and_(Job.id == job_id, Job.status == "queued"))
            .values(status="running", worker=worker, attempts=Job.attempts + 1, heartbeat_at=now,
                    started_at=now, error=None)
        )  # fmt: skip
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # another worker won the race (SQLite)
            return None
        return session.get(Job, job_id)


def heartbeat(
    engine: Engine, job_id: int, worker: str, *, progress: float | None = None, message: str | None = None,
    metrics: list[dict[str, Any]] | None = None,
) -> bool:  # fmt: skip
    """Record liveness (and progress); False if the job is no longer ours (requeued or cancelled)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
    if message is not None:
        values["message"] = message
    if metrics is not None:
        values["metrics"] = metrics[-MAX_METRIC_POINTS:]
    with session_scope(engine) as session:
        done = session.execute(
            update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running").values(**values)
        )
        return done.rowcount == 1  # type: ignore[attr-defined]


def finish(engine: Engine, job_id: int, worker: str, *, result: dict[str, Any] | None = None,
           error: str | None = None) -> None:  # fmt: skip
    values: dict[str, Any] = {"status": "failed" if error else "succeeded", "finished_at": utcnow(), "error": error}
    if result is not None:
        values["result"] = result
    if not error:
        values["progress"] = 1.0
    with session_scope(engine) as session:
        session.execute(update(Job).where(Job.id == job_id, Job.worker == worker).values(**values))


def release(engine: Engine, job_id: int, worker: str) -> None:
    """A worker shutting down gives its job back to the queue (it resumes from its checkpoint)."""
    with session_scope(engine) as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running")
            .values(status="queued", worker=None, message=f"released by {worker} on shutdown")
        )  # fmt: skip
