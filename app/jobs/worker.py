"""`jumpscope worker`: claim queued jobs from the database and run them, one at a time.

While a job runs, a heartbeat thread writes its progress and metrics every few seconds. If
the heartbeat finds the job is no longer ours (another worker requeued it after we stalled)
the job is stopped. Every poll also requeues jobs whose worker stopped heart-beating, so a
killed worker's job is picked up by another worker and resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback

from sqlalchemy import Engine

from app.core.database import open_store
from app.core.settings import Settings
from app.core.tables import Job
from app.jobs import queue as jobs
from app.jobs.runners import RUNNERS, JobStopped, Reporter

log = logging.getLogger("jumpscope.worker")


def default_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """One job at a time from the queue in `settings.database_url`."""

    def __init__(
        self, settings: Settings, *, name: str | None = None, poll: float = 2.0, heartbeat_every: float = 5.0,
        stale_after: float = 60.0, engine: Engine | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.name = name or default_name()
        self.poll, self.heartbeat_every, self.stale_after = poll, heartbeat_every, stale_after
        self.engine = engine or open_store(settings.database_url)
        self.shutdown = threading.Event()
        self.current: Reporter | None = None

    def stop(self) -> None:
        """Finish as soon as possible: a running training job checkpoints and goes back to the queue."""
        self.shutdown.set()
        if self.current is not None:
            self.current.request_stop()

    def run(self, *, max_jobs: int | None = None, idle_exit: float | None = None) -> int:
        """Work until stop() (or max_jobs jobs, or idle for idle_exit seconds); returns jobs run."""
        done, idle_since = 0, time.monotonic()
        while not self.shutdown.is_set():
            requeued = jobs.requeue_stale(self.engine, self.stale_after)
            if requeued:
                log.warning("requeued jobs %s: their workers stopped heart-beating", requeued)
            job = jobs.claim(self.engine, self.name)
            if job is None:
                if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                    break
                self.shutdown.wait(self.poll)
                continue
            self.run_job(job)
            done += 1
            idle_since = time.monotonic()
            if max_jobs is not None and done >= max_jobs:
                break
        return done

    def run_job(self, job: Job) -> None:
        report = Reporter()
        self.current = report
        beat = threading.Thread(target=self._heartbeat, args=(job.id, report), daemon=True)
        beat.start()
        log.info("job %s (%s) started on %s", job.id, job.kind, self.name)
        try:
            result = RUNNERS[job.kind](engine=self.engine, job_id=job.id, raw=dict(job.params), settings=self.settings,
                                       report=report)  # fmt: skip
        except JobStopped:
            log.warning("job %s stopped; it stays claimed until it is requeued", job.id)
            if self.shutdown.is_set():
                jobs.release(self.engine, job.id, self.name)
            return
        except Exception as err:
            log.error("job %s failed: %s", job.id, err)
            message = f"{type(err).__name__}: {err}"
            log.debug("%s", traceback.format_exc())
            jobs.finish(self.engine, job.id, self.name, error=message[:4000])
        else:
            jobs.heartbeat(self.engine, job.id, self.name, metrics=report.metrics)
            jobs.finish(self.engine, job.id, self.name, result=result)
            log.info("job %s succeeded", job.id)
        finally:
            report.stop.set()
            beat.join()
            self.current = None

    def _heartbeat(self, job_id: int, report: Reporter) -> None:
        while not report.stop.wait(self.heartbeat_every):
            try:
                ours = jobs.heartbeat(self.engine, job_id, self.name, progress=report.progress,
                                      message=report.message, metrics=report.metrics)  # fmt: skip
            except Exception as err:  # a database hiccup must not kill the job
                log.warning("heartbeat of job %s failed: %s", job_id, err)
                continue
            if not ours:
                log.warning("job %s is no longer ours: stopping it", job_id)
                report.request_stop()
                return
