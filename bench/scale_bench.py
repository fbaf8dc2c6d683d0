"""A million images on a CPU: neighbours, layouts and ingest at scale, each against its baseline.

- **Neighbours** on ``--n`` synthetic 384-d vectors (default 1M), clustered like image
  embeddings: a two-level Gaussian mixture (40 themes, 2,000 centres; each cluster spreads in
  its own random 32-d subspace plus a little isotropic noise, so nearest-neighbour cosines are
  ~0.8 and unrelated pairs ~0). ``core.neighbors.NeighborIndex`` (usearch HNSW, candidates
  re-scored exactly) is built on 99% of them and cached, reopened, then reopened with the last
  1% added (an incremental update: only those vectors are added). ``--queries`` held-out
  vectors are searched one at a time; recall@10 is against exact brute force, whose per-query
  time (one matrix product over every vector) is the baseline.
- **Layouts**: ``core.reduce.SampledUMAPReducer`` at ``--layout-small`` points (default 100k)
  and at ``--n``; the baseline is a full umap-learn fit (``core.reduce.UMAPReducer``, the
  Map's defaults) at ``--layout-small`` only: on 2 cores it grows faster than linearly and a
  1M fit would run for hours. Trustworthiness at k=15 (cosine) on a fixed 10k subsample.
- **Ingest**: a folder of ``--images`` small images (default 100k; 48x40 JPEGs and PNGs) is
  scanned (read, hash, decode, 128 px WebP thumbnail) and written to a fresh store; the
  baseline writes the same records with one INSERT per row. Then ``--n`` synthetic records go
  through ``Store.ingest`` (Arrow bulk merge) and an unchanged rescan; per-row INSERTs are
  timed on a time-boxed prefix (a million of them would take hours) and reported as a rate.
- **GPU layout**: on a machine with cuML and a CUDA GPU, ``core.reduce.GPUUMAPReducer`` (a full
  cuML fit) at ``--n`` points and on a 50k subsample against umap-learn (skipped, with a note,
  elsewhere).
- **Map**: ``measure_map`` from bench/map_scale.py (another benchmark) when it can be imported.

Every timed step reports wall seconds and this process's CPU seconds: on a shared machine the
wall clock of a step depends on other load, its CPU time much less. Writes the JSON so far to
``--out`` after each part; prints one JSON object at the end.

    .venv/bin/python bench/scale_bench.py                 # 1M vectors, 100k images (20-40 min idle)
    .venv/bin/python bench/scale_bench.py --n 20000       # a quick run: 20k vectors, 20k images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import neighbors, reduce
from core.images import ImageRecord, scan
from core.neighbors import NeighborIndex, exact_topk
from core.store import Store

DIM = 384
K = 10
TRUST_K = 15
TRUST_SAMPLE = 10_000


# ------------------------------------------------------------------------------- helpers


@contextmanager
def timed(out: dict[str, Any], name: str) -> Iterator[None]:
    """Record ``<name>_s`` (wall) and ``<name>_cpu_s`` (this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    out[f"{name}_s"] = round(time.perf_counter() - wall, 2)
    out[f"{name}_cpu_s"] = round(time.process_time() - cpu, 2)


def machine() -> dict[str, Any]:
    import duckdb
    import umap
    import usearch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
        "usearch": usearch.__version__,
        "umap_learn": umap.__version__,
        "duckdb": duckdb.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        info["cpu_model"] = models[0] if models else None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total_kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        info["memory_gb"] = round(total_kb / 2**20, 1)
    return info


def mixture(n: int, seed: int, n_centres: int = 2_000, n_themes: int = 40, intrinsic: int = 32) -> np.ndarray:
    """``n`` clustered 384-d float32 vectors (see the module docstring), in random order."""
    rng = np.random.default_rng(seed)
    themes = rng.standard_normal((n_themes, DIM)).astype(np.float32)
    centres = themes[rng.integers(0, n_themes, n_centres)] + 0.8 * rng.standard_normal((n_centres, DIM))
    centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    members = np.sort(rng.integers(0, n_centres, n))
    bounds = np.searchsorted(members, np.arange(n_centres + 1))
    out = np.empty((n, DIM), dtype=np.float32)
    for c in range(n_centres):
        a, b = bounds[c], bounds[c + 1]
        if a == b:
            continue
        basis = rng.standard_normal((intrinsic, DIM)).astype(np.float32) / np.sqrt(DIM)
        spread = rng.uniform(0.5, 0.9) / np.sqrt(intrinsic)
        local = rng.standard_normal((b - a, intrinsic)).astype(np.float32) * spread
        noise = (0.15 / np.sqrt(DIM)) * rng.standard_normal((b - a, DIM)).astype(np.float32)
        out[a:b] = centres[c] + local @ basis + noise
    return out[rng.permutation(n)]


def exact_neighbours(matrix: np.ndarray, queries: np.ndarray, k: int, chunk: int = 131_072) -> np.ndarray:
    """Exact top-k rows by cosine (both inputs normalised), scanning the matrix in chunks."""
    best_idx = np.empty((len(queries), 0), dtype=np.int64)
    best_sim = np.empty((len(queries), 0), dtype=np.float32)
    for start in range(0, len(matrix), chunk):
        sims = queries @ matrix[start : start + chunk].T
        idx, part = exact_topk_rows(sims, k)
        best_idx = np.concatenate([best_idx, idx + start], axis=1)
        best_sim = np.concatenate([best_sim, part], axis=1)
        keep, best_sim = exact_topk_rows(best_sim, k)
        best_idx = np.take_along_axis(best_idx, keep, axis=1)
    return best_idx


def exact_topk_rows(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


def latency_ms(fn: Callable[[int], object], n: int) -> dict[str, float]:
    fn(0)  # warm-up: lazy imports, page faults
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    arr = np.asarray(times)
    return {"median": round(float(np.median(arr)), 3), "p95": round(float(np.percentile(arr, 95)), 3)}


# ------------------------------------------------------------------------------- neighbours


def bench_knn(x: np.ndarray, queries: np.ndarray, workdir: Path) -> dict[str, Any]:
    n = len(x)
    n_late = max(100, n // 100)
    hashes = [f"v{i:09d}" for i in range(n)]
    cache = workdir / "knn-cache"
    shutil.rmtree(cache, ignore_errors=True)
    threshold = min(neighbors.ANN_THRESHOLD, n - n_late)  # below the real threshold the ANN path is forced
    out: dict[str, Any] = {
        "knn_n": n,
        "knn_ann_forced": n - n_late < neighbors.ANN_THRESHOLD,
        "knn_settings": {
            "dtype": neighbors.ANN_DTYPE,
            "connectivity": neighbors.ANN_CONNECTIVITY,
            "expansion_add": neighbors.ANN_EXPANSION_ADD,
            "expansion_search": neighbors.ANN_EXPANSION_SEARCH,
            "candidates": neighbors.ANN_MIN_CANDIDATES,
        },
    }

    def open_index(rows: int) -> NeighborIndex:
        return NeighborIndex(
            x[:rows], encoder_key="bench@v1/x/y", hashes=hashes[:rows], cache_dir=cache, ann_threshold=threshold
        )

    with timed(out, "knn_full_build"):
        first = open_index(n - n_late)
    out["knn_full_build_added"] = first.build.added if first.build else None
    del first
    with timed(out, "knn_reopen_cached"):
        reopened = open_index(n - n_late)
    out["knn_reopen_reason"] = reopened.build.reason if reopened.build else None
    del reopened
    with timed(out, "knn_incremental_update"):
        index = open_index(n)
    assert index.build is not None
    out["knn_incremental_added"] = index.build.added
    out["knn_incremental_reused"] = index.build.reused
    out["knn_incremental_reason"] = index.build.reason
    assert index.index_file is not None
    out["knn_index_file_mb"] = round(index.index_file.stat().st_size / 2**20, 1)

    q = neighbors.normalize(queries)
    with timed(out, "knn_ground_truth"):
        truth = exact_neighbours(index.matrix, q, K)
    found: list[np.ndarray] = [np.empty(0)] * len(q)

    def ann(i: int) -> None:
        found[i] = index.search(q[i], K)[0].indices

    ann_ms = latency_ms(ann, len(q))
    recall = np.mean([len(set(found[i].tolist()) & set(truth[i].tolist())) / K for i in range(len(q))])
    n_exact = min(50, len(q))
    exact_ms = latency_ms(lambda i: exact_topk(index.matrix, q[i][None, :], K), n_exact)
    out.update(
        {
            "knn_queries": len(q),
            "knn_1m_query_ms": ann_ms["median"],
            "knn_1m_query_p95_ms": ann_ms["p95"],
            "knn_1m_recall10": round(float(recall), 4),
            "knn_exact_query_ms": exact_ms["median"],
            "knn_exact_query_p95_ms": exact_ms["p95"],
            "knn_exact_queries": n_exact,
            "knn_speedup_vs_exact": round(exact_ms["median"] / ann_ms["median"], 1),
        }
    )
    return out


# ------------------------------------------------------------------------------- layouts


def trust(x: np.ndarray, coords: np.ndarray, rows: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    return round(float(trustworthiness(x[rows], coords[rows], n_neighbors=TRUST_K, metric="cosine")), 4)


def knn_preservation(x: np.ndarray, coords: np.ndarray, rows: np.ndarray) -> float:
    """Mean share of each row's 15 nearest points (cosine, among *all* points) that are also among
    its 15 nearest on the map: local detail, which a 10k-subsample trustworthiness cannot see."""
    from sklearn.neighbors import NearestNeighbors

    unit = neighbors.normalize(x)
    high = exact_neighbours(unit, unit[rows], TRUST_K + 1)
    low = NearestNeighbors(n_neighbors=TRUST_K + 1).fit(coords).kneighbors(coords[rows], return_distance=False)
    shares = [len((set(h.tolist()) - {r}) & (set(lo.tolist()) - {r})) / TRUST_K for r, h, lo in zip(rows, high, low)]
    return round(float(np.mean(shares)), 4)


def bench_layout(x: np.ndarray, n_small: int, sample_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "layout_sample_size": sample_size,
        "layout_small_n": n_small,
        "layout_quality_note": f"trustworthiness: k={TRUST_K}, cosine, on a fixed {TRUST_SAMPLE}-point subsample "
        "(neighbours among the subsample: structure between nearby clusters); knn_preservation: "
        f"share of the {TRUST_K} nearest neighbours among all points kept on the map, for 1000 points",
    }
    rng = np.random.default_rng(11)
    small = x[:n_small]
    small_rows = np.sort(rng.choice(n_small, min(TRUST_SAMPLE, n_small), replace=False))
    small_local = small_rows[:1000]
    big_rows = np.sort(rng.choice(len(x), min(TRUST_SAMPLE, len(x)), replace=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Untimed warm-up: umap-learn's numba functions compile on first use (tens of seconds).
        reduce.SampledUMAPReducer(sample_size=1_000).fit_transform(small[:2_000])
        with timed(out, "layout_full_umap_100k"):
            full = reduce.UMAPReducer().fit_transform(small)
        out["layout_full_umap_100k_trustworthiness"] = trust(small, full, small_rows)
        out["layout_full_umap_100k_knn_preservation"] = knn_preservation(small, full, small_local)
        with timed(out, "layout_sampled_100k"):
            sampled = reduce.SampledUMAPReducer(sample_size=sample_size).fit_transform(small)
        out["layout_sampled_100k_trustworthiness"] = trust(small, sampled, small_rows)
        out["layout_sampled_100k_knn_preservation"] = knn_preservation(small, sampled, small_local)
        with timed(out, "layout_1m"):
            coords = reduce.SampledUMAPReducer(sample_size=sample_size).fit_transform(x)
        out["layout_1m_trustworthiness"] = trust(x, coords, big_rows)
        out["layout_1m_knn_preservation"] = knn_preservation(x, coords, big_rows[:1000])
    out["layout_1m_n"] = len(x)
    out["layout_full_umap_1m_s"] = None
    out["layout_full_umap_1m_note"] = (
        "not run: a full umap-learn fit grows faster than linearly with n (nearest-neighbour descent "
        "plus 200 epochs over every edge); see layout_full_umap_100k_s at 1/10 of the points"
    )
    return out


def bench_gpu_layout(x: np.ndarray, subsample: int = 50_000) -> dict[str, Any]:
    """cuML's UMAP (``core.reduce.GPUUMAPReducer``, what the Map picks on a GPU machine) at every
    point of ``x``, and against umap-learn on a ``subsample``-point subsample (the CPU baseline)."""
    if not reduce.gpu_umap_available():
        return {"layout_gpu_1m_s": None, "layout_gpu_note": "not run: cuML is not importable or no CUDA GPU is visible"}
    out: dict[str, Any] = {"layout_gpu_subsample_n": min(subsample, len(x))}
    rng = np.random.default_rng(12)
    rows = np.sort(rng.choice(len(x), min(TRUST_SAMPLE, len(x)), replace=False))
    part = x[np.sort(rng.choice(len(x), out["layout_gpu_subsample_n"], replace=False))]
    part_rows = np.sort(rng.choice(len(part), min(TRUST_SAMPLE, len(part)), replace=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reduce.GPUUMAPReducer().fit_transform(x[:5_000])  # untimed: CUDA context and kernels load once
        with timed(out, "layout_gpu_1m"):
            coords = reduce.GPUUMAPReducer().fit_transform(x)
        out["layout_gpu_1m_trustworthiness"] = trust(x, coords, rows)
        with timed(out, "layout_gpu_50k"):
            gpu_part = reduce.GPUUMAPReducer().fit_transform(part)
        out["layout_gpu_50k_trustworthiness"] = trust(part, gpu_part, part_rows)
        with timed(out, "layout_cpu_umap_50k"):
            cpu_part = reduce.UMAPReducer().fit_transform(part)
        out["layout_cpu_umap_50k_trustworthiness"] = trust(part, cpu_part, part_rows)
    return out


# ------------------------------------------------------------------------------- ingest


def make_images(folder: Path, n: int) -> float:
    """``n`` distinct small photos-like images in 100 folders (reused when already there)."""
    marker = folder / f".complete-{n}"
    if marker.exists():
        return 0.0
    from PIL import Image, ImageDraw

    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    rng = np.random.default_rng(5)
    gx = np.linspace(0, 1, 48)[None, :, None]
    gy = np.linspace(0, 1, 40)[:, None, None]
    for i in range(n):
        sub = folder / f"class{i % 100:03d}"
        if i < 100:
            sub.mkdir(parents=True, exist_ok=True)
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        pixels = c1 * (1 - gx) * (1 - gy) + c2 * gx * gy + rng.normal(0, 6, (40, 48, 3))
        img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        x0, y0 = (int(v) for v in rng.integers(0, 30, 2))
        w, h = (int(v) for v in rng.integers(6, 18, 2))
        ImageDraw.Draw(img).ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        if i % 4:
            img.save(sub / f"img{i:07d}.jpg", quality=90)
        else:
            img.save(sub / f"img{i:07d}.png")
    marker.touch()
    return round(time.perf_counter() - started, 1)


def naive_insert(store: Store, dataset: str, source: str, records: list[ImageRecord], budget_s: float) -> dict:
    """One INSERT per image and per path, in one transaction, until ``budget_s`` runs out."""
    with store.connected():  # the raw cursor below is outside any Store method: keep the file open
        cur = store._cursor()
        now = time.time()
        cur.execute("BEGIN TRANSACTION")
        cur.execute("INSERT INTO datasets VALUES (?, now(), now()) ON CONFLICT DO NOTHING", [dataset])
        started = time.perf_counter()
        done = 0
        for r in records:
            cur.execute(
                "INSERT INTO images VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [r.content_hash, r.width, r.height, r.n_bytes, r.format],
            )
            cur.execute(
                "INSERT INTO dataset_images VALUES (?, ?, ?, ?, ?, ?, ?, to_timestamp(?))",
                [dataset, source, r.rel_path, r.content_hash, list(r.labels), r.caption, r.mtime, now],
            )
            done += 1
            if done % 500 == 0 and time.perf_counter() - started > budget_s:
                break
        cur.execute("COMMIT")
        seconds = time.perf_counter() - started
    return {"rows": done, "seconds": round(seconds, 2), "rows_per_s": round(done / seconds, 1)}


def synthetic_records(n: int) -> list[ImageRecord]:
    return [
        ImageRecord(
            f"{i:032x}",
            f"class{i % 100:03d}/img{i:07d}.jpg",
            (f"class{i % 100:03d}",),
            48,
            40,
            1200,
            "JPEG",
            float(i),
            None,
        )  # fmt: skip
        for i in range(n)
    ]


def bench_scan_window(folder: Path, work: Path, n_subset: int) -> dict[str, Any]:
    """The scan as it is (a bounded window of queued files) against the earlier scan, which queued
    every file at once (``concurrent.futures.wait`` then walks all pending futures per call), on
    the first folders of the image set; fresh thumbnail caches for both."""
    import importlib

    scan_module = importlib.import_module("core.images.scan")
    subset = work / "subset"
    subset.mkdir()
    total = 0
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if total >= n_subset:
            break
        # Hard links: the same files, without a symlink (a scan does not follow links out of its root).
        (subset / sub.name).mkdir()
        for file in sub.iterdir():
            os.link(file, subset / sub.name / file.name)
            total += 1
    out: dict[str, Any] = {"scan_window_files": total}
    with timed(out, "scan_window_bounded"):
        scan(subset, cache_dir=work / "cache-bounded")
    window = scan_module._FUTURES_PER_WORKER
    scan_module._FUTURES_PER_WORKER = 10**12  # every file submitted up front, as before
    try:
        with timed(out, "scan_window_unbounded"):
            scan(subset, cache_dir=work / "cache-unbounded")
    finally:
        scan_module._FUTURES_PER_WORKER = window
    out["scan_window_bounded_files_per_s"] = round(total / out["scan_window_bounded_s"], 1)
    out["scan_window_unbounded_files_per_s"] = round(total / out["scan_window_unbounded_s"], 1)
    return out


def bench_thumbnail_encoding(root: str, rel_paths: list[str]) -> dict[str, Any]:
    """WebP encoding of 128 px thumbnails at the effort the cache uses vs libwebp's default (4)."""
    import io

    from PIL import Image

    from core.images import thumbnails

    images = []
    for rel in rel_paths:
        with Image.open(Path(root) / rel) as img:
            images.append(thumbnails._resize_longest_side(img.convert("RGB"), 128))
    out: dict[str, Any] = {"thumbnail_webp_method": thumbnails._WEBP_METHOD, "thumbnail_images": len(images)}
    for name, method in (("used", thumbnails._WEBP_METHOD), ("method4", 4)):
        sizes, started = [], time.process_time()
        for _ in range(3):
            for img in images:
                buffer = io.BytesIO()
                img.save(buffer, format="WEBP", quality=80, method=method)
                sizes.append(buffer.tell())
        out[f"thumbnail_webp_{name}_cpu_ms"] = round((time.process_time() - started) / (3 * len(images)) * 1000, 3)
        out[f"thumbnail_webp_{name}_bytes"] = round(float(np.mean(sizes)), 1)
    return out


def bench_ingest(folder: Path, n_images: int, n_rows: int, workdir: Path, naive_budget_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {"ingest_images": n_images, "ingest_make_images_s": make_images(folder, n_images)}
    work = workdir / "ingest"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with timed(out, "ingest_scan"):
        result = scan(folder, cache_dir=work / "cache")
    assert len(result.records) == n_images, (len(result.records), result.skipped[:3])
    store = Store(work / "bulk.duckdb", work / "cache")
    with timed(out, "ingest_store"):
        store.ingest("images", result.root, result.records, result.skipped)
    store.close()
    naive_store = Store(work / "naive.duckdb", work / "cache-naive")
    naive = naive_insert(naive_store, "images", result.root, result.records, naive_budget_s)
    naive_store.close()
    naive_store_s = n_images / naive["rows_per_s"]
    out.update(
        {
            "ingest_scan_files_per_s": round(n_images / out["ingest_scan_s"], 1),
            "ingest_files_per_s": round(n_images / (out["ingest_scan_s"] + out["ingest_store_s"]), 1),
            "ingest_naive_files_per_s": round(n_images / (out["ingest_scan_s"] + naive_store_s), 1),
            "ingest_naive_store": naive,
            "ingest_naive_note": "the same scan, then one INSERT per image and per path (rate from the rows timed)",
        }
    )
    out.update(bench_scan_window(folder, work, n_subset=min(20_000, n_images)))
    out.update(bench_thumbnail_encoding(result.root, [r.rel_path for r in result.records[:200]]))
    # The store alone at n rows: bulk first ingest, unchanged rescan, per-row baseline.
    records = synthetic_records(n_rows)
    rows_store = Store(work / "rows.duckdb", work / "cache")
    with timed(out, "store_bulk_ingest"):
        rows_store.ingest("rows", "/synthetic", records, [])
    with timed(out, "store_rescan_unchanged"):
        stats = rows_store.ingest("rows", "/synthetic", records, [])
    assert stats.unchanged == n_rows
    rows_store.close()
    naive_rows = Store(work / "rows-naive.duckdb", work / "cache")
    naive_rows_result = naive_insert(naive_rows, "rows", "/synthetic", records, naive_budget_s)
    naive_rows.close()
    out.update(
        {
            "store_rows": n_rows,
            "store_bulk_rows_per_s": round(n_rows / out["store_bulk_ingest_s"], 1),
            "store_rescan_rows_per_s": round(n_rows / out["store_rescan_unchanged_s"], 1),
            "store_naive_rows_per_s": naive_rows_result["rows_per_s"],
            "store_naive_rows_timed": naive_rows_result["rows"],
        }
    )
    return out


# ------------------------------------------------------------------------------- map


def bench_map(n_points: int, n_small: int, workdir: Path) -> dict[str, Any]:
    keys = ("map_1m_ready_s", "map_100k_ready_s", "selection_100k_s")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from map_scale import measure_map  # type: ignore[import-not-found]
    except ImportError as exc:
        return {**dict.fromkeys(keys), "map_note": f"bench/map_scale.py not importable: {exc}"}
    try:
        return dict(measure_map(n_points, n_small, workdir / "map"))
    except Exception as exc:  # another benchmark's failure is reported, not allowed to lose the rest
        return {**dict.fromkeys(keys), "map_note": f"measure_map failed: {type(exc).__name__}: {exc}"}


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors and synthetic store rows")
    parser.add_argument("--images", type=int, default=None, help="image files (default min(100000, n))")
    parser.add_argument("--layout-small", type=int, default=None, help="full-UMAP baseline size (min(100000, n))")
    parser.add_argument(
        "--sample-size", type=int, default=reduce.SampledUMAPReducer().sample_size, help="SampledUMAPReducer's sample"
    )
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--naive-budget", type=float, default=60.0, help="seconds of per-row INSERTs")
    parser.add_argument("--parts", default="knn,layout,ingest,map")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scale/work"))
    parser.add_argument("--out", type=Path, default=None, help="write the JSON so far here after each part")
    args = parser.parse_args()
    n = args.n
    n_images = args.images or min(100_000, n)
    n_small = args.layout_small or min(100_000, n)
    parts = set(args.parts.split(","))
    args.workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"n": n, "machine": machine()}
    started = time.perf_counter()

    def save() -> None:
        result["total_s"] = round(time.perf_counter() - started, 1)
        result["machine"]["loadavg_now"] = [round(v, 2) for v in os.getloadavg()]
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))

    if parts & {"knn", "layout"}:
        with timed(result, "vectors_generate"):
            data = mixture(n + args.queries, seed=1)
        x, queries = data[:n], data[n:]
        if "knn" in parts:
            result.update(bench_knn(x, queries, args.workdir))
            save()
        if "layout" in parts:
            result.update(bench_layout(x, n_small, args.sample_size))
            result.update(bench_gpu_layout(x))
            save()
        del data, x, queries
    if "ingest" in parts:
        result.update(bench_ingest(args.workdir / "images", n_images, n, args.workdir, args.naive_budget))
        save()
    if "map" in parts:
        result.update(bench_map(n, min(100_000, max(1_000, n // 10)), args.workdir))
    save()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
