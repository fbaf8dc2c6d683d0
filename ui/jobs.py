"""Jobs in the app: the server's job runner, a live status panel, and the job list.

The runner lives in ``st.cache_resource``: one per server process, shared by every session, so
a job keeps running when the tab that started it closes. Panels poll the store from a fragment
(``run_every``) and rerun the whole page once when a job they show ends, so its results appear
without the user reloading.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import streamlit as st

from core.jobs import Job, JobRunner
from ui.progress import fmt_duration
from ui.resources import get_store
from ui.text import md_escape

POLL_S = 1.0
SEEN_KEY = "rl_jobs_seen_active"  # session state: jobs this session saw active (to notice them end)
FLASH_KEY = "rl_jobs_flash"


@st.cache_resource(show_spinner=False)
def _runner_for(db_path: str) -> JobRunner:
    runner = JobRunner(get_store(), workers=int(os.environ.get("REPLENS_JOB_WORKERS", "2")))
    runner.recover()  # jobs a previous server process left running are interrupted, not "running"
    return runner


def get_runner() -> JobRunner:
    store = get_store()
    return _runner_for(str(store.path))


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


def show_job(job: Job, *, key: str) -> None:
    """One job: title, progress with rate and ETA, and the button that fits its state."""
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
            st.caption(md_escape(job.error or job.status))
            if st.button("Resume", key=f"{key}_resume_{job.job_id}", icon=":material/play_arrow:"):
                runner.resume(job.job_id)
                st.rerun()


def watch_jobs(job_ids: Callable[[], list[str]], *, key: str, on_end: Callable[[Job], None] | None = None) -> None:
    """A panel that refreshes every :data:`POLL_S` s while any of ``job_ids()`` is active, and reruns
    the page once when one ends (``on_end`` is called first, e.g. to flash its result)."""

    @st.fragment(run_every=POLL_S)
    def panel() -> None:
        runner = get_runner()
        seen: set[str] = st.session_state.setdefault(SEEN_KEY, set())
        ended: list[Job] = []
        for job_id in job_ids():
            job = runner.get(job_id)
            if job.active:
                seen.add(job_id)
            elif job_id in seen:
                seen.discard(job_id)
                ended.append(job)
            show_job(job, key=key)
        for job in ended:
            if on_end is not None:
                on_end(job)
        if ended:
            st.rerun(scope="app")

    panel()


def _done_text(job: Job) -> str:
    result = job.result or {}
    if job.kind == "embed":
        return (
            f"{result.get('encoded', 0)} embedded, {result.get('cached', 0)} already cached, "
            f"{len(result.get('failed') or [])} failed ({result.get('images_per_s', 0):.1f} img/s)."
        )
    return "Finished."
