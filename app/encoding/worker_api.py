"""The encoder worker's HTTP API: what `jumpscope worker` serves to a web server in another process.

    POST /v1/encode   {"sae": NAME, "texts": [...], "top_k", "features", "include_bos"}
                      -> {"results": [TextEncoding, ...]}; 404 {"detail": msg} for a name the worker's
                      store does not hold, 422 on bad input, 503 when the SAE or its model cannot be loaded
    POST /v1/encode/multi  {"saes": [NAME, ...], "text", "top_k", "include_bos"} -> {"results": [one per SAE]}:
                      one forward pass for several SAEs of one model; the same errors
    GET  /healthz     -> {"status": "ok"} (open: it says nothing but that the worker is up)

`app.encoding.remote.RemoteEncoder` is the client.

What a caller can make the worker do. The request names a registered SAE by name and gives the
encode options, nothing else: the weights folder, model, layer and site come from the worker's own
database (`StoreTargets`), and a weights folder outside the worker's data_dir is refused. A caller
therefore cannot point the worker at a file, and every name the store does not hold (a path
included) gets the same 404. Error texts carry no host paths (app.core.redact). The request is
bounded as the public encode API is (texts, characters, dense features).

Who may call. With `token` (JUMPSCOPE_WORKER_TOKEN) set, every endpoint but /healthz needs
`Authorization: Bearer <token>`: 401 without one, 403 for another (compared in constant time). The
token is what lets a caller spend the worker's CPU or GPU on encodings; without it, anyone who
reaches the port can, so serve on localhost or a private network only. The token travels in clear
text over http: between hosts, use a private network or a TLS proxy.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from app.core.body_limit import BodyLimit
from app.core.errors import validation_message
from app.core.redact import redact_paths
from app.core.schemas import StrictBody
from app.encoding.schemas import MAX_MULTI_SAES, MAX_TEXT_CHARS, MAX_TEXTS
from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget, TextEncoding

if TYPE_CHECKING:
    from app.encoding.local import LocalEncoder

MAX_DENSE_FEATURES = 256
"""Feature indices one request may ask for densely (the public encode API's limit)."""

UNKNOWN_SAE = "no SAE of that name is registered with this worker"
"""The one 404 text: it does not depend on what was asked, so it tells nothing about the file system."""

TARGET_TTL = 5.0
"""Seconds a name's encode target is reused without asking the database."""


class EncodeRequest(StrictBody):
    """A registered SAE's name plus the encode options, bounded as the public encode API is."""

    model_config = ConfigDict(extra="forbid")

    sae: str = Field(min_length=1, max_length=200, description="the SAE's registered name (slug)")
    texts: list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]] = Field(
        min_length=1, max_length=MAX_TEXTS
    )
    top_k: int | None = Field(default=None, ge=1, description="keep at most this many active features per token")
    features: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, max_length=MAX_DENSE_FEATURES, description="feature indices to return densely"
    )
    include_bos: bool = True


class MultiRequest(StrictBody):
    """Several registered SAEs of one model and one text: one forward pass for all (LocalEncoder.encode_multi)."""

    model_config = ConfigDict(extra="forbid")

    saes: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=MAX_MULTI_SAES, description="the SAEs' registered names (slugs)"
    )
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    top_k: int | None = Field(default=None, ge=1, description="keep at most this many active features per token")
    include_bos: bool = True


class TextEncodingOut(BaseModel):
    """One text's encoding (app.encoding.types.TextEncoding)."""

    tokens: list[str]
    token_ids: list[int]
    special: list[bool]
    activations: list[list[tuple[int, float]]] = Field(
        description="per token: active [feature index, value] pairs, highest first"
    )
    dense: dict[int, list[float]] | None = Field(default=None, description="feature index -> value per token")

    @classmethod
    def of(cls, enc: TextEncoding) -> TextEncodingOut:
        return cls(
            tokens=enc.tokens,
            token_ids=enc.token_ids,
            special=enc.special,
            activations=enc.activations,
            dense=enc.dense,
        )


class EncodeResponse(BaseModel):
    results: list[TextEncodingOut]


class Health(BaseModel):
    status: str


class TargetLookup(Protocol):
    """A registered SAE's encode target by name; None for a name it does not hold (blocking)."""

    def __call__(self, name: str) -> SAETarget | None: ...


class StoreTargets:
    """Encode targets from the worker's own store (the rows `jumpscope import` and train jobs write).

    A name's target is reused for `ttl` seconds. A row without model, layer and site is EncodeError.
    """

    def __init__(self, engine: Engine, ttl: float = TARGET_TTL) -> None:
        self.engine, self.ttl = engine, ttl
        self._cache: dict[str, tuple[float, SAETarget]] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> SAETarget | None:
        from sqlalchemy.exc import SQLAlchemyError

        from app.catalog.saes import NotFound, get_sae
        from app.core.database import session_scope

        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        try:
            with session_scope(self.engine) as session:
                row = get_sae(session, name)
                if row.model is None or row.layer is None or row.site is None:
                    raise EncodeError(f"SAE {name!r} names no model, layer and site, so it cannot encode text")
                target = SAETarget(name=row.name, path=row.path, model=row.model.name, layer=row.layer,
                                   site=row.site, prepend_bos=row.prepend_bos)  # fmt: skip
        except NotFound:
            return None
        except SQLAlchemyError as err:
            raise EncoderUnavailable(f"this worker cannot read its database ({type(err).__name__})") from err
        with self._lock:
            self._cache[name] = (time.monotonic(), target)
        return target


def inside(path: str | Path, folder: Path) -> bool:
    """Whether `path` lies in `folder` once both are resolved (symlinks followed, `..` collapsed)."""
    try:
        return Path(path).expanduser().resolve().is_relative_to(folder.expanduser().resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False


def _check_token(expected: bytes, authorization: str | None) -> Response | None:
    """None when `authorization` carries the token, else the 401 / 403 reply."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return JSONResponse(
            {"detail": "this worker needs 'Authorization: Bearer <JUMPSCOPE_WORKER_TOKEN>'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), expected):
        return JSONResponse({"detail": "wrong worker token"}, status_code=403)
    return None


async def _reply(results: list[TextEncoding]) -> Response:
    """The EncodeResponse of results, built and written off the event loop (replies can be large)."""

    def build() -> bytes:
        return EncodeResponse(results=[TextEncodingOut.of(enc) for enc in results]).model_dump_json().encode()

    return Response(await asyncio.to_thread(build), media_type="application/json")


def create_worker_app(
    encoder: LocalEncoder,
    targets: TargetLookup,
    *,
    data_dir: Path,
    token: str | None = None,
    max_request_bytes: int = 1_000_000,
) -> FastAPI:
    """A FastAPI app serving `encoder` (batching applies across concurrent HTTP requests).

    targets: the registered SAEs by name (`StoreTargets(engine)` in `jumpscope worker`). data_dir: the
    only folder SAE weights are loaded from. token: the shared secret every endpoint but /healthz needs
    (None: no authentication; empty: refused, ValueError). max_request_bytes: larger bodies get 413.
    """
    if token is not None and not token.strip():
        raise ValueError("the worker token is empty: set JUMPSCOPE_WORKER_TOKEN to a long random string, or unset it")
    app = FastAPI(title="jumpscope encoder worker", version="1")
    expected = token.strip().encode() if token is not None else None

    if expected is not None:

        @app.middleware("http")
        async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if request.url.path != "/healthz":
                refused = _check_token(expected, request.headers.get("authorization"))
                if refused is not None:
                    return refused
            return await call_next(request)

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)

    def resolve(name: str) -> SAETarget:
        target = targets(name)
        if target is None:
            raise HTTPException(status_code=404, detail=UNKNOWN_SAE)
        if not inside(target.path, data_dir):
            raise EncoderUnavailable(
                f"SAE {name!r} is stored outside this worker's data folder (JUMPSCOPE_DATA_DIR): it is not loaded; "
                "register it again with `jumpscope import` on a worker whose data folder holds it"
            )
        return target

    @app.post(
        "/v1/encode",
        response_model=EncodeResponse,
        responses={
            401: {"description": "no worker token"},
            403: {"description": "wrong worker token"},
            404: {"description": "no SAE of that name"},
            422: {"description": "bad input"},
            503: {"description": "SAE or model not loadable"},
        },
    )
    async def encode(request: EncodeRequest) -> Response:
        try:
            target = await asyncio.to_thread(resolve, request.sae)
            results = await encoder.encode(
                target,
                request.texts,
                top_k=request.top_k,
                features=request.features,
                include_bos=request.include_bos,
            )
        except EncodeError as err:
            raise HTTPException(status_code=422, detail=redact_paths(str(err))) from err
        except EncoderUnavailable as err:
            raise HTTPException(status_code=503, detail=redact_paths(str(err))) from err

        return await _reply(results)

    @app.post(
        "/v1/encode/multi",
        response_model=EncodeResponse,
        responses={
            401: {"description": "no worker token"},
            403: {"description": "wrong worker token"},
            404: {"description": "no SAE of one of those names"},
            422: {"description": "bad input (SAEs of different models included)"},
            503: {"description": "an SAE or the model not loadable"},
        },
    )
    async def encode_multi(request: MultiRequest) -> Response:
        try:
            found = [await asyncio.to_thread(resolve, name) for name in request.saes]
            results = await encoder.encode_multi(
                found, request.text, top_k=request.top_k, include_bos=request.include_bos
            )
        except EncodeError as err:
            raise HTTPException(status_code=422, detail=redact_paths(str(err))) from err
        except EncoderUnavailable as err:
            raise HTTPException(status_code=503, detail=redact_paths(str(err))) from err
        return await _reply(results)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status=await encoder.health())

    app.add_middleware(BodyLimit, limit=max_request_bytes)
    return app
