"""Jobs: long work that outlives the browser tab.

Extraction, layouts, clustering, diagnostics and bias batteries run as jobs recorded in the
store (kind, parameters, status, progress, heartbeat, result). The app's :class:`JobRunner` runs
them on worker threads of the server process, so closing or reloading a tab does not stop them;
the CLI runs them in its own process (``replens jobs run``) and every browser session sees both.
Starting a job that is already queued or running joins it. A running job whose process stopped
beating (a server restart, a crash) is marked interrupted; resuming it re-runs the same
parameters, and the work the job had committed (vectors, a stored layout) is kept.
"""

from __future__ import annotations

from core.jobs.kinds import JOB_KINDS, JobKind, job_identity, job_kind, register_job_kind
from core.jobs.model import Job, JobCancelled, JobContext, JobStatus
from core.jobs.runner import JobRunner, process_owner

__all__ = [
    "JOB_KINDS",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobKind",
    "JobRunner",
    "JobStatus",
    "job_identity",
    "job_kind",
    "process_owner",
    "register_job_kind",
]
