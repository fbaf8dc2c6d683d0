"""`python -m core jobs …`: list, follow, start, cancel and resume background jobs.

Jobs started here run in this process and are visible from every browser session while they
run; a job started in the app can be followed, cancelled or (once interrupted) resumed here.

    python -m core jobs list [--dataset NAME] [--active] [--json]
    python -m core jobs show JOB_ID [--json]
    python -m core jobs run KIND --dataset NAME --params '{"encoder_id": "pixels"}' [--json]
    python -m core jobs cancel JOB_ID
    python -m core jobs resume JOB_ID [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from core.cli.common import SubParsers, add_command, emit, open_store, progress_bar
from core.errors import InvalidInputError
from core.jsonsafe import jsonable

if TYPE_CHECKING:
    from core.jobs import Job, JobRunner

POLL_S = 0.25


def add_commands(sub: SubParsers) -> None:
    jobs = sub.add_parser("jobs", help="background jobs: list, show, run, cancel, resume")
    verbs = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = add_command(verbs, "list", cmd_list, "jobs, newest first")
    listing.add_argument("--dataset")
    listing.add_argument("--active", action="store_true", help="only queued and running jobs")
    show = add_command(verbs, "show", cmd_show, "one job: status, progress, result")
    show.add_argument("job_id")
    start = add_command(verbs, "run", cmd_run, "start a job here and follow it (joins an identical running one)")
    start.add_argument("kind", help="embed, layout, cluster, diagnostics or bias")
    start.add_argument("--dataset", required=True)
    start.add_argument("--params", default="{}", help="the job's parameters as a JSON object")
    cancel = add_command(verbs, "cancel", cmd_cancel, "ask a queued or running job to stop")
    cancel.add_argument("job_id")
    resume = add_command(verbs, "resume", cmd_resume, "run an interrupted, failed or cancelled job again here")
    resume.add_argument("job_id")


def cmd_list(args: argparse.Namespace) -> int:
    from core.jobs import Job

    store = open_store()
    _runner(store).recover()
    jobs = [Job.from_record(r) for r in store.job_records(dataset=args.dataset, active_only=args.active)]
    emit(args, [_summary(job) for job in jobs], lambda: _print_table(jobs))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    job = _runner(open_store()).get(args.job_id)
    emit(args, _summary(job, full=True), lambda: print(json.dumps(_summary(job, full=True), indent=2, default=str)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise InvalidInputError(f"--params is not JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise InvalidInputError('--params must be a JSON object, e.g. \'{"encoder_id": "pixels"}\'')
    runner = _runner(open_store())
    job_id, created = runner.submit(args.kind, args.dataset, params)
    return _follow(args, runner, job_id, joined=not created)


def cmd_cancel(args: argparse.Namespace) -> int:
    runner = _runner(open_store())
    asked = runner.cancel(args.job_id)
    emit(
        args,
        {"job_id": args.job_id, "cancel_requested": asked},
        lambda: print(f"asked job {args.job_id} to stop" if asked else f"job {args.job_id} has already ended"),
    )
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    runner = _runner(open_store())
    runner.recover()
    job_id = runner.resume(args.job_id)
    return _follow(args, runner, job_id, joined=False)


def _runner(store: Any) -> JobRunner:
    from core.jobs import JobRunner

    return JobRunner(store)


def _follow(args: argparse.Namespace, runner: JobRunner, job_id: str, *, joined: bool) -> int:
    """Show the job's progress until it ends; Ctrl-C asks it to stop and waits for it to commit."""
    job = runner.get(job_id)
    update, close = progress_bar(("joined: " if joined else "") + job.title, job.unit)
    try:
        while job.active:
            if job.total:
                update(job.done, job.total)
            time.sleep(POLL_S)
            job = runner.get(job_id)
    except KeyboardInterrupt:
        runner.cancel(job_id)
        job = runner.wait(job_id)
        close()
        raise
    if job.total:
        update(job.done, job.total)
    close()
    emit(args, _summary(job, full=True), lambda: _print_outcome(job))
    return 0 if job.status == "done" else 1


def _summary(job: Job, *, full: bool = False) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "job_id": job.job_id,
        "kind": job.kind,
        "dataset": job.dataset,
        "title": job.title,
        "status": job.status,
        "done": job.done,
        "total": job.total,
        "unit": job.unit,
        "rate": job.rate,
        "eta_s": job.eta_seconds,
        "error": job.error,
        "created_at": str(job.created_at) if job.created_at is not None else None,
    }
    if full:
        summary.update(params=job.params, result=jsonable(job.result), attempts=job.attempts, owner=job.owner)
    return summary


def _print_table(jobs: list[Job]) -> None:
    if not jobs:
        print("no jobs")
    for job in jobs:
        progress = f"{job.done}/{job.total} {job.unit}" if job.total else ""
        print(f"{job.job_id}  {job.status:<11}  {progress:<20}  {job.title}")


def _print_outcome(job: Job) -> None:
    if job.status == "done":
        print(f"job {job.job_id} done: {json.dumps(jsonable(job.result), default=str)}")
    else:
        print(f"job {job.job_id} {job.status}: {job.error or ''}")
