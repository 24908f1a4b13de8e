"""Whether the Hugging Face hub can be reached, asked once quickly instead of retried for ~30 s."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (one TCP connection failed), or None when it may be.

    Behind a proxy a direct connection proves nothing, so the answer is then None.
    """
    if any(os.environ.get(v) for v in PROXY_VARS):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"the Hub at {host} is unreachable: {' '.join(str(error).split())}"
