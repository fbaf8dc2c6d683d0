"""How far bf16 vectors are from fp32 ones: cosine agreement and k-NN overlap on the demo images.

For each torch encoder, the demo (Tux Paint stamps under /usr/share/tuxpaint/stamps, ~800
images; a generated folder when they are absent) is embedded through the real pipeline
(core.extract.embed_dataset into a DuckDB store) at fp32 and at bf16, which land under two
keys; each key's matrix is read back with Store.load_embeddings. Per image: the cosine between
its fp32 and bf16 vector (mean and worst over the images), and the overlap of its k nearest
neighbours (cosine, itself excluded) in the fp32 and in the bf16 matrix (mean and worst share).
The fp32 run is the reference; both runs' img/s are reported as measured (same run).

Prints one JSON object.

    .venv/bin/python bench/precision_agreement.py [--encoders random-resnet18,efficientnet-lite0]
        [--k 10] [--limit 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import images
from core.demo import demo_source, write_generated_demo
from core.encoders import load_encoder, resolve_device
from core.encoders.precision import bf16_support
from core.extract import embed_dataset
from core.store import Store

DEFAULT_ENCODERS = "random-resnet18,efficientnet-lite0,efficientnet-lite2"


def demo_folder(scratch: Path) -> tuple[Path, str]:
    """The Tux Paint stamps when installed, else a generated demo folder written under ``scratch``."""
    source = demo_source()
    if source is not None:
        return source, "tuxpaint-stamps"
    out = scratch / "generated-demo"
    write_generated_demo(out)
    return out, "generated (core.demo.write_generated_demo)"


def _unit(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def knn(matrix: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's k nearest rows by cosine, itself excluded."""
    unit = _unit(matrix)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def agreement(reference: np.ndarray, other: np.ndarray, k: int) -> dict[str, Any]:
    """Cosine of each row of ``other`` to the same row of ``reference``, and k-NN overlap."""
    if reference.shape != other.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {other.shape}")
    cos = np.sum(_unit(reference) * _unit(other), axis=1)
    k = min(k, len(reference) - 1)
    ref_nn, other_nn = knn(reference, k), knn(other, k)
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(ref_nn, other_nn)])
    return {
        "cosine_mean": round(float(cos.mean()), 6),
        "cosine_worst": round(float(cos.min()), 6),
        "cosine_p01": round(float(np.quantile(cos, 0.01)), 6),
        "k": k,
        "knn_overlap_mean": round(float(overlap.mean()), 4),
        "knn_overlap_worst": round(float(overlap.min()), 4),
        "identical_knn_share": round(float(np.mean(overlap == 1.0)), 4),
    }


def measure(store: Store, dataset: str, encoder_id: str, device: str, k: int) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    matrices: dict[str, tuple[list[str], np.ndarray]] = {}
    for precision in ("fp32", "bf16"):
        encoder = load_encoder(encoder_id, device, precision=precision)
        report = embed_dataset(store, dataset, encoder)
        frame, matrix = store.load_embeddings(dataset, encoder.key)
        matrices[precision] = (list(frame["content_hash"]), matrix)
        runs[precision] = {
            "key": encoder.key,
            "reason": encoder.precision_reason,
            "encoded": report.encoded,
            "cached": report.cached,
            "images_per_s": report.images_per_s,
        }
    (fp32_hashes, fp32), (bf16_hashes, bf16) = matrices["fp32"], matrices["bf16"]
    if fp32_hashes != bf16_hashes:
        raise SystemExit(f"{encoder_id}: the fp32 and bf16 matrices hold different images")
    return {
        "encoder": encoder_id,
        "n_vectors": len(fp32),
        "dim": int(fp32.shape[1]),
        "runs": runs,
        "bf16_speedup_in_pipeline": round(runs["bf16"]["images_per_s"] / runs["fp32"]["images_per_s"], 2)
        if runs["fp32"]["images_per_s"]
        else None,
        **agreement(fp32, bf16, k),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--encoders", default=DEFAULT_ENCODERS, help="comma-separated torch encoder ids")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=0, help="embed only the first N images (0: all)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder, source_name = demo_folder(tmp)
        scan = images.scan(folder, cache_dir=None)
        records = list(scan.records)[: args.limit] if args.limit else list(scan.records)
        store = Store(tmp / "agreement.duckdb", tmp / "cache")
        store.ingest("demo", scan.root, records, scan.skipped)
        results = [measure(store, "demo", e.strip(), device, args.k) for e in args.encoders.split(",") if e.strip()]
    print(
        json.dumps(
            {
                "source": source_name,
                "folder": str(folder),
                "n_images": len(records),
                "device": device,
                "bf16_detection": bf16_support(device).to_dict(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "encoders": results,
            }
        )
    )


if __name__ == "__main__":
    main()
