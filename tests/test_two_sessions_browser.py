"""Two browser sessions on one Streamlit server extract two datasets at the same time.

Real Chromium, two browser contexts (two Streamlit sessions sharing the server's one ``Store``).
Each picks its own dataset on the Data page and clicks Extract, the second a moment after the
first. Both must reach the done state, the two embed runs must overlap in time (so the test
did run them together), and the server's database, opened directly by this test while the
server keeps running (the store lets go of the file when idle), must hold every image of both
datasets exactly once. Screenshots: ``test-output/two_sessions/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import png_bytes, write_file
from core import images
from core.store import Store
from tests.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, settle, streamlit_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "two_sessions"
PIXELS_KEY = "pixels@v1/pixels/none"
SIZES = {"alpha": 160, "beta": 140}  # different counts: each page's done message is its own


def build_datasets(db: Path, cache: Path, base: Path) -> None:
    store = Store(db, cache)
    for offset, (name, n) in enumerate(SIZES.items()):
        root = base / name
        for i in range(n):
            write_file(root, f"c{i % 3}/{name}_{i:04d}.png", png_bytes(100_000 * (offset + 1) + i, size=16))
        scan = images.scan(root, cache_dir=cache)
        store.ingest(name, scan.root, scan.records, scan.skipped)
    store.close()


def open_dataset(page: object, url: str, dataset: str) -> None:
    """The Data page with ``dataset`` picked and the pixels encoder chosen."""
    page.goto(url)
    page.get_by_role("heading", name="Data", exact=True).wait_for()
    settle(page)
    pick(page, "Dataset", dataset, re.compile(f"^{dataset}$"))
    pick(page, "Encoder", "Pixels", re.compile("^Pixels baseline"))


def pick(page: object, label: str, typed: str, option: re.Pattern[str]) -> None:
    combo = page.get_by_role("combobox", name=label).first
    combo.click()
    combo.fill(typed)
    page.get_by_role("option", name=option).first.click()
    settle(page)


def test_two_sessions_extract_different_datasets_at_once(
    tmp_path: Path, isolated_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import sync_playwright

    db, cache = Path(isolated_env["REPLENS_DB"]), Path(isolated_env["REPLENS_CACHE"])
    build_datasets(db, cache, tmp_path / "images")
    monkeypatch.setenv("REPLENS_EMBED_CHUNK", "4")  # many transactions each: the two runs interleave
    SHOTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(db, cache, tmp_path / "server.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            pages = {}
            for name in SIZES:
                context = browser.new_context(viewport={"width": 1300, "height": 1000})
                context.set_default_timeout(TIMEOUT_MS)
                pages[name] = context.new_page()
                open_dataset(pages[name], url, name)
            for page in pages.values():  # back to back: the second starts while the first runs
                page.get_by_role("button", name="Extract").click()
            for name, page in pages.items():
                page.get_by_text(
                    re.compile(rf"{name}.*: {SIZES[name]} embedded, 0 already cached, 0 failed")
                ).wait_for()
                settle(page)
                page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        finally:
            browser.close()

        store = Store(db, cache)  # the server is still up: it holds the file only while working
        try:
            for name, n in SIZES.items():
                frame, matrix = store.load_embeddings(name, PIXELS_KEY)
                assert matrix.shape[0] == n and frame["content_hash"].is_unique
            assert store.count_embeddings(PIXELS_KEY) == sum(SIZES.values())
            runs = store.runs("embed").set_index("dataset")
        finally:
            store.close()
    assert sorted(runs.index) == sorted(SIZES) and set(runs["status"]) == {"done"}
    a, b = (runs.loc[name] for name in SIZES)
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]  # they ran together
