"""Rate limits per caller (a token's holder, or a client address), counted by the `limits` library.

Counters live where `JUMPSCOPE_RATE_LIMIT_STORAGE` says: `memory://` (per process, the default) or
a shared store such as `redis://host:6379`, so that several `serve --workers` processes count
together. The moving-window strategy needs a storage that supports it (memory, redis, mongodb).
"""

from __future__ import annotations

import time

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter


def parse_limits(spec: str) -> list[RateLimitItem]:
    """'120/minute' or '10/second;500/hour' -> the limits ('' = none); ValueError naming the notation."""
    if not spec.strip():
        return []
    try:
        return list(parse_many(spec))
    except ValueError as err:
        example = "'120/minute' or '10/second;500/hour'"
        raise ValueError(f"{spec!r} is not a rate limit: write e.g. {example} ({err})") from err


class RateLimiter:
    """`hit(key)` counts one request of `key` against every limit of `spec`."""

    def __init__(self, spec: str, storage_uri: str = "memory://", *, scope: str = "encode") -> None:
        self.spec = spec
        self.items = parse_limits(spec)
        self.scope = scope
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage_uri)) if self.items else None

    def hit(self, key: str) -> float | None:
        """None when `key` may go on, else the seconds until it may (the request is not counted then)."""
        if self._limiter is None:
            return None
        for item in self.items:
            if not self._limiter.test(item, self.scope, key):
                reset = self._limiter.get_window_stats(item, self.scope, key).reset_time
                return max(1.0, reset - time.time())
        for item in self.items:
            self._limiter.hit(item, self.scope, key)
        return None
