"""Jobs in the app: the server's job runner, live status panels, and the job list.

The runner lives in ``st.cache_resource``: one per server process, shared by every session, so
a job keeps running when the tab that started it closes. Panels poll the store from a fragment
(``run_every``) and rerun the whole page once when a job they watch ends, so its results appear
without the user reloading.

A session *watches* a job from the moment it starts or resumes it (:func:`submit_job`,
:func:`resume_job`) or first sees it active in a panel; when a watched job has ended, the panel
that watches it calls its ``on_end`` once (a page flashes the result) and reruns the page. A job
that ends before the page that started it draws its panel is noticed all the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import streamlit as st

from core.jobs import Job, JobRunner, job_identity
from ui.progress import fmt_duration
from ui.resources import get_store
from ui.text import md_escape

POLL_S = 1.0  # while a job a panel shows is queued or running
IDLE_POLL_S = 5.0  # otherwise: notice a job another session or a terminal starts
WATCHED_KEY = "rl_jobs_watched"  # session state: {job id: the panel key watching it}
RESUMABLE = ("interrupted", "failed", "cancelled")


@st.cache_resource(show_spinner=False)
def _runner_for(db_path: str) -> JobRunner:
    runner = JobRunner(get_store(), workers=int(os.environ.get("REPLENS_JOB_WORKERS", "2")))
    runner.recover()  # jobs a previous server process left running are interrupted, not "running"
    return runner


def get_runner() -> JobRunner:
    store = get_store()
    return _runner_for(str(store.path))


def watched() -> dict[str, str]:
    """This session's watched jobs: job id -> the key of the panel that reports their end."""
    found: dict[str, str] = st.session_state.setdefault(WATCHED_KEY, {})
    return found


def unwatch(key: str) -> None:
    """Stop watching the jobs panel ``key`` watches: the page no longer waits for them (it has what
    they make), so their end needs no rerun."""
    mine = watched()
    for job_id in [job_id for job_id, k in mine.items() if k == key]:
        del mine[job_id]


def submit_job(kind: str, dataset: str | None, params: dict[str, Any], *, key: str) -> str:
    """Start a job (or join the identical one already running) and watch it from panel ``key``."""
    job_id, _ = get_runner().submit(kind, dataset, params)
    watched()[job_id] = key
    return job_id


def await_job(dataset: str, kind: str, params: dict[str, Any], explanation: str, *, key: str) -> None:
    """What a page shows while the result it needs is made by a job: the job started (or the running
    one joined; if the last one with these parameters stopped, it is offered to resume instead),
    ``explanation`` (Markdown), and its live panel, which reruns the page when it ends."""

    def jobs() -> list[Job]:
        return page_jobs(dataset, kind, match=lambda job: job.params == params)

    if not jobs():
        submit_job(kind, dataset, params, key=key)
    st.info(explanation, icon=":material/hourglass_top:")
    watch_jobs(lambda: [job.job_id for job in jobs()], key=key)


def resume_job(job_id: str, *, key: str) -> str:
    get_runner().resume(job_id)
    watched()[job_id] = key
    return job_id


def page_jobs(
    dataset: str | None,
    kind: str,
    *,
    keep: Iterable[str] = RESUMABLE,
    match: Callable[[Job], bool] | None = None,
    limit: int = 50,
) -> list[Job]:
    """What a page lists of its ``kind`` of job on ``dataset``: every queued or running one, and the
    latest job of each set of parameters when it ended in one of the ``keep`` states (to resume it).
    A later job with the same parameters (done, or running again) hides the earlier ones. Newest first."""
    keep = set(keep)
    shown: list[Job] = []
    identities: set[str] = set()
    for record in get_store().job_records(dataset=dataset, limit=limit):
        job = Job.from_record(record)
        if job.kind != kind or (match is not None and not match(job)):
            continue
        identity = job_identity(job.kind, job.dataset, job.params)
        if identity in identities:
            continue
        identities.add(identity)
        if job.active or job.status in keep:
            shown.append(job)
    return shown


def progress_text(job: Job) -> str:
    """ "120/801 images · 35.2 images/s · ETA 19s", or the job's message before counting starts."""
    if not job.total:
        return job.message or job.status.capitalize()
    parts = [f"{job.done:,}/{job.total:,} {job.unit}"]
    if job.rate:
        parts.append(f"{job.rate:.1f} {job.unit}/s")
    eta = job.eta_seconds
    if eta is not None and job.done < job.total:
        parts.append(f"ETA {fmt_duration(eta)}")
    return " · ".join(parts)


def show_job(job: Job, *, key: str, watch: bool = False) -> None:
    """One job: title, progress with rate and ETA, and the button that fits its state. ``watch``: a
    job resumed here is watched by panel ``key`` (see :func:`watch_jobs`)."""
    runner = get_runner()
    with st.container(border=True):
        st.markdown(f"**{md_escape(job.title)}** · {job.status}")
        if job.status in ("queued", "running"):
            st.progress(job.fraction, text=progress_text(job))
            if st.button("Cancel", key=f"{key}_cancel_{job.job_id}", icon=":material/stop:"):
                runner.cancel(job.job_id)
                st.rerun()
        elif job.status == "done":
            st.caption(_done_text(job))
        else:
            st.caption(md_escape(_ended_text(job)))
            if st.button(
                "Resume" if job.status != "failed" else "Try again",
                key=f"{key}_resume_{job.job_id}",
                icon=":material/play_arrow:",
                help="Runs it again with the same settings; what it had finished is kept.",
            ):
                if watch:
                    resume_job(job.job_id, key=key)
                else:
                    runner.resume(job.job_id)
                st.rerun()


def watch_jobs(job_ids: Callable[[], list[str]], *, key: str, on_end: Callable[[Job], None] | None = None) -> None:
    """A panel of the jobs ``job_ids()`` lists, refreshed every :data:`POLL_S` s while one of them is
    active (every :data:`IDLE_POLL_S` s otherwise, to notice a job started elsewhere). When a job this
    panel watches ends, ``on_end`` is called once (e.g. to flash its result) and the page reruns."""
    busy = any(job.active for job in _jobs(_followed(job_ids(), key)))

    @st.fragment(run_every=POLL_S if busy else IDLE_POLL_S)
    def panel() -> None:
        mine = watched()
        shown = job_ids()
        ended: list[Job] = []
        active = False
        for job in _jobs(_followed(shown, key)):
            job_id = job.job_id
            if job.active:
                active = True
                mine.setdefault(job_id, key)
            elif mine.get(job_id) == key:
                del mine[job_id]
                ended.append(job)
            if job_id in shown:
                show_job(job, key=key, watch=True)
        for job in ended:
            if on_end is not None:
                on_end(job)
        if ended or active != busy:  # a result to show, or the polling rate to change
            st.rerun(scope="app")

    panel()


def _followed(shown: list[str], key: str) -> list[str]:
    """The jobs a panel looks at: those it shows, and those it watches (to notice them end)."""
    return list(dict.fromkeys([*shown, *(job_id for job_id, k in watched().items() if k == key)]))


def _jobs(job_ids: list[str]) -> list[Job]:
    """The jobs of ``job_ids`` as stored now; one the store no longer has is forgotten."""
    store, found = get_store(), []
    for job_id in job_ids:
        record = store.job(job_id)
        if record is None:
            watched().pop(job_id, None)
        else:
            found.append(Job.from_record(record))
    return found


def _done_text(job: Job) -> str:
    result = job.result or {}
    if job.kind == "embed":
        return (
            f"{result.get('encoded', 0)} embedded, {result.get('cached', 0)} already cached, "
            f"{len(result.get('failed') or [])} failed ({result.get('images_per_s') or 0:.1f} img/s)."
        )
    if job.kind == "layout" and "n_points" in result:
        took = fmt_duration(float(result.get("seconds") or 0))
        how = "was already cached" if result.get("cached") else f"took {took}"
        return f"{int(result['n_points']):,} points laid out ({result.get('method')}); the layout {how}."
    if job.kind == "index" and "n_vectors" in result:
        took = fmt_duration(float(result.get("seconds") or 0))
        return f"{int(result['n_vectors']):,} vectors indexed ({result.get('reason')}) in {took}."
    return "Finished."


def _ended_text(job: Job) -> str:
    """Why a job stopped and how far it got: "Interrupted: … 120 of 300 images were done; resuming keeps them.\""""
    why = job.error or job.status.capitalize()
    if job.status == "failed" or not job.total:
        return why
    return f"{why.rstrip('.')}. {job.done:,} of {job.total:,} {job.unit} were done; resuming keeps them."
