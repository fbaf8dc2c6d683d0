"""Jobs: every extraction, layout, clustering, diagnostics run and bias battery, from any session."""

from __future__ import annotations

import streamlit as st

from core.jobs import Job
from ui.errors import user_errors
from ui.jobs import get_runner, show_job
from ui.resources import get_store

POLL_S = 1.0


def main() -> None:
    st.title("Jobs")
    st.caption(
        "Long work runs on the server, not in your browser tab: close or reload the page and it goes on. "
        "Jobs started from any session, or from a terminal, are listed here."
    )
    with user_errors():
        get_runner()  # starting the runner marks jobs left by a stopped server as interrupted
        job_list()


@st.fragment(run_every=POLL_S)
def job_list() -> None:
    runner = get_runner()
    runner.recover()
    jobs = [Job.from_record(record) for record in get_store().job_records(limit=100)]
    active = [job for job in jobs if job.active]
    ended = [job for job in jobs if not job.active]
    st.subheader(f"Running and queued ({len(active)})")
    if not active:
        st.caption("Nothing is running.")
    for job in active:
        show_job(job, key="jobs_page")
    st.subheader(f"Finished ({len(ended)})")
    for job in ended[:50]:
        show_job(job, key="jobs_page")
    if not jobs:
        st.info("No jobs yet. Extract embeddings on the Data page to start one.")


main()
