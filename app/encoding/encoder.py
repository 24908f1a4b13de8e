"""Which encoder a process uses: `make_encoder` (what the web server and `jumpscope worker` call).

The encoder behind `POST /api/v1/saes/{sae}/encode` is either a `RemoteEncoder`
(app.encoding.remote), which asks a `jumpscope worker` over HTTP, or a `LocalEncoder`
(app.encoding.local), which loads models and SAEs in this process. local.py is imported only
when a LocalEncoder is made, so a web server that encodes through a worker never imports torch.
The types they share are in app.encoding.types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from app.encoding.remote import RemoteEncoder

if TYPE_CHECKING:
    from app.encoding.local import LocalEncoder


def make_encoder(
    worker_url: str | None, *, worker_token: str | SecretStr | None = None, **local_kwargs: Any
) -> LocalEncoder | RemoteEncoder:
    """A RemoteEncoder for worker_url (sending worker_token) if given, else a LocalEncoder(**local_kwargs)."""
    if worker_url:
        return RemoteEncoder(worker_url, token=worker_token)
    from app.encoding.local import LocalEncoder

    return LocalEncoder(**local_kwargs)
