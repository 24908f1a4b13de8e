"""Rating studies' results: every study, one study's numbers (the paper's Fig. 6), its ratings as CSV or JSON.

A study's name may hold any character but NUL (a `/` too: the routes take the rest of the path).
`/api/v1/studies/{study}.csv` and `.json` are the downloads, one row per rating, unblinded; the same
come from `/api/v1/studies/{study}?format=csv|json`. A study whose own name ends in `.csv` or `.json`
is reached by its name as long as no study is named without that ending.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from app.core.deps import SessionDep
from app.core.errors import INVALID, NOT_FOUND, NotFound
from app.core.schemas import csv_row
from app.studies.queries import list_studies, machine_verdicts, rating_rows, study_exists
from app.studies.results import study_results
from app.studies.schemas import StudyOut, StudyRatingOut, StudySummary

router = APIRouter(prefix="/api/v1/studies", tags=["studies"], responses=INVALID)

CSV_FIELDS = list(StudyRatingOut.model_fields)
"""The columns of the CSV download: the fields of the JSON download's rows."""
Download = Literal["csv", "json"]
FormatQuery = Annotated[
    Download | None, Query(description="csv or json: the study's ratings, one row each, as a download")
]
STUDY_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {**NOT_FOUND[404], "description": "No rating carries this study name"}
}
ROWS = {"description": "One row per rating, unblinded", "content": {"text/csv": {}, "application/json": {}}}
RESULTS = {"description": "The results; with format=csv or json the ratings, one row each",
           "content": {"text/csv": {}}}  # fmt: skip


def _unknown(study: str) -> NotFound:
    return NotFound(f"no rating carries the study name {study!r} (all studies: /api/v1/studies)")


def _download(session: SessionDep, study: str, kind: Download) -> Response:
    ratings = rating_rows(session, study)
    if not ratings:
        raise _unknown(study)
    machine = machine_verdicts(session, {(row.sae, row.feature_index) for row in ratings})
    rows = []
    for rating in ratings:
        verdict = machine.get((rating.sae, rating.feature_index))
        extra = {"explanation": verdict.explanation, **verdict.scores} if verdict is not None else {}
        rows.append(StudyRatingOut.model_validate({**asdict(rating), **extra}).model_dump(mode="json"))
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in study)[:100]
    headers = {"Content-Disposition": f'attachment; filename="{stem}-ratings.{kind}"'}
    if kind == "json":
        return Response(json.dumps(rows, ensure_ascii=False), media_type="application/json", headers=headers)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow(csv_row(row))  # text never runs as a spreadsheet formula
    return Response(buffer.getvalue(), media_type="text/csv", headers=headers)


def _results(session: SessionDep, study: str, format: Download | None) -> StudyOut | Response:
    if format is not None:
        return _download(session, study, format)
    results = study_results(session, study)
    if results is None:
        raise _unknown(study)
    return StudyOut.model_validate(results)


def _suffixed(session: SessionDep, study: str, kind: Download, format: Download | None) -> Response:
    """`{study}.csv` / `.json`: the download of `study`, or the study named with that ending when only it exists."""
    full = f"{study}.{kind}"
    if not study_exists(session, study) and study_exists(session, full):
        out = _results(session, full, format)
        return out if isinstance(out, Response) else JSONResponse(out.model_dump(mode="json"))
    return _download(session, study, kind)


@router.get("", response_model=list[StudySummary], summary="Every rating study with its counts, latest first")
def get_studies(session: SessionDep) -> list[StudySummary]:
    return [StudySummary.model_validate(study) for study in list_studies(session)]


@router.get(
    "/{study:path}.csv", response_model=None, response_class=Response, responses={**STUDY_NOT_FOUND, 200: ROWS},
    summary="A study's ratings as CSV, one row per rating",
)  # fmt: skip
def study_csv(study: str, session: SessionDep, format: FormatQuery = None) -> Response:
    return _suffixed(session, study, "csv", format)


@router.get(
    "/{study:path}.json", response_model=None, response_class=Response,
    responses={**STUDY_NOT_FOUND, 200: {**ROWS, "model": list[StudyRatingOut] | StudyOut}},
    summary="A study's ratings as JSON, one row per rating (a download)",
)  # fmt: skip
def study_json(study: str, session: SessionDep, format: FormatQuery = None) -> Response:
    return _suffixed(session, study, "json", format)


@router.get(
    "/{study:path}", response_model=None,
    responses={**STUDY_NOT_FOUND, 200: {"model": StudyOut | list[StudyRatingOut], **RESULTS}},
    summary="A study's results: yes / maybe / no per SAE and architecture with 95% Wilson intervals, agreement",
)  # fmt: skip
def get_study(study: str, session: SessionDep, format: FormatQuery = None) -> StudyOut | Response:
    """Counts and shares of yes / maybe / no per SAE and per architecture, each with a 95% Wilson interval;
    features and raters; Krippendorff's alpha (nominal and ordinal) where defined; the unblinded list.
    `format=csv|json` gives the ratings instead, one row each."""
    return _results(session, study, format)
