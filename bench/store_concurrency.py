"""What sharing the DuckDB file between processes costs, and what it buys.

The store opens the file for a unit of work and closes it when idle (``core.store.connection``)
instead of holding it for the life of the process. This times, in one run, on one file:

1. ``ops``: a one-query read (``dataset_names``) per second with the file held open (the old
   behaviour, the naive baseline) vs opened and closed around every call (``idle_close_s=0``).
2. ``page_read``: what a page rerun asks the store (list_datasets, dataset_names,
   embedding_status, runs, list_cluster_runs; the matrix itself is cached by the app) as one
   burst: p50/p95 latency with the file held, with one cold open before the burst (the default
   idle close, reruns further apart than 0.5 s), and with open+close around every call.
   ``matrix_load``: ``load_embeddings`` (``--rows`` x 512) with the file held (DuckDB's buffers
   warm) vs right after a reopen (what a closed file costs a big read).
3. ``cli_embed``: ``python -m core embed`` (pixels encoder, small chunks) in a subprocess,
   alone and while an app-like reader thread in this process polls the page read; and, as the
   baseline, while the reader holds the file open the whole time (what the old store did): the
   command then fails with the lock error.

Prints one JSON object.   .venv/bin/python bench/store_concurrency.py [--images 600] [--chunk 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import images  # noqa: E402
from core.images import ImageRecord  # noqa: E402
from core.store import Store  # noqa: E402

DIM = 512
BIG = "big"  # the dataset the page reads
KEY = "bench@v1/last/cls"
HELD = 1e9  # idle_close_s that never closes: the old store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000, help="images with vectors in the page-read dataset")
    parser.add_argument("--images", type=int, default=600, help="image files the CLI embeds")
    parser.add_argument("--chunk", type=int, default=64, help="REPLENS_EMBED_CHUNK for the CLI embed")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--poll-ms", type=float, default=100.0, help="the app-like reader's pause between page reads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="replens-concurrency-") as tmp:
        base = Path(tmp)
        template = build_template(base, args.rows, args.images)
        result: dict[str, Any] = {"rows": args.rows, "dim": DIM, "cpus": os.cpu_count()}
        result["ops"] = bench_ops(base, template, args.repeats * 5)
        result["page_read"] = bench_page_read(base, template, args.repeats)
        result["matrix_load"] = bench_matrix_load(base, template, max(5, args.repeats // 3))
        result["cli_embed"] = bench_cli_embed(base, template, args)
    print(json.dumps(result))


# --------------------------------------------------------------------------- the database


def build_template(base: Path, rows: int, n_images: int) -> Path:
    """A file with dataset BIG (``rows`` images, all with vectors, a few runs) and dataset
    'files' (``n_images`` real image files, not embedded) for the CLI to embed."""
    db = base / "template.duckdb"
    store = Store(db, base / "cache", idle_close_s=HELD)
    records = [
        ImageRecord(f"{i:032x}", f"f{i % 20}/img_{i:06d}.jpg", (f"f{i % 20}",), 64, 64, 1000, "JPEG", 0.0, None)
        for i in range(rows)
    ]
    store.ingest(BIG, "/nowhere", records, [])
    store.register_encoder(KEY, "bench", "v1", "last", "cls", DIM, {"id": "bench"})
    vectors = np.random.default_rng(0).normal(size=(rows, DIM)).astype(np.float32)
    store.write_embeddings(KEY, [r.content_hash for r in records], vectors)
    for i in range(5):
        store.finish_run(store.start_run("embed", BIG, KEY, {"i": i}))
    folder = base / "files"
    rng = np.random.default_rng(1)
    for i in range(n_images):
        sub = folder / f"class_{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sub / f"img_{i:05d}.png")
    scan = images.scan(folder, cache_dir=store.cache_dir)
    store.ingest("files", scan.root, scan.records, scan.skipped)
    store.close()
    return db


def copy_of(template: Path, dest: Path) -> Path:
    shutil.copyfile(template, dest)
    return dest


def page_read(store: Store) -> None:
    """What a page asks the store for on a rerun (the Data/Map pages' reads, roughly)."""
    store.list_datasets()
    store.dataset_names()
    store.embedding_status(BIG)
    store.runs("embed")
    store.list_cluster_runs(BIG)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def timed(fn: Callable[[], None], repeats: int) -> list[float]:
    fn()  # warm-up: imports, first open
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


# --------------------------------------------------------------------------- 1 and 2: cost per request


def bench_ops(base: Path, template: Path, repeats: int) -> dict[str, Any]:
    db = copy_of(template, base / "ops.duckdb")
    held = Store(db, base / "cache", idle_close_s=HELD)
    held_s = timed(held.dataset_names, repeats)
    held.close()
    released = Store(db, base / "cache", idle_close_s=0)
    released_s = timed(released.dataset_names, repeats)
    return {
        "query": "dataset_names()",
        "held_ops_per_s": round(len(held_s) / sum(held_s), 1),
        "open_close_per_op_ops_per_s": round(len(released_s) / sum(released_s), 1),
        "held": percentiles(held_s),
        "open_close_per_op": percentiles(released_s),
        "extra_ms_per_op": round((statistics.median(released_s) - statistics.median(held_s)) * 1000, 2),
    }


def bench_page_read(base: Path, template: Path, repeats: int) -> dict[str, Any]:
    db = copy_of(template, base / "page.duckdb")
    held = Store(db, base / "cache", idle_close_s=HELD)
    held_s = timed(lambda: page_read(held), repeats)
    held.close()
    default = Store(db, base / "cache")  # the default idle close; release() = the page came after a pause

    def cold_page() -> None:
        default.release()
        page_read(default)

    cold_s = timed(cold_page, repeats)
    default.close()
    per_op = Store(db, base / "cache", idle_close_s=0)
    per_op_s = timed(lambda: page_read(per_op), repeats)
    return {
        "calls_per_page": 5,
        "held": percentiles(held_s),
        "one_open_per_page": percentiles(cold_s),
        "open_close_per_call": percentiles(per_op_s),
        "default_idle_close_s": default.idle_close_s,
    }


def bench_matrix_load(base: Path, template: Path, repeats: int) -> dict[str, Any]:
    db = copy_of(template, base / "matrix.duckdb")
    store = Store(db, base / "cache", idle_close_s=HELD)

    def load() -> None:
        store.load_embeddings(BIG, KEY)

    def after_reopen() -> None:
        store.close()
        load()

    warm = timed(load, repeats)
    cold = timed(after_reopen, repeats)
    store.close()
    return {"held": percentiles(warm), "after_reopen": percentiles(cold)}


# --------------------------------------------------------------------------- 3: a CLI embed beside the app


def bench_cli_embed(base: Path, template: Path, args: argparse.Namespace) -> dict[str, Any]:
    alone = run_embed(copy_of(template, base / "alone.duckdb"), base, args, reader=None)
    beside = run_embed(copy_of(template, base / "beside.duckdb"), base, args, reader="polling")
    held = run_embed(copy_of(template, base / "held.duckdb"), base, args, reader="holding")
    return {"images": args.images, "chunk": args.chunk, "alone": alone, "app_polling": beside, "app_holding_file": held}


def run_embed(db: Path, base: Path, args: argparse.Namespace, reader: str | None) -> dict[str, Any]:
    env = {
        **os.environ,
        "REPLENS_DB": str(db),
        "REPLENS_CACHE": str(base / "cache"),
        "REPLENS_EMBED_CHUNK": str(args.chunk),
        "REPLENS_DB_LOCK_TIMEOUT": "5" if reader == "holding" else "60",
    }
    command = [sys.executable, "-m", "core", "embed", "--dataset", "files", "--encoder", "pixels", "--json"]
    command += ["--workers", "1"]
    store = Store(db, base / "cache")
    stop = threading.Event()
    latencies: list[float] = []
    thread = threading.Thread(target=poll, args=(store, reader, stop, latencies, args.poll_ms), daemon=True)
    if reader:
        thread.start()
        time.sleep(0.5)  # the reader is in its stride before the command starts
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    stop.set()
    if reader:
        thread.join()
    out: dict[str, Any] = {"exit_code": proc.returncode, "wall_s": round(wall, 2)}
    if proc.returncode == 0:
        report = json.loads(proc.stdout)
        out["encoded"], out["cached"], out["failed"] = report["encoded"], report["cached"], len(report["failed"])
        out["embed_seconds"], out["images_per_s"] = report["seconds"], report["images_per_s"]
        out["images_per_s_wall"] = round(report["encoded"] / wall, 1)
        out["stored"] = Store(db, base / "cache", idle_close_s=0).count_embeddings(report["encoder"])
    else:
        out["error"] = proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else ""
    if reader:
        out["reader_page_reads"] = len(latencies)
        out["reader"] = percentiles(latencies) if latencies else {}
        out["reader_max_ms"] = round(max(latencies) * 1000, 1) if latencies else None
    store.close()
    return out


def poll(store: Store, mode: str | None, stop: threading.Event, latencies: list[float], poll_ms: float) -> None:
    """The app: a page read every ``poll_ms`` (``holding``: all inside one unit of work, so the
    file is never let go, as the old store did)."""
    if mode == "holding":
        with store.connected():
            while not stop.is_set():
                started = time.perf_counter()
                page_read(store)
                latencies.append(time.perf_counter() - started)
                stop.wait(poll_ms / 1000)
        return
    while not stop.is_set():
        started = time.perf_counter()
        page_read(store)
        latencies.append(time.perf_counter() - started)
        stop.wait(poll_ms / 1000)


if __name__ == "__main__":
    main()
