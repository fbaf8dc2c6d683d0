"""How well does each clustering method recover the folders, per offline encoder? And how does
each representation score on the label-free and label-based diagnostics?

Prints JSON: for each offline encoder embedded in ``--db`` (dataset ``--dataset``) and each
method, ARI / NMI / Hungarian accuracy against the top-level folder, the number of clusters,
the noise fraction, the cosine silhouette, the seed stability (mean pairwise ARI over
``--seeds``) and seconds per fit; then the diagnostics table per encoder and the CKA /
mutual-kNN comparison of every pair of encoders.

The database is copied to a temporary folder first and the copy is opened, so the bench
neither waits for nor writes to a file another process (bench/eval_encoders.py) is filling.

    .venv/bin/python bench/cluster_report.py [--db bench/out/eval.duckdb] [--dataset eval]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cluster import ClusteringWarning, cluster_metrics, folder_truth, make_clusterer, stability
from core.diagnostics import compare_encoders, diagnose
from core.encoders import offline_encoder_ids
from core.store import Store

# (name in the report, method, params): each method with its documented defaults.
METHODS = [
    ("hdbscan", "hdbscan", {}),  # UMAP 10-d (n_neighbors=30, min_dist=0) + HDBSCAN
    ("kmeans", "kmeans", {}),  # PCA 50-d, k by silhouette sweep 2..30
    ("kmeans-eigengap", "kmeans", {"k_selection": "eigengap"}),  # k from the kNN-graph Laplacian eigengap
    ("agglomerative", "agglomerative", {}),  # Ward, k by silhouette sweep
    ("leiden", "leiden", {}),  # 15-NN cosine graph, resolution 1
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="bench/out/eval.duckdb")
    parser.add_argument("--dataset", default="eval")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the stability ARI (0 or 1: skip)")
    parser.add_argument("--methods", nargs="*", default=[m[0] for m in METHODS])
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="replens-bench-") as tmp:
        store = _open_copy(Path(args.db), Path(tmp))
        try:
            report = _report(store, args)
        finally:
            store.close()
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


def _open_copy(db: Path, tmp: Path) -> Store:
    if not db.is_file():
        raise SystemExit(f"error: {db} does not exist; run bench/eval_encoders.py first")
    copy = tmp / db.name
    shutil.copy2(db, copy)
    wal = db.with_name(db.name + ".wal")
    if wal.is_file():  # an open writer's uncommitted-to-file work; DuckDB replays it on open
        shutil.copy2(wal, tmp / wal.name)
    return Store(copy, tmp / "cache")


def _report(store: Store, args: argparse.Namespace) -> dict:
    offline = set(offline_encoder_ids())
    status = store.embedding_status(args.dataset)
    keys = [k for k, spec_id in zip(status["encoder_key"], status["encoder_id"]) if spec_id in offline]
    incomplete = {
        k: f"{e}/{n}"
        for k, e, n in zip(status["encoder_key"], status["n_embedded"], status["n_images"])
        if k in keys and e < n
    }
    rows, diagnostics, n_images, n_classes = [], [], 0, 0
    seeds = list(range(args.seeds)) if args.seeds >= 2 else []
    for key in keys:
        images, vectors = store.load_embeddings(args.dataset, key)
        truth = folder_truth(images)
        n_images, n_classes = len(images), (len(set(truth)) if truth is not None else 0)
        print(f"{key}: {n_images} images", file=sys.stderr, flush=True)
        for name, method, params in METHODS:
            if name not in args.methods:
                continue
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ClusteringWarning)
                est = make_clusterer(method, params).fit(vectors)
            seconds = time.perf_counter() - t0
            m = cluster_metrics(vectors, est.labels_, truth)
            row = {
                "encoder": key,
                "method": name,
                "n_clusters": m["n_clusters"],
                "noise_fraction": round(m["noise_fraction"], 4),
                "ari": _r(m.get("ari")),
                "nmi": _r(m.get("nmi")),
                "hungarian_accuracy": _r(m.get("hungarian_accuracy")),
                "silhouette": _r(m["silhouette"]),
                "seconds": round(seconds, 2),
            }
            if seeds:
                row["stability_mean_ari"] = _r(stability(vectors, method, est.get_params(), seeds)["mean_ari"])
            notes = [str(w.message) for w in caught if issubclass(w.category, ClusteringWarning)]
            if notes:
                row["warnings"] = notes
            rows.append(row)
            print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
        diag = diagnose(vectors, truth)
        diagnostics.append({"encoder": key, **{k: _r(v) if isinstance(v, float) else v for k, v in diag.items()}})
    comparison = compare_encoders(store, args.dataset, keys, k=10) if len(keys) >= 2 else None
    return {
        "db": str(Path(args.db).resolve()),
        "dataset": args.dataset,
        "n_images": n_images,
        "n_classes": n_classes,
        "encoders": keys,
        "incomplete_encoders": incomplete,
        "clustering": rows,
        "diagnostics": diagnostics,
        "comparison": []
        if comparison is None
        else [
            {
                "a": r["a"],
                "b": r["b"],
                "n_images": int(r["n_images"]),
                "cka": _r(r["cka"]),
                "mutual_knn": _r(r["mutual_knn"]),
            }
            for r in comparison.to_dict("records")
        ],
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


if __name__ == "__main__":
    main()
