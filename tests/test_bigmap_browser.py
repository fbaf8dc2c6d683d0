"""The big map in a real browser: every point drawn (on the 2-D canvas and on WebGL), a click picks
that image, a box and a lasso select exactly the points inside them, the legend is the palette's,
the status line says when points share pixels, and panning or zooming asks the server nothing.

A store with dataset ``dense`` (12,000 points in six Gaussian blobs, one per folder, so many
share pixels) and ``sparse`` (a 30 x 30 lattice, no two in one pixel), layouts stored under the
Map's default UMAP parameters. Expected values come from numpy on the stored coordinates, with
the map's view (centre and scale) and the canvas' position read from the page.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core import reduce
from core.images import ImageRecord
from core.palette import category_colour
from core.store import Store
from tests.browser import browser_page, settle, streamlit_server

KEY = "bench@v1/last/cls"
UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "random_state": 42}
FOLDER_SIZES = {"sky": 3000, "sea": 2500, "sand": 2200, "rock": 1800, "wood": 1500, "snow": 1000}
N_DENSE = sum(FOLDER_SIZES.values())
N_SPARSE = 900
BACKGROUND = np.array([250, 250, 252])
HIT_PX = 8
MAP = "window.__replensBigmap.maps.get('map_chart')"
READY = (
    "(n) => { const m = window.__replensBigmap?.maps.get('map_chart'); "
    "return !!m && m.stats.ready && m.stats.n === n; }"
)
SNAPSHOT_JS = f"""() => {{
  const m = {MAP};
  const canvas = m.renderer.canvas;
  const copy = document.createElement('canvas');
  copy.width = canvas.width; copy.height = canvas.height;
  const ctx = copy.getContext('2d');
  ctx.drawImage(canvas, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let text = '';
  for (let k = 0; k < data.length; k += 0x8000) text += String.fromCharCode.apply(null, data.subarray(k, k + 0x8000));
  const rect = m.el.overlay.getBoundingClientRect();
  return {{pixels: btoa(text), w: canvas.width, h: canvas.height, view: m.view, left: rect.left, top: rect.top,
          stats: m.stats}};
}}"""


def _records(names: list[str], labels: list[str], prefix: str) -> list[ImageRecord]:
    return [
        ImageRecord(f"{prefix}{i:030x}", name, (label,), 64, 48, 1000, "PNG", 0.0, None)
        for i, (name, label) in enumerate(zip(names, labels))
    ]


def _add(store: Store, name: str, recs: list[ImageRecord], coords_by_hash: dict[str, np.ndarray], src: Path) -> dict:
    store.ingest(name, str(src), recs, [])
    hashes = [r.content_hash for r in recs]
    store.write_embeddings(KEY, hashes, np.random.default_rng(0).normal(size=(len(recs), 4)).astype(np.float32))
    frame, _ = store.load_embeddings(name, KEY)
    params = reduce.make_reducer("umap", UMAP_DEFAULTS).get_params()
    key = reduce.projection_key(frame["content_hash"].tolist(), KEY, "umap", params)
    coords = np.array([coords_by_hash[h] for h in frame["content_hash"]], dtype=np.float32)
    store.save_projection(key, name, KEY, "umap", params, frame["content_hash"].tolist(), coords, 0.0)
    return {"coords": coords, "paths": frame["rel_path"].tolist(), "labels": frame["label"].tolist()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("bigmap")
    db, cache, src = base / "replens.duckdb", base / "cache", base / "images"
    rng = np.random.default_rng(7)
    labels = [label for label, size in FOLDER_SIZES.items() for _ in range(size)]
    centres = {label: rng.normal(0, 8, 2) for label in FOLDER_SIZES}
    dense_xy = np.array([centres[lab] + rng.normal(0, 1.2, 2) for lab in labels], dtype=np.float32)
    names = [f"{lab}/img_{i:05d}.png" for i, lab in enumerate(labels)]
    grid = np.array([(i % 30, i // 30) for i in range(N_SPARSE)], dtype=np.float32)
    store = Store(db, cache)
    try:
        store.register_encoder(KEY, "bench", "v1", "last", "cls", 4, {"id": "bench"})
        sparse_recs = _records([f"grid/p_{i:03d}.png" for i in range(N_SPARSE)], ["grid"] * N_SPARSE, "bb")
        _add(store, "sparse", sparse_recs, {r.content_hash: g for r, g in zip(sparse_recs, grid)}, src)
        dense_recs = _records(names, labels, "aa")
        dense = _add(store, "dense", dense_recs, {r.content_hash: p for r, p in zip(dense_recs, dense_xy)}, src)
        store.remember_dataset("dense")
    finally:
        store.close()
    return {"db": db, "cache": cache, "src": src, "base": base, **dense}


@pytest.fixture(scope="module")
def server(world: dict) -> Iterator[str]:
    with streamlit_server(world["db"], world["cache"], world["base"] / "server.log") as url:
        yield url


def _open(page: object, url: str, n: int = N_DENSE) -> None:
    page.goto(f"{url}/map")  # type: ignore[attr-defined]
    page.wait_for_function(READY, arg=n, polling="raf")  # type: ignore[attr-defined]


def _snapshot(page: object) -> dict:
    shot = page.evaluate(SNAPSHOT_JS)  # type: ignore[attr-defined]
    shot["pixels"] = np.frombuffer(base64.b64decode(shot["pixels"]), np.uint8).reshape(shot["h"], shot["w"], 4)
    return shot


def _centres(coords: np.ndarray, shot: dict) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (column, row) of every point's centre, computed as the renderers compute them."""
    view, w, h = shot["view"], shot["w"], shot["h"]
    xy = coords.astype(np.float64)
    fx = (xy[:, 0] - view["cx"]) * view["s"] + w / 2
    fy = h / 2 - (xy[:, 1] - view["cy"]) * view["s"]
    return np.floor(fx).astype(int), np.floor(fy).astype(int)


def _page_xy(coords: np.ndarray, shot: dict) -> np.ndarray:
    px, py = _centres(coords, shot)
    return np.c_[shot["left"] + px + 0.5, shot["top"] + py + 0.5]


@pytest.mark.parametrize("renderer", ["canvas", "webgl"])
def test_every_point_is_drawn(server: str, world: dict, renderer: str) -> None:
    with browser_page() as page:
        page.add_init_script(f"localStorage.setItem('replens.bigmap.renderer', '{renderer}')")
        _open(page, server)
        shot = _snapshot(page)
        assert shot["stats"]["renderer"] == renderer
        assert shot["stats"]["drawn"] == N_DENSE
        px, py = _centres(world["coords"], shot)
        assert px.min() >= 0 and py.min() >= 0 and px.max() < shot["w"] and py.max() < shot["h"]  # all in view
        painted = (shot["pixels"][:, :, :3] != BACKGROUND).any(axis=2)
        at_centres = painted[py, px]
        # The canvas paints each centre pixel; WebGL's points are centred on the unrounded position.
        assert at_centres.mean() >= (1.0 if renderer == "canvas" else 0.995), at_centres.mean()
        assert painted.sum() >= len(set(zip(px.tolist(), py.tolist())))


def test_legend_is_the_palette_and_points_wear_its_colours(server: str, world: dict) -> None:
    with browser_page() as page:
        _open(page, server)
        entries = page.locator(".rl-entry")
        names = [entries.nth(k).inner_text() for k in range(entries.count())]
        colours = [entries.nth(k).get_attribute("data-colour") for k in range(entries.count())]
        by_size = sorted(FOLDER_SIZES, key=lambda f: -FOLDER_SIZES[f])
        assert names == [f"{f} ({FOLDER_SIZES[f]:,})" for f in by_size]
        assert colours == [category_colour(i) for i in range(len(by_size))]
        # A point whose centre pixel no other point's disc covers shows its folder's colour at the map's opacity.
        shot = _snapshot(page)
        px, py = _centres(world["coords"], shot)
        radius = shot["stats"]["radius"]
        cover = np.zeros((shot["h"] + 2 * radius, shot["w"] + 2 * radius), int)
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dx * dx + dy * dy <= radius * radius + radius:  # the canvas render's disc
                    np.add.at(cover, (py + dy + radius, px + dx + radius), 1)
        alone = np.flatnonzero(cover[py + radius, px + radius] == 1)
        assert len(alone) > 0
        i = int(alone[0])
        colour = np.array([int(colours[by_size.index(world["labels"][i])][k : k + 2], 16) for k in (1, 3, 5)])
        expected = colour * 0.85 + BACKGROUND * 0.15
        assert np.abs(shot["pixels"][py[i], px[i], :3] - expected).max() <= 2


def test_status_counts_shared_pixels_and_says_when_there_are_none(server: str, world: dict) -> None:
    with browser_page() as page:
        _open(page, server)
        shot = _snapshot(page)
        px, py = _centres(world["coords"], shot)
        counts = np.bincount(py * shot["w"] + px)
        shared = int(counts[counts > 1].sum())
        assert shared > 0
        status = page.get_by_test_id("bigmap-status").inner_text()
        assert f"{shared:,} share a screen pixel" in status and "blended" in status
        assert f"{N_DENSE:,} in view, every one drawn (no sampling)" in status
        page.get_by_role("combobox", name="Dataset").click()
        page.get_by_role("option", name="sparse", exact=True).click()
        page.wait_for_function(READY, arg=N_SPARSE, polling="raf")
        status = page.get_by_test_id("bigmap-status").inner_text()
        assert "no two points share a pixel" in status and "share a screen pixel" not in status
        page.get_by_role("combobox", name="Dataset").click()
        page.get_by_role("option", name="dense", exact=True).click()  # the next session opens dense again
        page.wait_for_function(READY, arg=N_DENSE, polling="raf")


def test_hover_and_click_show_that_image_and_panning_asks_the_server_nothing(server: str, world: dict) -> None:
    with browser_page() as page:
        received: list[int] = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(len(frame))))
        _open(page, server)
        settle(page)
        blob_bytes = page.evaluate(f"() => window.__replensBigmap.raw.get({MAP}.pointsId).byteLength")
        chunks = page.evaluate("() => window.__replensBigmap.chunksReceived")
        assert chunks >= 2 and sum(received) > blob_bytes  # the first load carried the points
        # Pan and zoom: drawn again client-side, not one websocket message.
        received.clear()
        box = page.locator(".rl-overlay").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        frames = page.evaluate(f"() => {MAP}.stats.frames")
        page.mouse.move(cx, cy)
        page.mouse.wheel(0, -240)
        page.mouse.down()
        page.mouse.move(cx + 40, cy + 25, steps=5)
        page.mouse.up()
        page.wait_for_timeout(500)
        assert page.evaluate(f"() => {MAP}.stats.frames") > frames
        assert received == []
        page.locator('button[data-act="reset"]').click()
        page.wait_for_timeout(200)
        # A point far from any other on screen, clicked at its own pixel.
        shot = _snapshot(page)
        where = _page_xy(world["coords"], shot)
        gaps = np.sqrt(((where[:, None, :] - where[None, ::7, :]) ** 2).sum(-1))
        gaps[gaps == 0] = np.inf
        i = int(np.argmax(gaps.min(axis=1)))
        assert gaps[i].min() > 2 * HIT_PX
        # Hover names the point: its file and its folder (the colouring's category).
        page.mouse.move(float(where[i, 0]) - 20, float(where[i, 1]))
        page.mouse.move(float(where[i, 0]), float(where[i, 1]), steps=4)
        tip = page.locator(".rl-tip")
        tip.wait_for()
        assert tip.inner_text().splitlines() == [world["paths"][i], f"Folder: {world['labels'][i]}"]
        received.clear()
        page.mouse.click(float(where[i, 0]), float(where[i, 1]))
        page.get_by_text("Selection · 1 images").wait_for()
        settle(page)
        shown = page.locator('[data-testid="stMarkdownContainer"] strong').filter(has_text=".png").first
        assert shown.inner_text() == world["paths"][i]
        assert page.evaluate(f"() => Array.from({MAP}.selection)") == [i]
        # The rerun the click caused sent no blob again (the browser keeps them by content id).
        assert page.evaluate("() => window.__replensBigmap.chunksReceived") == chunks
        assert sum(received) < blob_bytes / 2, (sum(received), blob_bytes)
        # Nor does coming back to the Map from another page of the same session.
        page.get_by_role("link", name="Data").click()
        page.get_by_role("heading", name="Data").first.wait_for()
        page.get_by_role("link", name="Map").click()
        page.wait_for_function(f"(n) => ({READY})(n) && {MAP}.el.overlay.isConnected", arg=N_DENSE, polling="raf")
        assert page.evaluate("() => window.__replensBigmap.chunksReceived") == chunks


def _select(page: object, mode: str, path: list[tuple[float, float]]) -> dict:
    page.locator(f'button[data-mode="{mode}"]').click()  # type: ignore[attr-defined]
    page.mouse.move(*path[0])  # type: ignore[attr-defined]
    page.mouse.down()  # type: ignore[attr-defined]
    for point in path[1:]:
        page.mouse.move(*point, steps=3)  # type: ignore[attr-defined]
    page.mouse.up()  # type: ignore[attr-defined]
    page.get_by_text(re.compile(r"Selection · [\d,]+ images")).wait_for()  # type: ignore[attr-defined]
    settle(page)
    return page.evaluate(f"() => ({{rows: Array.from({MAP}.selection), last: {MAP}.lastSelection}})")  # type: ignore[attr-defined]


def _folder_caption(labels: list[str], rows: np.ndarray) -> str:
    values, counts = np.unique(np.asarray(labels)[rows], return_counts=True)
    order = np.lexsort((values, -counts))
    return "By folder: " + ", ".join(f"{values[k]} {counts[k]}" for k in order[:8])


def test_box_selection_is_exactly_the_points_inside(server: str, world: dict) -> None:
    coords = world["coords"]
    with browser_page() as page:
        _open(page, server)
        shot = _snapshot(page)
        centre = coords[np.asarray(world["labels"]) == "sea"].mean(axis=0)
        want = (centre[0] - 1.5, centre[0] + 1.0, centre[1] - 1.0, centre[1] + 2.0)  # x0, x1, y0, y1
        view, w, h = shot["view"], shot["w"], shot["h"]
        corner = lambda x, y: (
            float(shot["left"] + (x - view["cx"]) * view["s"] + w / 2),
            float(shot["top"] + h / 2 - (y - view["cy"]) * view["s"]),
        )
        picked = _select(page, "box", [corner(want[0], want[3]), corner(want[1], want[2])])
        x0, x1, y0, y1 = picked["last"]["box"]
        assert np.allclose([x0, x1, y0, y1], want, atol=1.5 / view["s"])  # the box dragged is the box used
        xy = coords.astype(np.float64)
        expected = np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
        assert len(expected) > 100
        assert picked["rows"] == expected.tolist()
        # The page got the same rows: its count and its per-folder tally (by the frame's labels).
        page.get_by_text(f"Selection · {len(expected):,} images").wait_for()
        page.get_by_text(_folder_caption(world["labels"], expected)).first.wait_for()


def test_lasso_selection_is_exactly_the_points_inside(server: str, world: dict) -> None:
    coords = world["coords"]
    with browser_page() as page:
        _open(page, server)
        shot = _snapshot(page)
        left, top, w, h = shot["left"], shot["top"], shot["w"], shot["h"]
        triangle = [(left + w * 0.3, top + h * 0.3), (left + w * 0.7, top + h * 0.4), (left + w * 0.45, top + h * 0.8)]
        picked = _select(page, "lasso", [*triangle, triangle[0]])
        polygon = np.array(picked["last"]["polygon"])
        xy = coords.astype(np.float64)
        inside = np.zeros(len(xy), bool)
        for (xa, ya), (xb, yb) in zip(polygon, np.roll(polygon, 1, axis=0)):  # even-odd rule
            crosses = (ya > xy[:, 1]) != (yb > xy[:, 1])
            with np.errstate(divide="ignore", invalid="ignore"):
                at_x = (xb - xa) * (xy[:, 1] - ya) / (yb - ya) + xa
            inside ^= crosses & (xy[:, 0] < at_x)
        expected = np.flatnonzero(inside)
        assert len(expected) > 100
        assert picked["rows"] == expected.tolist()
        page.get_by_text(f"Selection · {len(expected):,} images").wait_for()
