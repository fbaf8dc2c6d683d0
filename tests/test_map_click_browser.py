"""Clicking one point on the Map shows its image, in a real browser (issue 10, item 2).

Starts ``streamlit run app.py`` on a store with one dataset (8 images, pixels embeddings), opens
the Map in Debian's Chromium and clicks a point's own screen position, computed by the drawn map
from its view (``pagePoint``: the pixel the renderer paints the point on), not guessed. The
inspect panel must then name that point's image, and the toolbar must not cover the legend title
(item 10b). Screenshot: ``test-output/map_click/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core import images
from core.encoders import load_encoder
from core.extract import embed_dataset
from core.store import Store
from tests.browser import browser_page, settle, streamlit_server
from tests.conftest import build_folder

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "map_click"
TIMEOUT_MS = 90_000
PIXELS_KEY = "pixels@v1/pixels/none"

MAP = "window.__replensBigmap.maps.get('map_chart')"
# The page position of point ``i`` (a row of the frame the Map draws), and whether it is in view.
POINT_JS = f"(i) => {MAP}.pagePoint(i)"


def _boxes_overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Dataset 'shapes' (8 images in cats/ dogs/ birds/) with pixels embeddings; the frame the Map draws."""
    base = tmp_path_factory.mktemp("map_click")
    db, cache = base / "replens.duckdb", base / "cache"
    store = Store(db, cache)
    try:
        build_folder(base / "images")
        scan = images.scan(base / "images", cache_dir=cache)
        store.ingest("shapes", scan.root, scan.records, scan.skipped)
        embed_dataset(store, "shapes", load_encoder("pixels", "cpu"), workers=1)
        frame, _ = store.load_embeddings("shapes", PIXELS_KEY)
    finally:
        store.close()
    return {
        "base": base,
        "db": db,
        "cache": cache,
        "paths": frame["rel_path"].tolist(),
        "labels": frame["label"].tolist(),
    }


@pytest.fixture(scope="module")
def server(world: dict[str, object]) -> Iterator[str]:
    base = Path(str(world["base"]))
    with streamlit_server(Path(str(world["db"])), Path(str(world["cache"])), base / "server.log") as url:
        yield url


def test_clicking_one_point_shows_its_image(server: str, world: dict[str, object]) -> None:
    paths = list(world["paths"])  # type: ignore[call-overload]
    labels = list(world["labels"])  # type: ignore[call-overload]
    with browser_page(width=1440, height=1400, timeout_ms=TIMEOUT_MS) as page:
        page.goto(f"{server}/map")
        page.get_by_text(f"{len(paths)} points").wait_for()
        page.wait_for_function(
            f"(n) => {{ const m = window.__replensBigmap && {MAP}; return !!m && m.stats.ready && m.stats.n === n; }}",
            arg=8,
        )
        settle(page)
        page.get_by_text("Click a point to see its image here").wait_for()

        # The toolbar does not cover the legend title (item 10b).
        title = page.locator(".rl-legend h4").first.bounding_box()
        toolbar = page.locator(".rl-bar").first.bounding_box()
        assert title is not None and toolbar is not None
        assert not _boxes_overlap(title, toolbar), (title, toolbar)

        # Click two points of different folders, one after the other: each time the panel shows that image.
        first_of = {label: labels.index(label) for label in dict.fromkeys(labels)}
        for row in list(first_of.values())[:2]:
            point = page.evaluate(POINT_JS, row)
            assert point["inView"]
            page.mouse.move(point["x"], point["y"])
            page.wait_for_timeout(200)
            page.mouse.click(point["x"], point["y"])
            settle(page)
            page.get_by_text("Selection · 1 images").wait_for(timeout=20_000)
            assert page.evaluate(f"() => Array.from({MAP}.selection)") == [row]
            shown = page.locator('[data-testid="stMarkdownContainer"] strong').filter(has_text=".png").first
            shown.wait_for()
            # The panel follows the click (the first click's panel is replaced, not kept).
            page.locator('[data-testid="stMarkdownContainer"] strong').filter(has_text=paths[row]).first.wait_for()
            assert shown.inner_text() == paths[row]
            page.locator('[data-testid="stImage"] img').first.wait_for()
        assert page.get_by_text("Click a point to see its image here").count() == 0
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "clicked.png"), full_page=True)
