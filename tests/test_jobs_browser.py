"""Extraction jobs in a real browser: they outlive the tab and the server, and any session follows them.

Real Streamlit servers, Debian's Chromium through Playwright, the seeded random ResNet-18 as the
Data page runs it (device and precision "auto"). How many images a dataset holds is set from the
encoder's speed measured here first, so that an extraction takes several seconds on any machine:
"while it runs" is then a window the test can act in, on a slow machine and on a fast one. The
test reads the server's database directly while the server runs (the store holds the file only
while working). Vectors are written in chunks of one batch (``REPLENS_EMBED_CHUNK`` = the batch of 32).

1. One session starts an extraction and its browser is closed mid-run: the job still finishes,
   every image has exactly one vector, and a second session's Data page, opened while it runs and
   never reloaded, shows the job's progress (images/s) and then, by itself, the done message and
   the embedded count. That session starts a second extraction; a third session opened meanwhile
   sees it on the Jobs page with its progress and ETA and cancels it: the job is cancelled with
   fewer than all images embedded, in whole batches, exactly as many as its run recorded, and the
   session that started it is told so without a reload.
2. The server is killed (SIGKILL) mid-extraction, after chunks were committed. A new server on the
   same database shows the job as interrupted with one Resume button (not a second message for the
   run the kill left open); Resume finishes it, and the vectors committed before the kill are kept:
   the resumed run counts exactly them as cached and embeds only the rest.

Screenshots: ``test-output/jobs/``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import png_bytes, write_file
from core import images
from core.store import Store
from tests.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, free_port, grid_rows, settle, streamlit_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "jobs"
BATCH = 32  # the CPU batch of core.extract, and the chunk the server commits (REPLENS_EMBED_CHUNK)
ENCODER = re.compile(r"^Random-init ResNet-18")
RUNNING_WAIT_S = 90
EXTRACTION_S = 8.0  # how long an extraction should take at the measured speed


@pytest.fixture(scope="module")
def images_per_s() -> float:
    """The Data page's encoder speed on this machine (device and precision "auto", a warm model),
    from two forward passes of one batch here. Decoding and the store make a job slower still."""
    import numpy as np
    from PIL import Image

    from core.encoders import load_encoder

    encoder = load_encoder("random-resnet18", "auto", precision="auto")
    batch = np.stack([encoder.preprocess(Image.new("RGB", (16, 16), (i, 90, 200))) for i in range(BATCH)])
    encoder.embed_batch(batch)  # warm-up
    fastest = math.inf
    for _ in range(2):  # the faster of two: more images on a noisy machine, never too few
        started = time.perf_counter()
        encoder.embed_batch(batch)
        fastest = min(fastest, time.perf_counter() - started)
    return BATCH / max(fastest, 1e-3)


def n_images(images_per_s: float, seconds: float = EXTRACTION_S) -> int:
    """Whole batches for an extraction of about ``seconds`` (at least three batches, at most 4096 images)."""
    return max(3, min(128, math.ceil(images_per_s * seconds / BATCH))) * BATCH


def build(db: Path, cache: Path, base: Path, sizes: dict[str, int]) -> None:
    store = Store(db, cache)
    try:
        for offset, (name, n) in enumerate(sizes.items()):
            root = base / name
            for i in range(n):
                write_file(root, f"c{i % 3}/{name}_{i:04d}.png", png_bytes(300_000 * (offset + 1) + i, size=16))
            scan = images.scan(root, cache_dir=cache)
            store.ingest(name, scan.root, scan.records, scan.skipped)
    finally:
        store.close()


def read_store(db: Path, cache: Path, read: Callable[[Store], Any]) -> Any:
    """``read(store)`` on the server's database, opened by this test while the server runs."""
    store = Store(db, cache)
    try:
        return read(store)
    finally:
        store.close()


def embed_job(db: Path, cache: Path, dataset: str) -> dict[str, Any]:
    jobs = [r for r in read_store(db, cache, lambda s: s.job_records(dataset=dataset)) if r["kind"] == "embed"]
    assert len(jobs) == 1, jobs
    return jobs[0]


def wait_job(db: Path, cache: Path, dataset: str, statuses: tuple[str, ...], timeout: float = RUNNING_WAIT_S) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = embed_job(db, cache, dataset)
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout}s: {job}"
        time.sleep(0.5)


def committed(db: Path, cache: Path, dataset: str) -> int:
    """Vectors stored so far for ``dataset`` (under any key)."""
    return read_store(db, cache, lambda s: int(s.embedding_status(dataset)["n_embedded"].sum()))


def stored_vectors(db: Path, cache: Path, dataset: str) -> tuple[str, list[str]]:
    """(the dataset's one encoder key, the content hash of every vector stored under it)."""

    def read(store: Store) -> tuple[str, list[str]]:
        keys = store.embedded_keys(dataset)
        assert len(keys) == 1 and keys[0].startswith("random-resnet18@"), keys
        frame, matrix = store.load_embeddings(dataset, keys[0])
        assert matrix.shape[0] == len(frame)
        return keys[0], frame["content_hash"].tolist()

    return read_store(db, cache, read)


def pick(page: Any, label: str, typed: str, option: re.Pattern[str]) -> None:
    combo = page.get_by_role("combobox", name=label).first
    combo.click()
    combo.fill(typed)
    page.get_by_role("option", name=option).first.click()
    settle(page)


def open_data_page(page: Any, url: str, dataset: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name="Data", exact=True).wait_for()
    settle(page)
    pick(page, "Dataset", dataset, re.compile(f"^{dataset}$"))


def start_extraction(page: Any, url: str, dataset: str) -> None:
    open_data_page(page, url, dataset)
    pick(page, "Encoder", "Random-init", ENCODER)
    page.get_by_role("button", name="Extract").click()


def progress_done(page: Any, total: int, after: str = "") -> int:
    """Wait until the page's job panel shows "D/TOTAL images" with 0 < D (then ``after``); return D."""
    regex = re.compile(rf"([1-9][\d,]*)/{total:,} images{after}")
    shown = page.get_by_text(regex).first
    shown.wait_for(timeout=RUNNING_WAIT_S * 1000)
    match = regex.search(shown.inner_text())
    assert match is not None
    return int(match.group(1).replace(",", ""))


def embedded_count(page: Any, dataset_total: int) -> int:
    """The Embedded column of the Data page's status table (the one encoder)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        grids = page.locator('[data-testid="stDataFrame"]')
        for i in range(grids.count()):
            rows = grid_rows(grids.nth(i))
            if rows and "Embedded" in rows[0]:
                return int(rows[0]["Embedded"])
        page.wait_for_timeout(250)
    raise AssertionError(f"no status table for a dataset of {dataset_total} images")


def new_page(browser: Any) -> Any:
    context = browser.new_context(viewport={"width": 1300, "height": 1900})  # the job panels in view
    context.set_default_timeout(TIMEOUT_MS)
    return context.new_page()


def launch(pw: Any) -> Any:
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture()
def server_env(isolated_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("REPLENS_EMBED_CHUNK", str(BATCH))  # one committed chunk per batch
    SHOTS.mkdir(parents=True, exist_ok=True)
    return Path(isolated_env["REPLENS_DB"]), Path(isolated_env["REPLENS_CACHE"])


def test_a_job_outlives_its_tab_and_another_session_follows_it_and_cancels_one(
    tmp_path: Path, server_env: tuple[Path, Path], images_per_s: float
) -> None:
    from playwright.sync_api import sync_playwright

    db, cache = server_env
    big, other = n_images(images_per_s), n_images(images_per_s, 2 * EXTRACTION_S)
    build(db, cache, tmp_path / "images", {"big": big, "other": other})
    with streamlit_server(db, cache, tmp_path / "server.log") as url, sync_playwright() as pw:
        watcher_browser, starter_browser = launch(pw), launch(pw)
        try:
            # Session K (its own browser) starts the extraction. Session A opens the Data page while
            # it runs (the server is still loading the model), and is never reloaded by this test.
            starter = new_page(starter_browser)
            start_extraction(starter, url, "big")
            watcher = new_page(watcher_browser)
            open_data_page(watcher, url, "big")
            # Once K's page shows images embedded, K's whole browser goes away.
            done_when_closed = progress_done(starter, big)
            starter.screenshot(path=str(SHOTS / "1-starter-before-close.png"), full_page=True)
            starter_browser.close()
            assert 0 < done_when_closed < big
            assert embed_job(db, cache, "big")["status"] == "running"  # the tab is gone, the job is not

            # Session A sees the job another session started, with its progress (no reload).
            progress_done(watcher, big, r" · [\d.]+ images/s")
            watcher.screenshot(path=str(SHOTS / "2-watcher-sees-progress.png"), full_page=True)

            job = wait_job(db, cache, "big", ("done", "failed", "cancelled", "interrupted"))
            assert job["status"] == "done", job["error"]
            assert (job["result"]["encoded"], job["result"]["cached"]) == (big, 0)
            key, hashes = stored_vectors(db, cache, "big")
            assert len(hashes) == big and len(set(hashes)) == big  # every image exactly once
            assert set(hashes) == set(read_store(db, cache, lambda s: s.dataset_images("big"))["content_hash"])

            # ... and, still never reloaded, its result: the flash and the embedded count.
            watcher.get_by_text(f"{big} embedded, 0 already cached, 0 failed").wait_for(timeout=30_000)
            settle(watcher)
            assert embedded_count(watcher, big) == big
            assert watcher.get_by_text(key).count() >= 1  # the flash names the key the vectors are under
            watcher.screenshot(path=str(SHOTS / "3-watcher-done-without-reload.png"), full_page=True)

            # Session A starts another extraction; session B, opened while it runs, cancels it
            # from the Jobs page.
            start_extraction(watcher, url, "other")
            canceller = new_page(watcher_browser)
            canceller.goto(f"{url}/jobs")
            canceller.get_by_role("heading", name="Jobs", exact=True).wait_for()
            seen = progress_done(canceller, other, r" · [\d.]+ images/s · ETA")
            assert seen < other
            canceller.get_by_text(re.compile(r"Extract random-resnet18 .* on other · running")).wait_for()
            canceller.screenshot(path=str(SHOTS / "4-jobs-page-running.png"), full_page=True)
            cancel = canceller.get_by_role("button", name=re.compile("Cancel$"))
            assert cancel.count() == 1  # the one running job (the first has finished)
            cancel.click()
            cancelled = wait_job(db, cache, "other", ("done", "failed", "cancelled", "interrupted"))
            canceller.get_by_text(re.compile(r"Extract random-resnet18 .* on other · cancelled")).wait_for()
            settle(canceller)
            canceller.screenshot(path=str(SHOTS / "5-jobs-page-cancelled.png"), full_page=True)
            # The session that started it hears of it without a reload.
            watcher.get_by_text(
                re.compile(rf"The extraction of other was cancelled after [\d,]+ of {other:,}")
            ).wait_for()
            watcher.screenshot(path=str(SHOTS / "6-starter-told-cancelled.png"), full_page=True)
        finally:
            for browser in (starter_browser, watcher_browser):
                if browser.is_connected():
                    browser.close()

    assert cancelled["status"] == "cancelled" and cancelled["result"] is None
    _, kept = stored_vectors(db, cache, "other")
    runs = read_store(db, cache, lambda s: s.runs("embed"))
    run = runs[runs["dataset"] == "other"].iloc[0]
    assert run["status"] == "failed" and str(run["error"]).startswith("Interrupted (stop requested)")
    recorded = run["stats"] if isinstance(run["stats"], dict) else json.loads(run["stats"])
    assert 0 < len(kept) < other and len(set(kept)) == len(kept)
    assert len(kept) % BATCH == 0  # whole batches only: nothing half-written
    assert len(kept) == recorded["encoded"]  # exactly what the stopped run says it committed


@contextmanager
def killable_server(db: Path, cache: Path, log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``streamlit run app.py`` on a free port; yields (its URL, its process) so the test can kill it."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    env = {**os.environ, "REPLENS_DB": str(db), "REPLENS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.5)
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)


def test_a_server_killed_mid_job_leaves_it_interrupted_and_resume_keeps_the_committed_vectors(
    tmp_path: Path, server_env: tuple[Path, Path], images_per_s: float
) -> None:
    from playwright.sync_api import sync_playwright

    db, cache = server_env
    total = n_images(images_per_s)
    build(db, cache, tmp_path / "images", {"big": total})
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            with killable_server(db, cache, tmp_path / "server1.log") as (url, proc):
                page = new_page(browser)
                start_extraction(page, url, "big")
                deadline = time.monotonic() + RUNNING_WAIT_S
                while committed(db, cache, "big") == 0:  # the first chunk, read off the database itself
                    assert time.monotonic() < deadline, "no chunk was committed"
                    time.sleep(0.1)
                os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no finally blocks: a crash
                proc.wait(timeout=15)
                page.close()

            key, at_kill = stored_vectors(db, cache, "big")
            assert 0 < len(at_kill) < total and len(set(at_kill)) == len(at_kill)
            left = embed_job(db, cache, "big")
            assert left["status"] == "running"  # what the dead server left behind
            # Progress is written at most twice a second: it may lag what was committed, never lead it.
            assert 0 <= left["done"] <= len(at_kill) and left["total"] == total

            with killable_server(db, cache, tmp_path / "server2.log") as (url, _):
                page = new_page(browser)
                open_data_page(page, url, "big")
                page.get_by_text(re.compile(r"Extract random-resnet18 .* on big · interrupted")).wait_for()
                settle(page)
                # One message for one interruption: the job's, with one Resume button; the run the kill
                # left 'running' is not offered a second time.
                assert page.get_by_text("did not finish").count() == 0
                resume = page.get_by_role("button", name=re.compile("^(Resume|play_arrow)"))
                assert resume.count() == 1
                page.get_by_text(f"{left['done']:,} of {total:,} images were done").wait_for()
                page.screenshot(path=str(SHOTS / "7-after-restart-interrupted.png"), full_page=True)
                resume.first.click()
                resumed = len(at_kill)
                page.get_by_text(f"{total - resumed} embedded, {resumed} already cached, 0 failed").wait_for(
                    timeout=RUNNING_WAIT_S * 1000
                )
                settle(page)
                assert embedded_count(page, total) == total
                page.screenshot(path=str(SHOTS / "8-resumed-done.png"), full_page=True)
                job = embed_job(db, cache, "big")
                key_after, hashes = stored_vectors(db, cache, "big")
        finally:
            browser.close()

    assert job["status"] == "done" and job["attempts"] == 2
    assert (job["result"]["cached"], job["result"]["encoded"]) == (len(at_kill), total - len(at_kill))
    assert key_after == key and len(hashes) == total and len(set(hashes)) == total
    assert set(at_kill) <= set(hashes)  # the vectors committed before the kill were kept
