"""The Map at a million points: the real app in headless Chromium, against the old Plotly page.

Builds a synthetic store with the Store API (a real DuckDB file): dataset ``big`` of ``--n`` image
records in 20 folders and dataset ``small`` of ``--small`` records, each with 4-d vectors and a
stored UMAP layout under the Map's default parameters (so the page reads it, as for any layout
made once). Image files and thumbnails exist only for the images the gallery shows.

Then it drives ``streamlit run app.py`` in Debian's Chromium (the flags the browser tests use:
``--disable-gpu``, so WebGL is SwiftShader and the map draws on its 2-D canvas path) and times:

- ``map_1m_cold_server_s``: navigation to the Map of ``big`` on a fresh server until every point is
  drawn (the server reads the embeddings and the layout from DuckDB first);
- ``map_1m_ready_s``: the same in a new browser session once the server has them in memory (the
  "cached map": nothing cached in the browser, so the points are all sent again);
- ``map_1m_revisit_s``: back to the Map by the sidebar after the Data page, in the same session
  (the browser keeps the points: nothing is re-sent);
- ``selection_100k_s``: mouse-up of a box around ~10 % of the points until the selection's count
  and the first page of its gallery are on the page;
- ``map_100k_ready_s``: a new session opening the Map of ``small`` (server cache warm);
- ``map_1m_first_frame_ms`` (one draw of every point), ``map_1m_pan_fps`` (a 1 s drag, redrawn in
  the browser), ``map_1m_webgl_frame_ms`` (one frame on the WebGL renderer, forced), and the
  browser's timeline of the ready visit (``map_1m_timeline_*_ms`` from navigation start: map
  element mounted, blobs in, points drawn);
- the old page (``pages/map.py`` as of commit ``PLOTLY_COMMIT``, run on its own) on the same
  store: ``plotly_100k_ready_s`` / ``plotly_1m_ready_s`` until its WebGL traces are drawn, how many
  points it draws (it samples 50,000 above 50,000), and ``plotly_selection_s`` for the same box.

    .venv/bin/python bench/map_scale.py --n 1000000 [--small 100000] [--workdir /tmp/map_scale]

Prints one JSON object (numbers, and ``notes`` on what did not run). ``measure_map(n_points,
n_small, workdir)`` returns the numbers (``dict[str, float]``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import images, reduce  # noqa: E402
from core.images import ImageRecord  # noqa: E402
from core.store import Store  # noqa: E402

KEY = "bench@v1/last/cls"
DIM = 4
N_FOLDERS = 20
UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "random_state": 42}
PLOTLY_COMMIT = "ad7b71c"  # the last main commit whose Map page drew with Plotly
GALLERY_PAGE = 60
MAP_JS = "() => window.__replensBigmap?.maps.get('map_chart')"
READY_JS = f"(n) => {{ const m = ({MAP_JS})(); return !!m && m.stats.ready && m.stats.n === n && m.stats.drawn > 0; }}"
PLOTLY_DRAWN_JS = (
    "() => { const p = document.querySelector('.js-plotly-plot');"
    " return p && p._fullData && p.querySelector('canvas') ? p._fullData.reduce((n, t) => n + t._length, 0) : 0 }"
)


def layout(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(folder per point, float32 coordinates): 20 Gaussian blobs, one per folder."""
    rng = np.random.default_rng(seed)
    folder = rng.integers(0, N_FOLDERS, n)
    centres = rng.normal(0, 6, (N_FOLDERS, 2))
    return folder, (centres[folder] + rng.normal(0, 1, (n, 2))).astype(np.float32)


def records(n: int, folder: np.ndarray, prefix: str) -> list[ImageRecord]:
    return [
        ImageRecord(
            content_hash=f"{prefix}{i:030x}",
            rel_path=f"f{folder[i]:02d}/img_{i:07d}.jpg",
            labels=(f"f{folder[i]:02d}",),
            width=640,
            height=480,
            n_bytes=50_000,
            format="JPEG",
            mtime=0.0,
            caption=None,
        )
        for i in range(n)
    ]


def add_dataset(store: Store, name: str, n: int, seed: int, source: Path) -> None:
    """Dataset ``name`` with vectors and the layout the Map opens with, through the Store API."""
    folder, coords = layout(n, seed)
    recs = records(n, folder, prefix=f"{seed:02x}")
    store.ingest(name, str(source), recs, [])
    hashes = [r.content_hash for r in recs]
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    store.write_embeddings(KEY, hashes, vectors)
    # The layout the Map page asks for at this size (above 100k points, the sampled UMAP), and the
    # plain UMAP the old Plotly page (the baseline) asks for at every size.
    frame, _ = store.load_embeddings(name, KEY)
    choice = reduce.layout_for_size("umap", UMAP_DEFAULTS, n)
    for method, wanted in {(choice.method, json.dumps(choice.params)), ("umap", json.dumps(UMAP_DEFAULTS))}:
        params = reduce.make_reducer(method, json.loads(wanted)).get_params()
        key = reduce.projection_key(frame["content_hash"].tolist(), KEY, method, params)
        store.save_projection(key, name, KEY, method, params, hashes, coords, 0.0)


def build_store(workdir: Path, n_points: int, n_small: int) -> dict[str, Path]:
    """The synthetic store (reused when ``workdir`` already holds one of these sizes)."""
    paths = {"db": workdir / "map_scale.duckdb", "cache": workdir / "cache", "source": workdir / "images"}
    marker = workdir / "built.json"
    wanted = {"n": n_points, "small": n_small, "dim": DIM, "layout": "as the page picks it, and plain umap"}
    if marker.exists() and json.loads(marker.read_text()) == wanted and paths["db"].exists():
        return paths
    for stale in (paths["db"], Path(f"{paths['db']}.wal")):
        stale.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    store = Store(paths["db"], paths["cache"])
    try:
        store.register_encoder(KEY, "bench", "v1", "last", "cls", DIM, {"id": "bench"})
        add_dataset(store, "small", n_small, 2, paths["source"])
        add_dataset(store, "big", n_points, 1, paths["source"])  # last ingested: the one a new session opens
        store.remember_dataset("big")
    finally:
        store.close()
    marker.write_text(json.dumps(wanted))
    return paths


def selection_box(coords: np.ndarray, share: float = 0.1) -> tuple[float, float, float, float]:
    """A data-space box (x0, x1, y0, y1) holding about ``share`` of the points: a band across the map."""
    x0, x1 = np.quantile(coords[:, 0], [0.5 - share / 2, 0.5 + share / 2])
    return float(x0), float(x1), float(coords[:, 1].min()) - 0.01, float(coords[:, 1].max()) + 0.01


def inside(coords: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, x1, y0, y1 = box
    return np.flatnonzero((coords[:, 0] >= x0) & (coords[:, 0] <= x1) & (coords[:, 1] >= y0) & (coords[:, 1] <= y1))


def frame_order(n: int, seed: int) -> np.ndarray:
    """Point index of each row of the page's frame (the store lists images by path)."""
    folder, _ = layout(n, seed)
    return np.lexsort((np.arange(n), folder))


def legacy_gallery_points(n: int, seed: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """The points the old page's gallery shows first for ``box``: it draws a per-folder sample of
    50,000, one trace per folder (largest first), and lists a selection trace by trace."""
    import pandas as pd

    from core.mapfigure import _groups, colour_by_folder, display_rows

    folder, coords = layout(n, seed)
    order = frame_order(n, seed)
    frame = pd.DataFrame({"label": [f"f{f:02d}" for f in folder[order]]})
    rows = display_rows(frame)
    firsts: list[int] = []
    for _, members, _ in _groups(colour_by_folder(frame), n, rows):
        points = order[members]
        firsts.extend(points[np.isin(points, inside(coords, box))][: GALLERY_PAGE + 1 - len(firsts)].tolist())
        if len(firsts) > GALLERY_PAGE:
            break
    return np.array(firsts, dtype=np.int64)


def prepare_gallery_images(
    paths: dict[str, Path], n: int, seed: int, rows: np.ndarray, *, ordered: bool = False
) -> None:
    """Files and thumbnails for the first page of the gallery of ``rows`` (and its first image);
    ``rows`` are listed by path unless ``ordered`` says they are in the gallery's order already."""
    from PIL import Image

    folder, _ = layout(n, seed)
    prefix = f"{seed:02x}"
    order = np.arange(len(rows)) if ordered else np.argsort([f"f{folder[i]:02d}/img_{i:07d}.jpg" for i in rows])
    for i in rows[order][: GALLERY_PAGE + 1]:
        rel = f"f{folder[i]:02d}/img_{i:07d}.jpg"
        target = paths["source"] / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            Image.new("RGB", (64, 48), (int(i) % 255, 90, 160)).save(target, format="JPEG")
        images.ensure_thumbnail(paths["cache"], f"{prefix}{int(i):030x}", target.read_bytes())


def _chromium() -> Any:
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    pw = sync_playwright().start()
    return pw, pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def _new_page(browser: Any) -> Any:
    page = browser.new_context(viewport={"width": 1440, "height": 1100}).new_page()
    page.set_default_timeout(300_000)
    return page


def _open_map(page: Any, url: str, n: int) -> float:
    start = time.perf_counter()
    page.goto(f"{url}/map")
    page.wait_for_function(READY_JS, arg=n, polling="raf")
    return round(time.perf_counter() - start, 3)


def _revisit(page: Any, n: int) -> float:
    """To the Data page and back to the Map by the sidebar (one session: the browser keeps the blobs)."""
    page.get_by_role("link", name="Data").click()
    page.get_by_role("heading", name="Data").first.wait_for()
    page.wait_for_function(f"() => {{ const m = ({MAP_JS})(); return !m || !m.el.overlay.isConnected; }}")
    start = time.perf_counter()
    page.get_by_role("link", name="Map").click()
    page.wait_for_function(f"(n) => ({READY_JS})(n) && ({MAP_JS})().el.overlay.isConnected", arg=n, polling="raf")
    return round(time.perf_counter() - start, 3)


def _drag(page: Any, a: tuple[float, float], b: tuple[float, float]) -> None:
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, steps=4)
    page.mouse.move(*b, steps=4)


def _box_select(page: Any, box: tuple[float, float, float, float]) -> tuple[float, int]:
    """Box-select ``box`` (data space) on the big map; seconds from mouse-up to the gallery, count."""
    page.locator('button[data-mode="box"]').click()
    a = page.evaluate(f"([x, y]) => ({MAP_JS})().dataToPage(x, y)", [box[0], box[3]])
    b = page.evaluate(f"([x, y]) => ({MAP_JS})().dataToPage(x, y)", [box[1], box[2]])
    _drag(page, (a[0], a[1]), (b[0], b[1]))
    start = time.perf_counter()
    page.mouse.up()
    page.get_by_text("Selection ·").wait_for()
    page.locator(".rl-gallery img").first.wait_for()
    seconds = round(time.perf_counter() - start, 3)
    return seconds, int(page.evaluate(f"() => ({MAP_JS})().stats.selected"))


def open_big_first(paths: dict[str, Path]) -> None:
    """New sessions open the dataset used last: make that ``big`` (a run may have left ``small``)."""
    store = Store(paths["db"], paths["cache"])
    try:
        store.remember_dataset("big")
    finally:
        store.close()


def measure_bigmap(paths: dict[str, Path], n_points: int, n_small: int, box: tuple) -> dict[str, Any]:
    from tests.browser import streamlit_server

    open_big_first(paths)
    out: dict[str, Any] = {}
    with streamlit_server(paths["db"], paths["cache"], paths["db"].parent / "server.log") as url:
        pw, browser = _chromium()
        try:
            page = _new_page(browser)
            out["map_1m_cold_server_s"] = _open_map(page, url, n_points)
            page = _new_page(browser)
            out["map_1m_ready_s"] = _open_map(page, url, n_points)
            stats = page.evaluate(f"() => ({MAP_JS})().stats")
            out["map_1m_points_drawn"] = stats["drawn"]
            out["map_1m_canvas_renderer"] = float(stats["renderer"] == "canvas")  # 1: the 2-D canvas path drew it
            out["map_1m_first_frame_ms"] = round(stats["frameMs"], 1)
            out["map_1m_timeline_update_ms"] = round(stats["updateAt"])  # from navigation start, browser clock
            out["map_1m_timeline_blobs_ms"] = round(stats["blobsAt"])
            out["map_1m_timeline_drawn_ms"] = round(stats["firstFrameAt"])
            out.update(_pan_frames(page))
            out["selection_100k_s"], out["selection_100k_points"] = _box_select(page, box)
            out["map_1m_revisit_s"] = _revisit(page, n_points)
            # Open ``small`` once (loads it into the server), then time a new session on it.
            pick_dataset(page, "small")
            page.wait_for_function(READY_JS, arg=n_small, polling="raf")
            page = _new_page(browser)
            out["map_100k_ready_s"] = _open_map(page, url, n_small)
            pick_dataset(page, "big")  # the next session (and run) opens big again
            page.wait_for_function(READY_JS, arg=n_points, polling="raf")
            out["map_1m_webgl_frame_ms"] = _webgl_frame_ms(browser, url, n_points)
        finally:
            browser.close()
            pw.stop()
    return out


def _webgl_frame_ms(browser: Any, url: str, n: int) -> float:
    """One frame of the map on the WebGL renderer (forced; on this software GL it is not the default),
    waited out with a pixel read."""
    page = _new_page(browser)
    page.add_init_script("localStorage.setItem('replens.bigmap.renderer', 'webgl')")
    _open_map(page, url, n)
    return float(
        page.evaluate(
            f"""() => {{ const m = ({MAP_JS})(); const gl = m.renderer.gl; if (!gl) return -1;
            const px = new Uint8Array(4); const times = [];
            for (let k = 0; k < 3; k++) {{ const t = performance.now(); m.drawNow();
              gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px); times.push(performance.now() - t); }}
            return Math.round(Math.min(...times)); }}"""
        )
    )


def _pan_frames(page: Any) -> dict[str, float]:
    """Drag the 1M map for ~1 s: frames drawn and the mean frame time (all client-side)."""
    start = page.evaluate(f"() => ({MAP_JS})().stats.frames")
    box = page.locator(".rl-overlay").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    t0 = time.perf_counter()
    page.mouse.move(cx, cy)
    page.mouse.down()
    for k in range(20):
        page.mouse.move(cx + 3 * k, cy + 2 * k)
    page.mouse.up()
    page.wait_for_timeout(100)
    seconds = time.perf_counter() - t0
    frames = page.evaluate(f"() => ({MAP_JS})().stats.frames") - start
    page.locator('button[data-act="reset"]').click()
    return {
        "map_1m_pan_frames": frames,
        "map_1m_pan_s": round(seconds, 3),
        "map_1m_pan_fps": round(frames / seconds, 1),
    }


def pick_dataset(page: Any, name: str) -> None:
    page.get_by_role("combobox", name="Dataset").click()
    page.get_by_role("option", name=name, exact=True).click()


def old_page_script(workdir: Path) -> Path | None:
    """The Plotly Map page as of ``PLOTLY_COMMIT``, runnable on its own (None without git)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{PLOTLY_COMMIT}:pages/map.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    script = workdir / "plotly_page" / "plotly_map.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(source)
    return script


def measure_plotly(paths: dict[str, Path], n_points: int, n_small: int, script: Path, box: tuple) -> dict[str, Any]:
    from tests.browser import streamlit_server

    open_big_first(paths)
    out: dict[str, Any] = {}
    with streamlit_server(paths["db"], paths["cache"], paths["db"].parent / "plotly.log", script=str(script)) as url:
        pw, browser = _chromium()
        try:
            for label, n, dataset in (("1m", n_points, "big"), ("100k", n_small, "small")):
                page = _new_page(browser)
                page.goto(url)
                if dataset != "big":
                    page.get_by_text(f"{n_points:,} points").first.wait_for()
                    pick_dataset(page, dataset)
                page.get_by_text(f"{n:,} points").first.wait_for()
                page.wait_for_function(f"() => ({PLOTLY_DRAWN_JS})() > 0", polling="raf")  # warm the server
                page = _new_page(browser)
                start = time.perf_counter()
                page.goto(url)
                page.get_by_text(f"{n:,} points").first.wait_for()
                page.wait_for_function(f"() => ({PLOTLY_DRAWN_JS})() > 0", polling="raf")
                out[f"plotly_{label}_ready_s"] = round(time.perf_counter() - start, 3)
                out[f"plotly_{label}_points_drawn"] = page.evaluate(PLOTLY_DRAWN_JS)
                if label == "1m":
                    out["plotly_selection_s"], out["plotly_selection_points"] = _plotly_box(page, box)
        finally:
            browser.close()
            pw.stop()
    return out


def _plotly_box(page: Any, box: tuple) -> tuple[float, int]:
    page.locator(".js-plotly-plot").first.hover()
    page.locator('.js-plotly-plot .modebar-btn[data-title="Box Select"]').click()
    to_page = """([x, y]) => { const gd = document.querySelector('.js-plotly-plot');
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [r.left + gd._fullLayout.xaxis.l2p(x), r.top + gd._fullLayout.yaxis.l2p(y)]; }"""
    a = page.evaluate(to_page, [box[0], box[3]])
    b = page.evaluate(to_page, [box[1], box[2]])
    _drag(page, (a[0], a[1]), (b[0], b[1]))
    start = time.perf_counter()
    page.mouse.up()
    page.get_by_text("Selection ·").wait_for()
    page.locator(".rl-gallery img").first.wait_for()
    seconds = round(time.perf_counter() - start, 3)
    text = page.get_by_text("Selection ·").first.inner_text()
    return seconds, int(text.split("·")[1].split("images")[0].replace(",", "").strip())


def measure_map(n_points: int, n_small: int, workdir: Path) -> dict[str, float]:
    """Times (and counts) for the big map and the old Plotly page on a synthetic store under ``workdir``."""
    numbers, _ = measure_map_with_notes(n_points, n_small, workdir)
    return numbers


def measure_map_with_notes(n_points: int, n_small: int, workdir: Path) -> tuple[dict[str, float], list[str]]:
    """:func:`measure_map`, and notes on what did not run."""
    workdir = Path(workdir)
    started = time.perf_counter()
    paths = build_store(workdir, n_points, n_small)
    _, coords = layout(n_points, 1)
    box = selection_box(coords)
    expected = inside(coords, box)
    prepare_gallery_images(paths, n_points, 1, expected)
    prepare_gallery_images(paths, n_points, 1, legacy_gallery_points(n_points, 1, box), ordered=True)
    result: dict[str, Any] = {"n_points": n_points, "n_small": n_small, "store_build_s": 0.0}
    notes: list[str] = []
    result["store_build_s"] = round(time.perf_counter() - started, 1)
    result["selection_box_points_numpy"] = int(len(expected))
    result.update(measure_bigmap(paths, n_points, n_small, box))
    script = old_page_script(workdir)
    if script is None:
        notes.append(f"plotly baseline not run: git show {PLOTLY_COMMIT}:pages/map.py failed")
    else:
        try:
            result.update(measure_plotly(paths, n_points, n_small, script, box))
        except Exception as exc:  # the baseline is a reference, not the subject: report why it did not run
            notes.append(f"plotly baseline failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return {k: float(v) for k, v in result.items()}, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="points in the big dataset")
    parser.add_argument("--small", type=int, default=100_000, help="points in the small dataset")
    parser.add_argument("--workdir", type=Path, default=None, help="keep (and reuse) the store here")
    args = parser.parse_args()
    if args.workdir is not None:
        numbers, notes = measure_map_with_notes(args.n, args.small, args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            numbers, notes = measure_map_with_notes(args.n, args.small, Path(tmp))
    print(json.dumps({**numbers, "notes": notes}, indent=1))


if __name__ == "__main__":
    main()
