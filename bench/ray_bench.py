"""Extraction on Ray vs the local engine: same corpus, same encoder, same run.

Baseline = ``core.extract.embed_dataset`` in this process (threaded decode, one model).
Ray = ``core.engines.ray_engine.embed_dataset_ray`` on the cluster at ``--address`` (``local``: a
new Ray instance of this machine). Both are timed end to end, as a user waits for them: the Ray
figure includes connecting (or starting Ray), starting the actors and loading one model per actor;
the local one includes loading its model. Also prints the largest difference between the vectors
the two engines stored (0 expected: same decode, preprocessing and precision).

Prints one JSON object. Corpus: synthetic 500x375 JPEGs (bench/embed_bench.py's).

    .venv/bin/python bench/ray_bench.py [--n 512] [--encoder random-resnet18] [--address local] [--actors N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.embed_bench import make_corpus
from core import images
from core.encoders import load_encoder
from core.engines.ray_engine import embed_dataset_ray
from core.extract import embed_dataset
from core.store import Store


def store_with(folder: Path, scan: images.ScanResult, name: str) -> Store:
    store = Store(folder / f"{name}.duckdb", folder / f"{name}-cache")
    store.ingest("bench", scan.root, scan.records, scan.skipped)
    return store


def by_hash(store: Store, key: str) -> dict[str, np.ndarray]:
    imgs, matrix = store.load_embeddings("bench", key)
    return dict(zip(imgs["content_hash"], matrix))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--encoder", default="random-resnet18")
    parser.add_argument("--device", default="auto", help="auto: GPUs where there are some (both engines)")
    parser.add_argument("--address", default="local")
    parser.add_argument("--actors", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_corpus(folder / "imgs", args.n)
        scan = images.scan(folder / "imgs", cache_dir=None)
        local, remote = store_with(folder, scan, "local"), store_with(folder, scan, "ray")

        started = time.perf_counter()
        mine = embed_dataset(local, "bench", load_encoder(args.encoder, args.device), batch_size=args.batch_size)
        local_s = time.perf_counter() - started

        started = time.perf_counter()
        report = embed_dataset_ray(
            remote,
            "bench",
            {"encoder_id": args.encoder, "device": args.device},
            address=args.address,
            actors=args.actors,
            batch_size=args.batch_size,
        )
        ray_s = time.perf_counter() - started
        expected, got = by_hash(local, mine.encoder), by_hash(remote, report.encoder)
        max_diff = max(float(np.abs(got[h] - v).max()) for h, v in expected.items())
    result = {
        "encoder": mine.encoder,
        "n_images": args.n,
        "cpu_count": os.cpu_count(),
        "local_device": mine.device,
        "local_seconds": round(local_s, 2),
        "local_images_per_s": round(args.n / local_s, 1),
        "ray_address": args.address,
        "ray_cluster": report.cluster,
        "ray_actors": report.actors,
        "ray_device": report.device,
        "ray_seconds": round(ray_s, 2),
        "ray_images_per_s": round(args.n / ray_s, 1),
        "ray_over_local": round(local_s / ray_s, 2),
        "ray_shards": report.shards,
        "same_hashes": sorted(got) == sorted(expected),
        "max_abs_vector_difference": max_diff,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
