"""One steer or ablate request's work, for the REST API (and the pages built on it).

Look the SAE up (its encode target, briefly cached, and its width), check the feature indices against
the width, take a turn at the encode gate (app.encoding.gate: steering and ablation share encode's
limits), then run the work where encoding runs: in this process on the encoder's loaded model and
SAE (LocalEncoder.run_loaded, in its model thread), or on the `jumpscope worker` of a RemoteEncoder
(app.steering.worker_api). Torch is imported only on the in-process path.

Errors: NotFound (404) for an unknown SAE or an ablated feature index outside the SAE; EncodeError
(422) for bad input; EncoderUnavailable (503); TooManyRequests (429) from the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from app.catalog.saes import get_sae
from app.core.errors import NotFound
from app.encoding.gate import EncodeGate
from app.encoding.remote import RemoteEncoder
from app.encoding.targets import encode_target
from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget
from app.steering.schemas import AblateIn, AblateOut, SteerIn, SteerOut

Out = TypeVar("Out", bound=BaseModel)


class UnknownFeature(NotFound):
    """A feature index the SAE does not have (in a URL path): HTTP 404."""


def _lookup(request: Request, sae: str) -> tuple[SAETarget, int]:
    """The SAE's encode target and its d_sae (blocking: database queries)."""
    target = encode_target(request, sae)
    with request.app.state.sessions() as session:
        return target, int(get_sae(session, sae).d_sae)


async def _run(request: Request, target: SAETarget, path: str, body: dict[str, Any], out: type[Out],
               local: Callable[[Any, Any, int], Out]) -> Out:  # fmt: skip
    """After a turn at the gate: POST body to the worker's `path`, or local(model, sae, max_tokens) in this process."""
    gate: EncodeGate = request.app.state.encode_gate
    encoder = request.app.state.encoder
    async with gate.turn():
        if isinstance(encoder, RemoteEncoder):
            data = await encoder.post_json(path, {"sae": target.name, **body}, sae=target.name)
            try:
                return out.model_validate(data)
            except ValidationError as err:
                raise EncoderUnavailable(
                    f"encoder worker at {encoder.base_url} sent a malformed reply to POST {path}: "
                    f"{err.error_count()} errors"
                ) from err
        run_loaded = getattr(encoder, "run_loaded", None)
        if run_loaded is None:
            raise EncoderUnavailable("this server's encoder cannot run steering or ablation")
        max_tokens = int(encoder.max_tokens)
        result: Out = await run_loaded(target, lambda lm, sae: local(lm, sae, max_tokens))
        return result


async def steer(request: Request, sae: str, body: SteerIn) -> SteerOut:
    """The steered and baseline continuations of body.prompt with the SAE named `sae` (errors: module docstring)."""
    target, d_sae = await run_in_threadpool(_lookup, request, sae)
    for i, item in enumerate(body.interventions):
        if item.feature >= d_sae:
            raise EncodeError(
                f"interventions.{i}.feature: {item.feature} is out of range: SAE {sae!r} has {d_sae} features "
                f"(0 to {d_sae - 1})"
            )

    def local(lm: Any, sae_module: Any, max_tokens: int) -> SteerOut:
        from app.steering import engine  # torch: only where the model runs

        return engine.steer(lm, sae_module, target, body, max_tokens=max_tokens)

    return await _run(request, target, "/v1/steer", body.model_dump(), SteerOut, local)


async def ablate(request: Request, sae: str, feature: int, body: AblateIn) -> AblateOut:
    """The change in next-token log-probabilities over body.text when `feature` is zeroed (module docstring)."""
    target, d_sae = await run_in_threadpool(_lookup, request, sae)
    if not 0 <= feature < d_sae:
        raise UnknownFeature(f"no feature {feature} in SAE {sae!r}: it has {d_sae} features (0 to {d_sae - 1})")

    def local(lm: Any, sae_module: Any, max_tokens: int) -> AblateOut:
        from app.steering import engine  # torch: only where the model runs

        return engine.ablate(lm, sae_module, target, feature, body, max_tokens=max_tokens)

    return await _run(request, target, "/v1/ablate", {"feature": feature, **body.model_dump()}, AblateOut, local)
