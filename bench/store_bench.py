"""Loading stored vectors: Store.load_embeddings (Arrow, one contiguous matrix) vs a naive
per-row fetch (fetchall() of the LIST column, then np.array of Python lists), same file.

Prints one JSON object.   .venv/bin/python bench/store_bench.py [--n 100000] [--dim 768]
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

from core.images import ImageRecord
from core.store import Store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb", Path(tmp) / "cache")
        records = [
            ImageRecord(f"{i:032x}", f"f{i % 50}/img_{i:06d}.jpg", (f"f{i % 50}",), 64, 64, 1000, "JPEG", 0.0, None)
            for i in range(args.n)
        ]
        store.ingest("bench", "/nowhere", records, [])
        key = "bench@v1/last/cls"
        store.register_encoder(key, "bench", "v1", "last", "cls", args.dim, {"id": "bench"})
        vectors = rng.normal(size=(args.n, args.dim)).astype(np.float32)
        started = time.perf_counter()
        for i in range(0, args.n, 10_000):
            store.write_embeddings(key, [r.content_hash for r in records[i : i + 10_000]], vectors[i : i + 10_000])
        write_s = time.perf_counter() - started
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            frame, matrix = store.load_embeddings("bench", key)
            timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        rows = (
            store._cursor()
            .execute(  # the naive way: Python objects per row
                "SELECT content_hash, vector FROM embeddings WHERE encoder_key = ?", [key]
            )
            .fetchall()
        )
        naive = np.array([r[1] for r in rows], dtype=np.float32)
        naive_s = time.perf_counter() - started
        assert matrix.shape == naive.shape == (args.n, args.dim)
        store.close()
    print(
        json.dumps(
            {
                "n": args.n,
                "dim": args.dim,
                "write_s": round(write_s, 2),
                "load_embeddings_s": round(min(timings), 3),
                "naive_rows_s": round(naive_s, 3),
                "speedup": round(naive_s / min(timings), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
