"""What a job is, as pages and the CLI read it, and the context a running job reports through."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from core.store import Store

JobStatus = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]

# Progress is written at most this often: a row update per batch would cost more than the batch.
PROGRESS_EVERY_S = 0.5


class JobCancelled(Exception):
    """Raised inside a job that was asked to stop between two of its steps."""


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str
    dataset: str | None
    title: str
    status: str
    params: dict[str, Any]
    done: int
    total: int | None
    unit: str
    rate: float | None
    message: str | None
    result: dict[str, Any] | None
    error: str | None
    owner: str | None
    attempts: int
    created_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        return cls(
            job_id=str(record["job_id"]),
            kind=str(record["kind"]),
            dataset=record.get("dataset"),
            title=str(record["title"]),
            status=str(record["status"]),
            params=dict(record.get("params") or {}),
            done=int(record.get("done") or 0),
            total=None if record.get("total") is None else int(record["total"]),
            unit=str(record.get("unit") or "steps"),
            rate=None if record.get("rate") is None else float(record["rate"]),
            message=record.get("message"),
            result=record.get("result"),
            error=record.get("error"),
            owner=record.get("owner"),
            attempts=int(record.get("attempts") or 0),
            created_at=record.get("created_at"),
            started_at=record.get("started_at"),
            heartbeat_at=record.get("heartbeat_at"),
            finished_at=record.get("finished_at"),
        )

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def fraction(self) -> float:
        if self.status == "done":
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate; None when unknown."""
        if self.status != "running" or not self.total or not self.rate or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)


class JobContext:
    """Handed to a running job: report progress, ask whether to stop.

    ``progress(done, total)`` writes the job's row (and its heartbeat) at most every
    :data:`PROGRESS_EVERY_S` seconds, always on the last step; the write returns the cancel flag, so
    :meth:`should_stop` costs nothing in between. The rate counts only units done since this run
    of the job started (cached images reported in the first call are not "speed").
    """

    def __init__(self, store: Store, job_id: str, unit: str = "steps") -> None:
        self.store, self.job_id, self.unit = store, job_id, unit
        self._cancel = False
        self._last_write = 0.0
        self._first: tuple[int, float] | None = None

    def progress(self, done: int, total: int | None, message: str | None = None) -> None:
        now = time.monotonic()
        if self._first is None and total is not None:
            self._first = (done, now)  # from the first counted report: model loading is not speed
        final = total is not None and done >= total
        if not final and now - self._last_write < PROGRESS_EVERY_S and message is None:
            return
        start_done, start_time = self._first or (done, now)
        rate = (done - start_done) / (now - start_time) if now > start_time and done > start_done else None
        self._cancel = (
            self.store.update_job_progress(self.job_id, done, total, self.unit, rate, message) or self._cancel
        )
        self._last_write = now

    def should_stop(self) -> bool:
        if not self._cancel and time.monotonic() - self._last_write >= PROGRESS_EVERY_S:
            self._cancel = self.store.cancel_requested(self.job_id)
            self._last_write = time.monotonic()
        return self._cancel

    def check_cancelled(self) -> None:
        """Between the steps of a job that cannot stop mid-step: raise :class:`JobCancelled` if asked to stop."""
        if self.should_stop():
            raise JobCancelled(self.job_id)
