"""A layout too big for the page, in a real browser: it runs as a job that outlives the tab, a
second session joins it rather than starting another, and the map appears there by itself.

A real Streamlit server (``REPLENS_LAYOUT_JOB_ABOVE`` lowered so a 3,000-point dataset counts as
big), Debian's Chromium through Playwright. Screenshots: ``test-output/layout-job/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from conftest import SYNTHETIC_KEY, synthetic_dataset
from core import reduce
from core.store import Store
from tests.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, settle, streamlit_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "layout-job"
N_POINTS = 3_000
KEY = SYNTHETIC_KEY
MAP_JS = "() => window.__replensBigmap?.maps.get('map_chart')"
READY_JS = f"(n) => {{ const m = ({MAP_JS})(); return !!m && m.stats.ready && m.stats.n === n && m.stats.drawn > 0; }}"


def build(db: Path, cache: Path) -> None:
    """Dataset 'big': N_POINTS records in three folders with clustered vectors (no layout yet)."""
    store = Store(db, cache)
    try:
        synthetic_dataset(store, N_POINTS)
        store.remember_dataset("big")
    finally:
        store.close()


def layout_jobs(db: Path, cache: Path) -> list[dict[str, Any]]:
    store = Store(db, cache)
    try:
        return [r for r in store.job_records(dataset="big") if r["kind"] == "layout"]
    finally:
        store.close()


def wait_for(check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


@pytest.mark.timeout(600)
def test_a_big_layout_job_outlives_the_tab_and_a_second_session_gets_the_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    db, cache = tmp_path / "replens.duckdb", tmp_path / "cache"
    build(db, cache)
    monkeypatch.setenv("REPLENS_LAYOUT_JOB_ABOVE", "1000")
    with streamlit_server(db, cache, tmp_path / "server.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            first = browser.new_context(viewport={"width": 1440, "height": 1000})
            first.set_default_timeout(TIMEOUT_MS)
            page = first.new_page()
            page.goto(f"{url}/map")
            page.get_by_text("runs on the server as a job").wait_for()
            page.get_by_text(f"Layout umap of big ({KEY})").wait_for()
            page.screenshot(path=str(SHOTS / "1-job-started.png"), full_page=True)
            (job,) = layout_jobs(db, cache)
            assert job["status"] in ("queued", "running") and job["params"]["method"] == "umap"
            first.close()  # the tab goes away mid-job

            second = browser.new_context(viewport={"width": 1440, "height": 1000})
            second.set_default_timeout(TIMEOUT_MS)
            page = second.new_page()
            page.goto(f"{url}/map")
            # The map appears by itself when the job ends: no reload, no click.
            page.wait_for_function(READY_JS, arg=N_POINTS, timeout=300_000, polling=500)
            settle(page)
            page.screenshot(path=str(SHOTS / "2-map-after-the-job.png"), full_page=True)
            assert page.get_by_text(f"{N_POINTS:,} points").first.is_visible()
            assert page.get_by_text("loaded from cache").first.is_visible()
            second.close()
        finally:
            browser.close()
    jobs = wait_for(lambda: [j for j in layout_jobs(db, cache) if j["status"] == "done"])
    assert len(layout_jobs(db, cache)) == 1 and jobs[0]["job_id"] == job["job_id"]  # joined, not repeated
    assert jobs[0]["result"]["n_points"] == N_POINTS
    store = Store(db, cache)
    try:
        frame, _ = store.load_embeddings("big", KEY)
        stored = reduce.cached_projection(store, KEY, "umap", {}, frame)
    finally:
        store.close()
    assert stored is not None and stored.key == jobs[0]["result"]["projection_key"]
