"""What a reader sees of a job: everything for admins, host paths redacted for everyone else.

A job's error (a traceback's last line: `DatasetError: no such file or folder: /srv/...`), message,
result (the run folder) and parameters (a local dataset) can name files of the worker's host.
Reading jobs is open, so a reader without an admin token sees those texts with every absolute path
replaced by `<path>` (app.core.redact); a request with an admin token sees them whole. While no
token is configured at all, everyone is admin (the laptop default of app.auth.tokens).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.tokens import hash_token, tokens_configured
from app.core.redact import redact_paths, redact_value
from app.core.tables import ApiToken, Job
from app.jobs.schemas import JobOut


def reader_is_admin(session: Session, authorization: str | None) -> bool:
    """Whether the reader sees jobs whole: no token configured, or `Authorization: Bearer <an admin token>`.

    A missing, malformed or unknown token reads as a plain reader (reading stays open)."""
    if not tokens_configured(session):
        return True
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    admin = session.scalar(select(ApiToken.admin).where(ApiToken.token_hash == hash_token(token.strip())))
    return bool(admin)


def job_fields(job: Job, admin: bool) -> dict[str, Any]:
    """The job's texts as this reader may see them: params, message, result and error."""
    fields: dict[str, Any] = {
        "params": dict(job.params or {}),
        "message": job.message or "",
        "result": dict(job.result or {}),
        "error": job.error,
    }
    if admin:
        return fields
    return {
        "params": redact_value(fields["params"]),
        "message": redact_paths(fields["message"]),
        "result": redact_value(fields["result"]),
        "error": None if job.error is None else redact_paths(job.error),
    }


def job_out(job: Job, admin: bool) -> JobOut:
    """The API's view of a job for this reader."""
    out = JobOut.model_validate(job, from_attributes=True)
    return out.model_copy(update=job_fields(job, admin))
