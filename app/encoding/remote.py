"""The encoder of a web server that holds no model: it asks a `jumpscope worker` over HTTP.

`RemoteEncoder` posts the SAE's name and the encode options to the worker's encode API
(app.encoding.worker_api), which looks the SAE up in its own store, and turns its replies back into
`TextEncoding`s and the errors of app.encoding.types. It sends the shared secret
(JUMPSCOPE_WORKER_TOKEN) as a bearer token when it has one. Torch-free.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import SecretStr

from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget, TextEncoding


class RemoteEncoder:
    """Encodes through a `jumpscope worker` (app.encoding.worker_api) at base_url, over HTTP.

    A 422 reply becomes EncodeError(detail). A 401 / 403 (the worker wants another token than this
    server's), a 404 (the worker's store does not hold the SAE: web server and worker use different
    databases), no connection, a timeout or any other reply become EncoderUnavailable naming the URL,
    never the token. `token`: the worker's shared secret (str or SecretStr; None sends none).
    `transport` lets tests talk to an in-process app (httpx.ASGITransport). One connection pool is
    kept per event loop.
    """

    def __init__(
        self, base_url: str, timeout: float = 60, *, token: str | SecretStr | None = None, transport: Any = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        self._headers = {"Authorization": f"Bearer {secret.strip()}"} if secret and secret.strip() else {}
        self._transport = transport
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(timeout=self.timeout, transport=self._transport, headers=self._headers)
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool (of the current event loop)."""
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None

    async def encode(
        self,
        target: SAETarget,
        texts: list[str],
        *,
        top_k: int | None = None,
        features: list[int] | None = None,
        include_bos: bool = True,
    ) -> list[TextEncoding]:
        """POST {base_url}/v1/encode: the SAE's name plus texts, top_k, features, include_bos.

        Only the name travels: the worker takes weights, model, layer and site from its own store."""
        body = {
            "sae": target.name,
            "texts": texts,
            "top_k": top_k,
            "features": features,
            "include_bos": include_bos,
        }
        return await self._post("/v1/encode", body, f"no SAE named {target.name!r}")

    async def encode_multi(
        self, targets: list[SAETarget], text: str, *, top_k: int | None = None, include_bos: bool = True
    ) -> list[TextEncoding]:
        """POST {base_url}/v1/encode/multi: the SAEs' names plus the text, top_k, include_bos.

        The worker runs one forward pass for all of them (LocalEncoder.encode_multi)."""
        body = {"saes": [t.name for t in targets], "text": text, "top_k": top_k, "include_bos": include_bos}
        names = ", ".join(repr(t.name) for t in targets)
        return await self._post("/v1/encode/multi", body, f"one of the SAEs {names}")

    async def _post(self, path: str, body: dict[str, Any], unknown: str) -> list[TextEncoding]:
        """POST body to the worker; its `results` as TextEncodings, or the errors of the class docstring.

        `unknown` names what a 404 means the worker's store lacks."""
        try:
            results = (await self._post_json(path, body, f"{unknown}: the web server and the worker must use "
                                             "the same database (DATABASE_URL)"))["results"]  # fmt: skip
            return [
                TextEncoding(
                    tokens=list(r["tokens"]),
                    token_ids=[int(i) for i in r["token_ids"]],
                    special=[bool(s) for s in r["special"]],
                    activations=[[(int(i), float(v)) for i, v in row] for row in r["activations"]],
                    dense=None if r.get("dense") is None else {int(k): list(v) for k, v in r["dense"].items()},
                )
                for r in results
            ]
        except (KeyError, TypeError) as err:
            raise EncoderUnavailable(f"encoder worker at {self.base_url} sent a malformed reply: {err}") from err

    async def _post_json(self, path: str, body: dict[str, Any], unknown: str) -> Any:
        """POST body to {base_url}{path}: the reply's JSON (parsed off the event loop: it may be megabytes),
        or EncodeError (422) / EncoderUnavailable (unreachable, refused, 404: the worker has `unknown`, other)."""
        import httpx

        try:
            reply = await self._http().post(f"{self.base_url}{path}", json=body)
        except httpx.HTTPError as err:
            raise EncoderUnavailable(
                f"encoder worker at {self.base_url} is unreachable: {type(err).__name__}: {err}"
            ) from err
        if reply.status_code == 422:
            raise EncodeError(_detail(reply))
        if reply.status_code in (401, 403):
            why = "this server sends no token" if not self._headers else "this server's token is not the worker's"
            raise EncoderUnavailable(
                f"encoder worker at {self.base_url} refused this server ({reply.status_code}): {why}; set the same "
                "JUMPSCOPE_WORKER_TOKEN for `jumpscope serve` and `jumpscope worker`"
            )
        if reply.status_code == 404:
            raise EncoderUnavailable(f"encoder worker at {self.base_url} has {unknown}")
        if reply.status_code != 200:
            raise EncoderUnavailable(
                f"encoder worker at {self.base_url} answered {reply.status_code} to POST {path}: {_detail(reply)}"
            )
        try:
            return await asyncio.to_thread(reply.json)
        except ValueError as err:
            raise EncoderUnavailable(f"encoder worker at {self.base_url} sent a malformed reply: {err}") from err

    async def health(self) -> str:
        """'ok' if GET {base_url}/healthz answers {"status": "ok"}, else 'unavailable'."""
        import httpx

        try:
            reply = await self._http().get(f"{self.base_url}/healthz")
            ok = reply.status_code == 200 and reply.json().get("status") == "ok"
        except (httpx.HTTPError, ValueError, AttributeError):
            return "unavailable"
        return "ok" if ok else "unavailable"

    async def post_json(self, path: str, body: dict[str, Any], *, sae: str) -> Any:
        """POST body to {base_url}{path} (another worker endpoint of SAE `sae`, e.g. steering): the reply's JSON,
        or the errors of the class docstring (422 -> EncodeError, anything else but 200 -> EncoderUnavailable)."""
        return await self._post_json(
            path, body, f"no SAE named {sae!r} or no POST {path} (an older worker): the web server and the worker "
            "must use the same database (DATABASE_URL) and version"
        )  # fmt: skip


def _detail(reply: Any) -> str:
    """The `detail` of a FastAPI error reply as one line (validation errors joined), else the body."""
    try:
        detail = reply.json().get("detail")
    except (ValueError, AttributeError):
        return reply.text[:300] or reply.reason_phrase
    if isinstance(detail, list):  # request validation: [{"loc": [...], "msg": ...}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)
