"""Running jobs: a worker pool in the server process (or the CLI's own thread), heartbeats, recovery.

One :class:`JobRunner` per process (the app keeps one in ``st.cache_resource``). ``submit`` records
the job and hands it to a worker thread; the job keeps running when the browser tab that started
it closes. A heartbeat thread stamps every running job of this process every few seconds, so
another process (or this one after a restart) can tell a live job from one whose process died:
:meth:`JobRunner.recover` marks the latter interrupted, and :meth:`JobRunner.resume` runs it again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from core.errors import InvalidInputError, RepLensError
from core.jobs.kinds import job_identity, job_kind
from core.jobs.model import Job, JobCancelled, JobContext

if TYPE_CHECKING:
    from core.store import Store

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
# A running job whose heartbeat is older than this belongs to a process that stopped.
STALE_AFTER_S = 20.0


def process_owner() -> str:
    """Who runs a job: "pid@host" (checked for liveness on this host)."""
    return f"{os.getpid()}@{socket.gethostname()}"


def owner_is_dead(owner: str) -> bool:
    """True when ``owner`` is a process on this host that no longer exists (other hosts: unknown → False)."""
    pid_text, _, host = owner.partition("@")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False


class JobRunner:
    """Runs jobs on ``workers`` threads of this process and keeps their heartbeats."""

    def __init__(self, store: Store, *, workers: int = 1, stale_after_s: float = STALE_AFTER_S) -> None:
        self.store = store
        self.owner = process_owner()
        self.stale_after_s = stale_after_s
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="replens-job")
        self._futures: dict[str, Future[None]] = {}
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None

    # ----------------------------------------------------------------- starting
    def submit(self, kind: str, dataset: str | None, params: dict[str, Any]) -> tuple[str, bool]:
        """Record and start a job; returns (job id, created). Joins a queued/running job of the same identity."""
        spec = job_kind(kind)
        job_id, created = self.store.create_job(
            kind, dataset, job_identity(kind, dataset, params), params, spec.title(dataset, params)
        )
        if created:
            self._schedule(job_id)
        return job_id, created

    def resume(self, job_id: str) -> str:
        """Run an interrupted, failed or cancelled job again with its parameters (committed work is kept)."""
        job = self.get(job_id)
        if job.active:
            return job_id
        if job.status == "done":
            raise InvalidInputError(f"Job {job_id} has finished; there is nothing to resume.")
        if self.store.requeue_job(job_id):
            self._schedule(job_id)
        return job_id

    def cancel(self, job_id: str) -> bool:
        return self.store.request_job_cancel(job_id)

    def run_here(self, job_id: str) -> Job:
        """Run a queued job in the calling thread (the CLI) and return how it ended."""
        self._ensure_heartbeat()
        self._execute(job_id)
        return self.get(job_id)

    def _schedule(self, job_id: str) -> None:
        self._ensure_heartbeat()
        with self._lock:
            self._futures[job_id] = self._pool.submit(self._execute, job_id)

    # ----------------------------------------------------------------- reading
    def get(self, job_id: str) -> Job:
        record = self.store.job(job_id)
        if record is None:
            raise InvalidInputError(f"No job {job_id!r}; list them with: python -m core jobs list")
        return Job.from_record(record)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ends (tests, the CLI); raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if not job.active:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(0.1)

    def recover(self) -> list[str]:
        """Mark interrupted the jobs other processes left running or queued when they stopped."""
        dead = [owner for owner in self.store.active_job_owners() if owner != self.owner and owner_is_dead(owner)]
        from core.store.jobs import stale_cutoff

        with self._lock:
            mine = set(self._futures)
        found = self.store.interrupt_stale_jobs(stale_cutoff(self.stale_after_s), dead, keep_owner=self.owner)
        return [job_id for job_id in found if job_id not in mine]

    def shutdown(self, wait: bool = True) -> None:
        self._stop.set()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    # ----------------------------------------------------------------- running
    def _execute(self, job_id: str) -> None:
        if not self.store.claim_job(job_id, self.owner):
            return  # cancelled while queued, or claimed by another runner
        record = self.store.job(job_id) or {}
        job = Job.from_record(record)
        spec = job_kind(job.kind)
        ctx = JobContext(self.store, job_id, spec.unit)
        with self._lock:
            self._running.add(job_id)
        try:
            result = spec.run(self.store, job.dataset, job.params, ctx)
        except JobCancelled:
            self.store.finish_job(job_id, "cancelled", error="Cancelled by a user.")
        except RepLensError as exc:
            self.store.finish_job(job_id, "failed", error=exc.for_page())
        except Exception as exc:
            log.exception("job %s (%s) failed", job_id, job.kind)
            self.store.finish_job(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        except BaseException:  # Ctrl-C in the CLI, the interpreter going down: committed work is kept
            self.store.finish_job(job_id, "interrupted", error="Interrupted: the process running it was stopped.")
            raise
        else:
            self.store.finish_job(job_id, "done", result=result)
        finally:
            with self._lock:
                self._running.discard(job_id)
                self._futures.pop(job_id, None)

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._heart is None or not self._heart.is_alive():
                self._heart = threading.Thread(target=self._beat, name="replens-job-heartbeat", daemon=True)
                self._heart.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                running = sorted(self._running)
            if running:
                try:
                    self.store.beat_jobs(running)
                except RepLensError as exc:  # the database is busy or gone: the next beat retries
                    log.warning("job heartbeat failed: %s", exc)
