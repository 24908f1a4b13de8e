"""How much encode work one server process takes on: a few requests at a time, a bounded queue.

Every encode (the REST API and the no-JS "try your own text" page) takes a turn here before it
loads, tokenises or runs anything: at most `concurrent` requests work at once, at most `waiting`
more wait for a turn, and any further request is answered 429 at once instead of piling up
memory and latency for everyone (README, "Security model").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.core.errors import TooManyRequests

BUSY_RETRY_S = 2.0
"""Retry-After of a request turned away because the queue is full."""


class EncodeGate:
    """At most `concurrent` encode requests at once and `waiting` in line (per process and event loop)."""

    def __init__(self, concurrent: int, waiting: int) -> None:
        if concurrent < 1 or waiting < 0:
            raise ValueError("concurrent must be at least 1 and waiting at least 0")
        self.concurrent, self.max_waiting = concurrent, waiting
        self.waiting = 0
        """Requests waiting for a turn now."""
        self.running = 0
        """Requests working now."""
        self._turns = asyncio.Semaphore(concurrent)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for a turn (or TooManyRequests when the line is full), hold it while the body runs."""
        if self.running >= self.concurrent and self.waiting >= self.max_waiting:
            raise TooManyRequests(
                f"the server is busy: {self.running} encode requests are running and {self.waiting} waiting; "
                "retry shortly",
                retry_after=BUSY_RETRY_S,
            )
        self.waiting += 1
        try:
            await self._turns.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._turns.release()
