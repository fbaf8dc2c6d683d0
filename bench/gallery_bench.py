"""How long the Map page's selection gallery (60 thumbnails, one page) takes to appear.

Opens the real app in headless Chromium against an existing store (default: the demo DB),
box-selects every point and times from mouse-up until 60 gallery images have loaded.
Prints JSON. Run `make demo` first (or point REPLENS_DB at a store with embeddings).

    .venv/bin/python bench/gallery_bench.py [--db cache/replens.duckdb] [--cache cache]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.browser import browser_page, settle, streamlit_server

GALLERY_IMAGES = """() => [...document.querySelectorAll('.rl-gallery img')]
    .filter(i => i.complete && i.naturalWidth > 0).length"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default="cache/replens.duckdb")
    parser.add_argument("--cache", default="cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "copy.duckdb"
        shutil.copy(args.db, db)  # the original may be open in a running app
        with streamlit_server(db, Path(args.cache).resolve(), Path(tmp) / "server.log") as url, browser_page() as page:
            page.goto(f"{url}/map")
            settle(page)
            page.get_by_text("PCA", exact=True).click()
            settle(page)
            page.locator('button[data-mode="box"]').click()  # the big map's Box select
            box = page.locator(".rl-overlay").first.bounding_box()
            page.mouse.move(box["x"] + 2, box["y"] + 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=8)
            page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=8)
            started = time.perf_counter()
            page.mouse.up()
            page.get_by_text("Selection ·").first.wait_for()
            rerun_done = time.perf_counter() - started
            page.locator(".rl-gallery").first.wait_for(state="attached")
            grid_attached = time.perf_counter() - started
            page.wait_for_function(f"() => ({GALLERY_IMAGES})() >= 60", timeout=60_000)
            seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "gallery_images": 60,
                "seconds_to_selection_heading": round(rerun_done, 2),
                "seconds_from_selection_to_60_thumbnails": round(seconds, 2),
                "grid_attached_s": round(grid_attached, 2),
                "thumbnails_decoded_after_grid_s": round(seconds - grid_attached, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
