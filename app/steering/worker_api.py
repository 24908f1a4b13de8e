"""Steering and ablation on the encoder worker: what `jumpscope worker` serves next to its encode API.

    POST /v1/steer    {"sae": NAME, ...SteerIn} -> SteerOut
    POST /v1/ablate   {"sae": NAME, "feature": INDEX, ...AblateIn} -> AblateOut

`add_worker_routes` adds them to the worker app that app.encoding.worker_api.create_worker_app
builds, under its rules: the same token (its middleware covers every route but /healthz), body
limit and one-line 422s; the SAE named by its registered name only (the same 404 text for every
name the worker's store lacks, weights outside the worker's data folder refused), error texts
without host paths. The work runs on the worker's LocalEncoder (its model cache and thread).
`app.encoding.remote.RemoteEncoder.post_json` is the client (app.steering.service).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException
from pydantic import Field

from app.core.redact import redact_paths
from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget
from app.encoding.worker_api import UNKNOWN_SAE, TargetLookup, inside
from app.steering import engine
from app.steering.schemas import AblateIn, AblateOut, SteerIn, SteerOut

if TYPE_CHECKING:
    from app.encoding.local import LocalEncoder

RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "no worker token"},
    403: {"description": "wrong worker token"},
    404: {"description": "no SAE of that name"},
    422: {"description": "bad input"},
    503: {"description": "SAE or model not loadable"},
}


class WorkerSteerIn(SteerIn):
    """A registered SAE's name plus the public steering request."""

    sae: str = Field(min_length=1, max_length=200)
    """The SAE's registered name (slug)."""


class WorkerAblateIn(AblateIn):
    """A registered SAE's name and a feature index plus the public ablation request."""

    sae: str = Field(min_length=1, max_length=200)
    """The SAE's registered name (slug)."""
    feature: int = Field(ge=0)
    """The feature to zero (below the SAE's d_sae, else 422)."""


def add_worker_routes(app: FastAPI, encoder: LocalEncoder, targets: TargetLookup, *, data_dir: Path) -> None:
    """Add POST /v1/steer and /v1/ablate to a worker app (create_worker_app's), served by `encoder`.

    targets: the registered SAEs by name (`StoreTargets(engine)`). data_dir: the only folder weights load from.
    """

    def resolve(name: str) -> SAETarget:
        target = targets(name)
        if target is None:
            raise HTTPException(status_code=404, detail=UNKNOWN_SAE)
        if not inside(target.path, data_dir):
            raise EncoderUnavailable(
                f"SAE {name!r} is stored outside this worker's data folder (JUMPSCOPE_DATA_DIR): it is not loaded"
            )
        return target

    def refused(err: EncodeError | EncoderUnavailable) -> HTTPException:
        return HTTPException(status_code=422 if isinstance(err, EncodeError) else 503, detail=redact_paths(str(err)))

    @app.post("/v1/steer", response_model=SteerOut, responses=RESPONSES)
    async def steer(body: WorkerSteerIn) -> SteerOut:
        try:
            target = await asyncio.to_thread(resolve, body.sae)
            return await encoder.run_loaded(
                target, lambda lm, sae: engine.steer(lm, sae, target, body, max_tokens=encoder.max_tokens)
            )
        except (EncodeError, EncoderUnavailable) as err:
            raise refused(err) from err

    @app.post("/v1/ablate", response_model=AblateOut, responses=RESPONSES)
    async def ablate(body: WorkerAblateIn) -> AblateOut:
        try:
            target = await asyncio.to_thread(resolve, body.sae)
            return await encoder.run_loaded(
                target,
                lambda lm, sae: engine.ablate(lm, sae, target, body.feature, body, max_tokens=encoder.max_tokens),
            )
        except (EncodeError, EncoderUnavailable) as err:
            raise refused(err) from err
