"""Time to first map, cold (UMAP computed) and cached (read from DuckDB), and figure cost.

A synthetic dataset of clustered 384-d vectors in 20 folders goes through the same code the
Map page runs: ``core.reduce.project`` (cache lookup, reducer, save) and
``core.mapfigure.display_rows`` + ``build_map_figure`` + the JSON Streamlit sends. With
``--browser`` the figure is also drawn by Plotly.js in headless Chromium (software WebGL,
so slower than a real GPU: a pessimistic check).

Prints one JSON object.

    .venv/bin/python bench/map_bench.py [--umap-n 10000] [--cached-n 100000] [--fig-n 10000 100000] [--browser]

The real Map page, end to end in Chromium (1M and 100k points, selection → gallery, against the
old Plotly page in the same run): ``bench/map_scale.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import reduce
from core.images import ImageRecord
from core.store import Store

DIM = 384
KEY = "bench@v1/last/cls"
N_FOLDERS = 20
UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "random_state": 42}


def synthetic(n: int, seed: int = 0) -> tuple[list[ImageRecord], np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = rng.integers(0, N_FOLDERS, n)
    centres = rng.normal(0, 1, (N_FOLDERS, DIM))
    vectors = (centres[folder] + rng.normal(0, 0.6, (n, DIM))).astype(np.float32)
    records = [
        ImageRecord(
            content_hash=f"{seed:04x}{i:028x}",
            rel_path=f"f{folder[i]:02d}/img_{i:06d}.jpg",
            labels=(f"f{folder[i]:02d}",),
            width=int(rng.integers(200, 900)),
            height=480,
            n_bytes=int(rng.integers(10_000, 90_000)),
            format="JPEG",
            mtime=0.0,
            caption=None,
        )
        for i in range(n)
    ]
    return records, vectors


def make_dataset(store: Store, name: str, n: int, seed: int) -> None:
    records, vectors = synthetic(n, seed)
    store.ingest(name, f"/bench/{name}", records, [])
    store.register_encoder(KEY, "bench", "v1", "last", "cls", DIM, {"id": "bench"})
    store.write_embeddings(KEY, [r.content_hash for r in records], vectors)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 3)


def bench_first_map(store: Store, n: int, method: str, params: dict) -> dict[str, object]:
    name = f"{method}{n}"
    make_dataset(store, name, n, seed=n % 997)
    (images, vectors), load_s = timed(store.load_embeddings, name, KEY)
    cold, cold_s = timed(reduce.project, store, name, KEY, method, params, images=images, vectors=vectors)
    cached, cached_s = timed(reduce.project, store, name, KEY, method, params, images=images, vectors=vectors)
    # A reopened page also reloads the embeddings table; that is part of "time to first map".
    (_, _), reload_s = timed(store.load_embeddings, name, KEY)
    assert not cold.cached and cached.cached and np.array_equal(cold.coords, cached.coords)
    return {
        "n": n,
        "method": method,
        "params": cold.params,
        "load_embeddings_s": load_s,
        "cold_compute_s": cold_s,
        "cached_projection_s": cached_s,
        "time_to_first_map_cached_s": round(reload_s + cached_s, 3),
    }


def bench_cached_only(store: Store, n: int) -> dict[str, object]:
    """A big dataset whose layout exists already (we store one instead of spending minutes on UMAP)."""
    name = f"cached{n}"
    make_dataset(store, name, n, seed=7)
    images, vectors = store.load_embeddings(name, KEY)
    hashes = images["content_hash"].tolist()
    full = reduce.make_reducer("umap", UMAP_DEFAULTS).get_params()
    key = reduce.projection_key(hashes, KEY, "umap", full)
    store.save_projection(key, name, KEY, "umap", full, hashes, np.random.default_rng(0).normal(size=(n, 2)), 0.0)
    (_, _), load_s = timed(store.load_embeddings, name, KEY)
    proj, cached_s = timed(reduce.project, store, name, KEY, "umap", UMAP_DEFAULTS, images=images, vectors=vectors)
    assert proj.cached
    return {
        "n": n,
        "load_embeddings_s": load_s,
        "cached_projection_s": cached_s,
        "time_to_first_map_cached_s": round(load_s + cached_s, 3),
    }


def bench_figure(n: int) -> tuple[dict[str, object], str]:
    from core import mapfigure

    records, _ = synthetic(n, seed=3)
    import pandas as pd

    frame = pd.DataFrame(
        {
            "rel_path": [r.rel_path for r in records],
            "label": [r.labels[0] for r in records],
            "caption": [None] * n,
            "width": [r.width for r in records],
        }
    )
    coords = np.random.default_rng(1).normal(size=(n, 2)).astype(np.float32)
    rows, sample_s = timed(mapfigure.display_rows, frame)
    colouring = mapfigure.colour_by_folder(frame)
    fig, build_s = timed(mapfigure.build_map_figure, coords, frame, colouring, rows)
    payload, json_s = timed(fig.to_json)
    numeric, numeric_s = timed(
        mapfigure.build_map_figure, coords, frame, mapfigure.colour_by_number(frame, "width", "W"), rows
    )
    return (
        {
            "n": n,
            "drawn": int(len(rows)),
            "sample_s": sample_s,
            "build_figure_s": build_s,
            "build_numeric_figure_s": numeric_s,
            "to_json_s": json_s,
            "payload_mb": round(len(payload) / 1e6, 2),
        },
        payload,
    )


def bench_browser(payload: str) -> dict[str, object]:
    """Draw the figure with Plotly.js in headless Chromium; time to the first painted frame."""
    import plotly
    from playwright.sync_api import sync_playwright

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "map.html"
        html.write_text(
            "<html><body><div id='plot' style='width:1000px;height:640px'></div>"
            f"<script src='file://{plotly_js}'></script></body></html>"
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            page = browser.new_page()
            page.goto(f"file://{html}")
            ms = page.evaluate(
                """async (fig) => {
                    fig = JSON.parse(fig);
                    const t0 = performance.now();
                    await Plotly.newPlot('plot', fig.data, fig.layout);
                    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
                    const drawn = performance.now() - t0;
                    const t1 = performance.now();
                    await Plotly.relayout('plot', {'xaxis.range': [-1, 1], 'yaxis.range': [-1, 1]});
                    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
                    return [drawn, performance.now() - t1,
                            document.getElementById('plot')._fullData.reduce((n, t) => n + t._length, 0)];
                }""",
                payload,
            )
            browser.close()
    return {"first_draw_ms": round(ms[0]), "zoom_redraw_ms": round(ms[1]), "points_drawn": int(ms[2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--umap-n", type=int, nargs="+", default=[10_000])
    parser.add_argument("--pca-n", type=int, nargs="+", default=[100_000])
    parser.add_argument("--cached-n", type=int, nargs="+", default=[100_000])
    parser.add_argument("--fig-n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--browser", action="store_true", help="also draw each figure in headless Chromium")
    args = parser.parse_args()
    result: dict[str, object] = {"dim": DIM}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb", Path(tmp) / "cache")
        # The first UMAP in a process also pays numba's JIT; measure it apart from the steady state.
        _, jit_s = timed(reduce.UMAPReducer(**UMAP_DEFAULTS).fit_transform, synthetic(300, 99)[1])
        result["umap_jit_warmup_s"] = jit_s
        result["first_map"] = [bench_first_map(store, n, "umap", UMAP_DEFAULTS) for n in args.umap_n]
        result["first_map"] += [bench_first_map(store, n, "pca", {}) for n in args.pca_n]
        result["cached_only"] = [bench_cached_only(store, n) for n in args.cached_n]
        store.close()
    figures = []
    for n in args.fig_n:
        info, payload = bench_figure(n)
        if args.browser:
            info["browser"] = bench_browser(payload)
        figures.append(info)
    result["figure"] = figures
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
