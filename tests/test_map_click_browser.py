"""Clicking one point on the Map shows its image, in a real browser (issue 10, item 2).

Starts ``streamlit run app.py`` on a store with one dataset (8 images, pixels embeddings), opens
the Map in Debian's Chromium and clicks a point's own screen position, computed from Plotly's
axes (``l2p``) of the drawn figure, not guessed. The inspect panel must then name that point's
image, and the toolbar must not cover the legend title (item 10b). Screenshot: ``test-output/map_click/``.
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

# The screen position (page pixels) of point ``i`` of trace ``t``, and that point's frame row
# (customdata), from the figure Plotly drew: axes l2p map data to plot pixels; the plot area starts
# at the drag layer's bounding box.
POINT_JS = """([t, i]) => {
  const gd = document.querySelector('.js-plotly-plot');
  const trace = gd._fullData[t];
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
  const x = trace.x[i], y = trace.y[i];
  return {px: box.left + xa.l2p(x), py: box.top + ya.l2p(y), row: trace.customdata[i],
          n: trace._length, name: trace.name};
}"""


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
    return {"base": base, "db": db, "cache": cache, "paths": frame["rel_path"].tolist()}


@pytest.fixture(scope="module")
def server(world: dict[str, object]) -> Iterator[str]:
    base = Path(str(world["base"]))
    with streamlit_server(Path(str(world["db"])), Path(str(world["cache"])), base / "server.log") as url:
        yield url


def test_clicking_one_point_shows_its_image(server: str, world: dict[str, object]) -> None:
    paths = list(world["paths"])  # type: ignore[call-overload]
    with browser_page(width=1440, height=1400, timeout_ms=TIMEOUT_MS) as page:
        page.goto(f"{server}/map")
        page.get_by_text(f"{len(paths)} points").wait_for()
        page.locator(".js-plotly-plot").first.wait_for()
        settle(page)
        page.get_by_text("Click a point to see its image here").wait_for()

        # The toolbar does not cover the legend title (item 10b).
        page.locator(".js-plotly-plot .legendtitletext").first.wait_for()
        title = page.locator(".js-plotly-plot .legendtitletext").first.bounding_box()
        page.locator(".js-plotly-plot").first.hover()  # the toolbar shows while the pointer is on the plot
        toolbar = page.locator(".js-plotly-plot .modebar").first.bounding_box()
        assert title is not None and toolbar is not None
        assert not _boxes_overlap(title, toolbar), (title, toolbar)

        # Click two different points, one after the other: each time the panel shows that image.
        for trace, index in ((0, 0), (1, 0)):
            point = page.evaluate(POINT_JS, [trace, index])
            path = paths[int(point["row"])]
            page.mouse.move(point["px"], point["py"])
            page.wait_for_timeout(200)
            page.mouse.click(point["px"], point["py"])
            settle(page)
            page.get_by_text("Selection · 1 images").wait_for(timeout=20_000)
            shown = page.locator('[data-testid="stMarkdownContainer"] strong').filter(has_text=".png").first
            shown.wait_for()
            assert shown.inner_text() == path
            page.locator('[data-testid="stImage"] img').first.wait_for()
        assert page.get_by_text("Click a point to see its image here").count() == 0
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "clicked.png"), full_page=True)
