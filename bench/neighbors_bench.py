"""Neighbour query latency: RepLens exact search and ANN vs naive baselines, same run, CPU.

Vectors are random 384-d float32 (the dimension of ViT-S encoders). Random vectors have no
cluster structure, the hardest case for an HNSW index, so the recall printed is a floor. The
ANN run is repeated on clustered vectors (a Gaussian mixture: 1,000 centres, within-cluster
cosine ~0.7), closer to what image encoders produce.

- ``exact``: core.neighbors.NeighborIndex (normalised matrix, one matmul + argpartition).
- ``python_loop``: per-row Python loop computing cosine, then sort (the naive baseline).
- ``sklearn_brute``: sklearn NearestNeighbors(metric="cosine", algorithm="brute").
- ``ann``: the usearch HNSW path (forced with a low threshold), candidates re-scored exactly.

Prints one JSON object.

    .venv/bin/python bench/neighbors_bench.py [--sizes 10000 100000] [--ann-size 100000] [--queries 50]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.neighbors import NeighborIndex

DIM = 384
K = 10


def _latency(fn: Callable[[int], object], rows: np.ndarray) -> dict[str, float]:
    fn(int(rows[0]))  # warm-up: first call pays for lazy imports and page faults
    times = []
    for row in rows:
        start = time.perf_counter()
        fn(int(row))
        times.append((time.perf_counter() - start) * 1000)
    arr = np.asarray(times)
    return {
        "median_ms": round(float(np.median(arr)), 3),
        "p95_ms": round(float(np.percentile(arr, 95)), 3),
        "queries": len(arr),
    }


def _python_loop(x: np.ndarray) -> Callable[[int], list[int]]:
    rows = list(x)  # a list of vectors, as a naive tool would hold them

    def search(q: int) -> list[int]:
        query = rows[q]
        qn = math.sqrt(float(np.dot(query, query)))
        sims = [float(np.dot(query, r)) / (qn * math.sqrt(float(np.dot(r, r)))) for r in rows]
        return sorted(range(len(sims)), key=sims.__getitem__, reverse=True)[:K]

    return search


def bench_size(n: int, n_queries: int, loop_queries: int, rng: np.random.Generator) -> dict[str, object]:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    rows = rng.choice(n, n_queries, replace=False)
    start = time.perf_counter()
    index = NeighborIndex(x)
    prep = time.perf_counter() - start
    out: dict[str, object] = {
        "n": n,
        "dim": DIM,
        "k": K,
        "exact_prepare_s": round(prep, 3),
        "exact": _latency(lambda r: index.search_row(r, K), rows),
    }
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=K, metric="cosine", algorithm="brute").fit(x)
    out["sklearn_brute"] = _latency(lambda r: nn.kneighbors(x[r : r + 1]), rows)
    out["python_loop"] = _latency(_python_loop(x), rows[:loop_queries])
    # Same answers: the baseline's top-k equals ours (ties aside, which random data has none of).
    ref = _python_loop(x)(int(rows[0]))
    out["agrees_with_python_loop"] = ref == index.search_row(int(rows[0]), K).indices.tolist()
    out["speedup_vs_python_loop"] = round(out["python_loop"]["median_ms"] / out["exact"]["median_ms"], 1)
    out["speedup_vs_sklearn_brute"] = round(out["sklearn_brute"]["median_ms"] / out["exact"]["median_ms"], 1)
    return out


def random_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((n, DIM)).astype(np.float32)


def clustered_vectors(n: int, rng: np.random.Generator, n_centres: int = 1_000, spread: float = 0.65) -> np.ndarray:
    centres = rng.standard_normal((n_centres, DIM)).astype(np.float32)
    members = rng.integers(0, n_centres, n)
    return centres[members] + spread * rng.standard_normal((n, DIM)).astype(np.float32)


def bench_ann(x: np.ndarray, data: str, n_queries: int, rng: np.random.Generator) -> dict[str, object]:
    n = len(x)
    hashes = [f"h{i}" for i in range(n)]
    rows = rng.choice(n, n_queries, replace=False)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        ann = NeighborIndex(x, encoder_key="bench@v1/x/y", hashes=hashes, cache_dir=cache, ann_threshold=1)
        build = time.perf_counter() - start
        start = time.perf_counter()
        NeighborIndex(x, encoder_key="bench@v1/x/y", hashes=hashes, cache_dir=cache, ann_threshold=1)
        reload = time.perf_counter() - start
        exact = NeighborIndex(x)
        recall = np.mean(
            [
                len(set(ann.search_row(int(r), K).indices.tolist()) & set(exact.search_row(int(r), K).indices.tolist()))
                / K
                for r in rows
            ]
        )
        return {
            "data": data,
            "n": n,
            "dim": DIM,
            "k": K,
            "build_s": round(build, 2),
            "reload_from_disk_s": round(reload, 2),
            "ann": _latency(lambda r: ann.search_row(r, K), rows),
            "exact_same_run": _latency(lambda r: exact.search_row(r, K), rows),
            "recall_at_10_vs_exact": round(float(recall), 4),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--ann-size", type=int, default=100_000, help="0 skips the ANN run")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--loop-queries", type=int, default=5, help="the Python loop is slow; fewer queries")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result: dict[str, object] = {
        "device": "cpu",
        "exact": [bench_size(n, args.queries, args.loop_queries, rng) for n in args.sizes],
    }
    if args.ann_size:
        result["ann"] = [
            bench_ann(make(args.ann_size, rng), name, args.queries, rng)
            for name, make in (("random", random_vectors), ("clustered", clustered_vectors))
        ]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
