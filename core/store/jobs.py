"""Job records: long work that outlives the browser tab (see :mod:`core.jobs`).

A job row is the shared truth every browser session and the CLI read: status, progress,
heartbeat, result. Creating a job whose identity matches a queued or running one returns that
job instead (one write transaction decides, so two sessions clicking at once get one job).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from core.store.connection import StoreConnection, _json_text, _now

ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("done", "failed", "cancelled", "interrupted")
_COLUMNS = (
    "job_id, kind, dataset, identity, params, title, status, done, total, unit, rate, message, result, error, "
    "owner, cancel_requested, attempts, created_at, started_at, heartbeat_at, finished_at"
)


class JobsMixin(StoreConnection):
    """Create, join, advance and finish job records."""

    def create_job(
        self, kind: str, dataset: str | None, identity: str, params: dict[str, Any], title: str
    ) -> tuple[str, bool]:
        """The job id for ``identity`` and whether it was created now (False: joined an active one)."""
        with self._transaction() as cur:
            active = cur.execute(
                "SELECT job_id FROM jobs WHERE identity = ? AND status IN ('queued', 'running') "
                "ORDER BY created_at LIMIT 1",
                [identity],
            ).fetchall()
            if active:
                return str(active[0][0]), False
            job_id = uuid.uuid4().hex[:12]
            cur.execute(
                "INSERT INTO jobs (job_id, kind, dataset, identity, params, title, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                [job_id, kind, dataset, identity, _json_text(params), title, _now()],
            )
        return job_id, True

    def requeue_job(self, job_id: str) -> bool:
        """Put an ended job (interrupted, failed, cancelled) back in the queue; False if it is active or done."""
        with self._transaction() as cur:
            rows = cur.execute(
                "UPDATE jobs SET status = 'queued', cancel_requested = false, error = NULL, finished_at = NULL, "
                "owner = NULL WHERE job_id = ? AND status IN ('interrupted', 'failed', 'cancelled') RETURNING job_id",
                [job_id],
            ).fetchall()
        return bool(rows)

    def claim_job(self, job_id: str, owner: str) -> bool:
        """Mark a queued job running under ``owner``; False if it is no longer queued (cancelled, claimed)."""
        now = _now()
        with self._transaction() as cur:
            rows = cur.execute(
                "UPDATE jobs SET status = 'running', owner = ?, started_at = ?, heartbeat_at = ?, "
                "attempts = attempts + 1, rate = NULL WHERE job_id = ? AND status = 'queued' RETURNING job_id",
                [owner, now, now, job_id],
            ).fetchall()
        return bool(rows)

    def update_job_progress(
        self, job_id: str, done: int, total: int | None, unit: str, rate: float | None, message: str | None = None
    ) -> bool:
        """Record progress (and a heartbeat). Returns whether a cancel was requested."""
        with self._transaction() as cur:
            rows = cur.execute(
                "UPDATE jobs SET done = ?, total = ?, unit = ?, rate = ?, message = coalesce(?, message), "
                "heartbeat_at = ? WHERE job_id = ? RETURNING cancel_requested",
                [done, total, unit, rate, message, _now(), job_id],
            ).fetchall()
        return bool(rows and rows[0][0])

    def beat_jobs(self, job_ids: list[str]) -> None:
        """Heartbeat for running jobs (also while a job is between progress reports, e.g. loading a model)."""
        if not job_ids:
            return
        with self._transaction() as cur:
            cur.execute(
                "UPDATE jobs SET heartbeat_at = ? WHERE status = 'running' AND list_contains(?, job_id)",
                [_now(), job_ids],
            )

    def finish_job(
        self, job_id: str, status: str, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        if status not in FINAL_STATUSES:
            raise ValueError(f"{status!r} is not a final job status ({', '.join(FINAL_STATUSES)})")
        with self._transaction() as cur:
            cur.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ?, heartbeat_at = ? WHERE job_id = ?",
                [status, _json_text(result) if result is not None else None, error, _now(), _now(), job_id],
            )

    def request_job_cancel(self, job_id: str) -> bool:
        """Ask an active job to stop. A queued job is cancelled at once; a running one stops at its next
        progress report. False if the job has already ended."""
        with self._transaction() as cur:
            queued = cur.execute(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = true, finished_at = ? "
                "WHERE job_id = ? AND status = 'queued' RETURNING job_id",
                [_now(), job_id],
            ).fetchall()
            if queued:
                return True
            running = cur.execute(
                "UPDATE jobs SET cancel_requested = true WHERE job_id = ? AND status = 'running' RETURNING job_id",
                [job_id],
            ).fetchall()
        return bool(running)

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._cursor().execute("SELECT cancel_requested FROM jobs WHERE job_id = ?", [job_id]).fetchall()
        return bool(rows and rows[0][0])

    def interrupt_stale_jobs(self, stale_before: datetime, dead_owners: list[str], keep_owner: str) -> list[str]:
        """Mark interrupted the active jobs whose owner stopped beating before ``stale_before`` or is
        known dead (``dead_owners``), except those of ``keep_owner`` (this process). Queued jobs with no
        owner and an old creation time are interrupted too (their server went away before starting them)."""
        with self._transaction() as cur:
            rows = cur.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?, "
                "error = 'Interrupted: the process running it stopped (server restart or crash)' "
                "WHERE status IN ('queued', 'running') AND coalesce(owner, '') <> ? AND ("
                "  list_contains(?, owner) OR coalesce(heartbeat_at, created_at) < ?"
                ") RETURNING job_id",
                [_now(), keep_owner, dead_owners, stale_before],
            ).fetchall()
        return [str(r[0]) for r in rows]

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._cursor().execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", [job_id]).df()
        return _job_dict(rows.iloc[0]) if len(rows) else None

    def jobs(self, *, dataset: str | None = None, active_only: bool = False, limit: int = 200) -> pd.DataFrame:
        """Newest first. ``params``/``result`` stay JSON text; :func:`job_dict` parses one row."""
        where, args = [], []
        if dataset is not None:
            where.append("dataset = ?")
            args.append(dataset)
        if active_only:
            where.append("status IN ('queued', 'running')")
        sql = f"SELECT {_COLUMNS} FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC LIMIT ?"
        return self._cursor().execute(sql, [*args, limit]).df()

    def job_records(
        self, *, dataset: str | None = None, active_only: bool = False, limit: int = 200
    ) -> list[dict[str, Any]]:
        """:meth:`jobs` as parsed records (``params``/``result`` as dicts), newest first."""
        frame = self.jobs(dataset=dataset, active_only=active_only, limit=limit)
        return [_job_dict(row) for _, row in frame.iterrows()]

    def active_job_owners(self) -> list[str]:
        rows = (
            self._cursor()
            .execute("SELECT DISTINCT owner FROM jobs WHERE status = 'running' AND owner IS NOT NULL")
            .fetchall()
        )
        return [str(r[0]) for r in rows]


def _job_dict(row: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {str(k): (None if _is_missing(v) else v) for k, v in row.to_dict().items()}
    for key in ("params", "result"):
        text = out.get(key)
        if isinstance(text, str):
            out[key] = json.loads(text)
    return out


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and dicts
        return False


def stale_cutoff(seconds: float) -> datetime:
    """The time before which a heartbeat counts as stopped."""
    return _now() - timedelta(seconds=seconds)
