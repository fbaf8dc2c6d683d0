"""Real browser, real server: upload a folder, extract, map, select, find neighbours.

Starts ``streamlit run app.py`` on a free port with its own REPLENS_DB/REPLENS_CACHE and
drives Debian's Chromium through Playwright. Screenshots go to ``test-output/e2e/``; with
REPLENS_UPDATE_SCREENSHOT=1 (``make screenshot``) the Map one (with a selection) is also copied to
``docs/map.png``, which the README shows. ``make test`` never rewrites that tracked file.

The folder goes in through the real ``webkitdirectory`` input: Playwright's
``set_input_files(<directory>)`` fills it the way a user's folder pick does, so the relative
paths (and thus the sub-folder labels) arrive as in a browser.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.browser import browser_page, settle, streamlit_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "e2e"
PER_CLASS = 15
TIMEOUT_MS = 90_000


def _make_images(root: Path) -> Path:
    """30 captioned images: round blobs in circles/, blocky ones in squares/."""
    rng = np.random.default_rng(0)
    for cls in ("circles", "squares"):
        (root / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            img = Image.new("RGB", (96, 96), tuple(int(v) for v in rng.integers(180, 255, 3)))
            draw = ImageDraw.Draw(img)
            colour = tuple(int(v) for v in rng.integers(0, 160, 3))
            box = [20 + i % 5, 20 + i % 7, 76 - i % 3, 76 - i % 4]
            (draw.ellipse if cls == "circles" else draw.rectangle)(box, fill=colour)
            img.save(root / cls / f"{cls[:-1]}_{i:02d}.png")
            (root / cls / f"{cls[:-1]}_{i:02d}.txt").write_text(f"a {cls[:-1]} number {i}")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("e2e")
    with streamlit_server(base / "db" / "replens.duckdb", base / "cache", base / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    with browser_page(timeout_ms=TIMEOUT_MS) as pg:
        yield pg


def shot(page: object, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def choose(page: object, label: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox labelled ``label``."""
    combo = page.get_by_role("combobox", name=label).first
    combo.click()
    combo.fill(option)  # filters the (virtualised) list down to the wanted entry
    page.get_by_role("option", name=option, exact=False).first.click()
    settle(page)


def test_upload_extract_map_select_neighbors(page: object, server: str, tmp_path: Path) -> None:
    folder = _make_images(tmp_path / "shapes")
    started = time.monotonic()

    # -- Data: upload the folder (webkitdirectory input keeps the sub-folders) -------------
    page.goto(server)
    page.get_by_role("heading", name="Data").wait_for()
    settle(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(folder))
    add = page.get_by_role("button", name="Add folder")
    page.wait_for_function(
        "() => [...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Add folder' && !b.disabled)"
    )
    settle(page)
    page.get_by_role("textbox", name="Dataset name").first.fill("e2e")
    page.keyboard.press("Enter")
    settle(page)
    add.click()
    page.get_by_text("e2e: 30 added").wait_for()
    settle(page)
    overview = page.locator('[data-testid="stDataFrame"]').first
    overview.wait_for()

    # -- Data: extract with the instant pixels baseline ------------------------------------
    choose(page, "Encoder", "Pixels baseline")
    page.get_by_text("Family:").first.wait_for()
    page.get_by_role("button", name="Extract").click()
    page.get_by_text("30 embedded").wait_for()
    settle(page)
    shot(page, "1-data")

    # -- Map: every point drawn, as the big map counts the points it drew --------------------
    page.get_by_role("link", name="Map").click()
    page.get_by_text("30 points").wait_for()
    big_map = "window.__replensBigmap?.maps.get('map_chart')"
    page.wait_for_function(f"(n) => {{ const m = {big_map}; return !!m && m.stats.ready && m.stats.n === n; }}", arg=30)
    settle(page)
    assert page.evaluate(f"() => {big_map}.stats.drawn") == 2 * PER_CLASS
    shot(page, "2-map")

    # -- Map: box-select everything by dragging over the plot ------------------------------
    # The map opens in pan mode (a click selects one point); box selection is a toolbar button.
    page.locator('button[data-mode="box"]').click()
    drag = page.locator(".rl-overlay").first
    box = drag.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=8)
    page.mouse.move(box["x"] + box["width"] - 5, box["y"] + box["height"] - 5, steps=8)
    page.mouse.up()
    page.get_by_text(f"Selection · {2 * PER_CLASS} images").wait_for()
    settle(page)
    # Gallery thumbnails + the inspected point's image; elements stream in, so wait for them.
    n_thumbs = "[...document.querySelectorAll('.rl-gallery img')].filter(i => i.complete && i.naturalWidth).length"
    page.wait_for_function(f"() => {n_thumbs} >= {2 * PER_CLASS}")
    page.locator('[data-testid="stImage"] img').first.wait_for()  # the inspected point's full image
    page.get_by_role("button", name="Paths (CSV)").wait_for()
    page.get_by_role("button", name="Files (zip)").wait_for()
    # The README's picture: the map with a selection, the inspected image and the gallery.
    picture = shot(page, "3-map-selection")
    if os.environ.get("REPLENS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(picture, ROOT / "docs" / "map.png")

    # -- Neighbors, opened from the inspected point ------------------------------------
    query_path = page.locator('[data-testid="stMarkdownContainer"] strong').filter(has_text=".png").first.inner_text()
    page.get_by_role("button", name="Find neighbours").click()
    page.get_by_role("heading", name="Neighbors").wait_for()
    settle(page)
    page.get_by_text(f"Query: {query_path}").wait_for()
    page.get_by_text("1.000 · ").first.wait_for()
    settle(page)
    captions = page.locator(".rl-gallery figcaption").all_inner_texts()
    results = [c for c in captions if not c.startswith("Query:")]
    assert results, captions
    assert results[0] == f"1.000 · {query_path.rsplit('/', 1)[-1]}"
    shot(page, "4-neighbors")
    assert time.monotonic() - started < 180
