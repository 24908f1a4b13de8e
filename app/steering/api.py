"""POST /api/v1/saes/{sae}/steer and POST /api/v1/saes/{sae}/features/{index}/ablate.

The same token rule, rate limit (counted with encode's) and concurrency gate as encode; the work runs
where encoding runs (app.steering.service).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.auth.deps import EncodeClientDep
from app.core.errors import BUSY, INVALID, NOT_FOUND, UNAUTHORIZED, UNAVAILABLE
from app.steering import service
from app.steering.schemas import AblateIn, AblateOut, SteerIn, SteerOut

router = APIRouter(prefix="/api/v1/saes/{sae}", tags=["steering"], responses=INVALID)

ERRORS = {**NOT_FOUND, **UNAVAILABLE, **UNAUTHORIZED, **BUSY}


@router.post("/steer", response_model=SteerOut, responses=ERRORS, summary="Generate with and without interventions")
async def steer(sae: str, body: SteerIn, request: Request, _client: EncodeClientDep) -> SteerOut:
    """Continue a prompt twice in one batch, unsteered and with interventions on the SAE's features (add a
    multiple of a feature's decoder direction, or clamp its activation through the SAE's error term); an empty
    intervention list gives steered == baseline."""
    return await service.steer(request, sae, body)


@router.post(
    "/features/{index}/ablate", response_model=AblateOut, responses=ERRORS, summary="Zero a feature on a text"
)  # fmt: skip
async def ablate(sae: str, index: int, body: AblateIn, request: Request, _client: EncodeClientDep) -> AblateOut:
    """Per position of the text, the change in next-token log-probabilities when the feature is zeroed through the
    SAE's error term (nothing else moves), and the tokens it promotes and suppresses there and over the text."""
    return await service.ablate(request, sae, index, body)
