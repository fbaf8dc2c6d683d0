"""A shared snapshot link in a real browser: ``/?snapshot=<id>`` opens the Snapshots page on
that snapshot, read-only, with every point on the map and thumbnails in the gallery, on a
RepLens that only has the imported ``.replens`` file (the original images are gone).

Starts ``streamlit run`` on the router (app.py once it routes ``?snapshot=``, else the mirror
in test_pages_snapshots) with its own REPLENS_DB/REPLENS_CACHE and drives Debian's Chromium.
The screenshot goes to ``test-output/snapshots/``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pages_snapshots import build_snapshots

from core import snapshots
from core.store import Store
from tests.browser import browser_page as open_browser
from tests.browser import settle, streamlit_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "snapshots"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A snapshot made on 'their' machine, imported into 'ours' (a fresh store without the images)."""
    base = tmp_path_factory.mktemp("snapshot_link")
    theirs = build_snapshots(base / "theirs")
    shutil.rmtree(base / "theirs" / "images")
    ours = Store(base / "ours" / "replens.duckdb", base / "ours" / "cache")
    try:
        sid = snapshots.import_snapshot(ours, theirs["archive"])
        snap = snapshots.load_snapshot(ours, sid)
    finally:
        ours.close()
    return {
        "base": base,
        "id": sid,
        "title": snap.title,
        "n": snap.n_points,
        "db": str(ours.path),
        "cache": str(ours.cache_dir),
    }


@pytest.fixture(scope="module")
def server(shared: dict[str, object]) -> Iterator[str]:
    base = Path(str(shared["base"]))
    with streamlit_server(Path(str(shared["db"])), Path(str(shared["cache"])), base / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(server: str) -> Iterator[object]:
    with open_browser(width=1400, height=2000, timeout_ms=TIMEOUT_MS) as page:
        yield page


def points_on_map(page: object) -> int:
    page.wait_for_function(
        "() => { const g = document.querySelector('.js-plotly-plot');"
        " return g && g._fullData && g._fullData.length > 0; }",
        timeout=TIMEOUT_MS,
    )
    # _fullData: Plotly's decoded traces (x arrives as a base64 typed array in data).
    return page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData.reduce((n, t) => n + t._length, 0)")


def test_shared_link_opens_the_snapshot_read_only(
    browser_page: object, server: str, shared: dict[str, object], tmp_path: Path
) -> None:
    page, sid, title = browser_page, str(shared["id"]), str(shared["title"])
    started = time.monotonic()
    page.goto(f"{server}/?snapshot={sid}")
    page.get_by_role("heading", name=title).wait_for()
    settle(page)
    assert f"snapshot={sid}" in page.url  # the router kept the id while opening the page
    assert points_on_map(page) == shared["n"]
    assert page.get_by_text("Read-only snapshot").count() == 1
    assert page.locator('[data-testid="stTextInput"], [data-testid="stFileUploader"]').count() == 0
    # The copyable link: st.code's renderer is loaded on demand, so it may arrive after the run ends.
    link = page.locator('[data-testid="stCode"]').filter(has_text=f"/?snapshot={sid}").first
    link.wait_for(state="visible")
    assert link.inner_text().strip() == f"{server}/?snapshot={sid}"
    # Thumbnails come from the import (the images are gone) and actually load.
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('[data-testid=\"stImage\"] img')];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        timeout=TIMEOUT_MS,
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "link.png"), full_page=True)

    # Passing it on: the downloaded .replens imports elsewhere as the same snapshot; the HTML is a page.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download .replens").click()
    again = Store(tmp_path / "again.duckdb", tmp_path / "again-cache")
    try:
        assert snapshots.import_snapshot(again, download.value.path()) == sid
    finally:
        again.close()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download HTML").click()
    assert download.value.suggested_filename.endswith(".html")
    assert Path(download.value.path()).read_bytes().startswith(b"<!DOCTYPE html>")

    # The page's own address with a short id works too (and no "page not found").
    page.goto(f"{server}/snapshots?snapshot={sid[:8]}")
    page.get_by_role("heading", name=title).wait_for()
    settle(page)
    assert points_on_map(page) == shared["n"]
    assert page.get_by_text("Page not found").count() == 0
    assert time.monotonic() - started < 60
