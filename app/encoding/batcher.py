"""LocalEncoder's batching: concurrent requests for one SAE share forward passes.

Requests for the same target on one event loop that arrive within `window_ms` of each other form
a group; the group's task waits that long (or until the waiting requests hold `max_batch_texts`
texts), then hands batch after batch to the group's `run` function, and requests that arrive
while a batch runs join the next one, which starts at once. The batcher knows nothing of models:
`run` (the encoder's forward passes, in its worker thread) gives one result list per job.

Torch-free: only asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget, TextEncoding


@dataclass
class EncodeJob:
    """One caller's validated, tokenised request."""

    ids: list[list[int]]
    """Token ids of each text, BOS included when the SAE was trained with it."""
    has_bos: bool
    top_k: int | None
    features: list[int] | None
    include_bos: bool
    max_values: int = 2**62
    """Values this job's encodings may hold (tokens x active features kept + tokens x dense features)."""
    values: int = 0
    """Values counted so far (by the encoder, text by text)."""
    error: EncodeError | None = None
    """Set by the encoder when the job failed alone (e.g. its reply grew over max_values)."""
    future: asyncio.Future[list[TextEncoding]] | None = None
    """Where a batched job's result goes (set by `Batcher.submit`)."""


RunBatch = Callable[[list[EncodeJob]], Awaitable[list[list[TextEncoding] | EncodeError]]]
"""Runs a batch of jobs for one target: one list of encodings (or the job's own error) per job, in order."""


@dataclass
class _Group:
    """Jobs for one target waiting to be run together (one per event loop and target)."""

    run: RunBatch
    """How this group's batches run (given by the job that opened the group)."""
    jobs: list[EncodeJob] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the waiting jobs hold max_batch_texts texts: the collection window ends early."""
    task: asyncio.Task[None] | None = None
    """The task running this group's jobs."""

    @property
    def n_texts(self) -> int:
        return sum(len(job.ids) for job in self.jobs)


class Batcher:
    """Collects jobs per (event loop, target) and runs them in batches of at most max_batch_texts texts."""

    def __init__(self, *, window_ms: float, max_batch_texts: int) -> None:
        self.window_ms = window_ms
        self.max_batch_texts = max_batch_texts
        self._groups: dict[tuple[asyncio.AbstractEventLoop, SAETarget], _Group] = {}

    async def submit(self, target: SAETarget, job: EncodeJob, run: RunBatch) -> list[TextEncoding]:
        """The job's encodings, once a batch holding it has run (`run` is used if this job opens a group)."""
        loop = asyncio.get_running_loop()
        job.future = loop.create_future()
        key = (loop, target)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(run)
            group.task = loop.create_task(self._drain(key, group))
        group.jobs.append(job)
        if group.n_texts >= self.max_batch_texts:
            group.full.set()
        return await job.future

    async def _drain(self, key: tuple[asyncio.AbstractEventLoop, SAETarget], group: _Group) -> None:
        """Run a group's jobs: wait up to window_ms for more (or until full), then run batch after batch.

        Jobs that arrive while a batch runs join the next batch, which starts at once.
        """
        target = key[1]
        batch: list[EncodeJob] = []
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(group.full.wait(), self.window_ms / 1000)
            while True:
                batch = self._take(group)
                if not batch:
                    break
                try:
                    results = await group.run(batch)
                except Exception as err:
                    if not isinstance(err, EncodeError | EncoderUnavailable):
                        err = EncoderUnavailable(f"encoding with SAE {target.name!r} failed: {err}")
                    for job in batch:
                        if job.future is not None and not job.future.done():
                            job.future.set_exception(err)
                    continue
                for job, result in zip(batch, results, strict=True):
                    if job.future is not None and not job.future.done():
                        if isinstance(result, EncodeError):
                            job.future.set_exception(result)
                        else:
                            job.future.set_result(result)
        finally:
            if self._groups.get(key) is group:
                del self._groups[key]
            for job in [*batch, *group.jobs]:  # only left undone if this task was cancelled
                if job.future is not None and not job.future.done():
                    job.future.set_exception(EncoderUnavailable("the encoder was shut down"))

    def _take(self, group: _Group) -> list[EncodeJob]:
        """Pop waiting jobs, oldest first, up to max_batch_texts texts (at least one job); skip cancelled ones."""
        group.jobs = [job for job in group.jobs if job.future is None or not job.future.done()]
        batch: list[EncodeJob] = []
        n = 0
        while group.jobs and (not batch or n + len(group.jobs[0].ids) <= self.max_batch_texts):
            job = group.jobs.pop(0)
            batch.append(job)
            n += len(job.ids)
        group.full.clear()
        if group.n_texts >= self.max_batch_texts:
            group.full.set()
        return batch
