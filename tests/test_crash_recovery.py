"""``kill -9`` at random moments (seeded), then the same command again: nothing lost, nothing
twice, the database opens cleanly and the run records say what happened.

Three commands: ``python -m core embed`` (chunks of 8 via REPLENS_EMBED_CHUNK, so a run spans
many transactions), ``ingest`` and ``snapshot import``. Each is killed three times with SIGKILL
on the same database, then run to the end. The checks compare the store with what the files
on disk (or the exported snapshot) say it should hold, computed here independently.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash
from PIL import Image

from conftest import PYTHON, REPO_ROOT, png_bytes, write_file
from core import images, snapshots
from core.encoders import load_encoder
from core.extract import embed_images, unfinished_extractions
from core.store import Store

SEED = 20_261_202
KILLS = 3


def make_folder(root: Path, n: int, size: int = 16, seed0: int = 0) -> dict[str, bytes]:
    files = {f"c{i % 4}/img_{i:04d}.png": png_bytes(seed0 + i, size=size) for i in range(n)}
    for rel, data in files.items():
        write_file(root, rel, data)
    return files


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m core ARGS`` with the test's environment; output to files (never a full pipe)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.Popen(
        [PYTHON, "-m", "core", *args],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=log.with_suffix(".out").open("w"),
        stderr=log.with_suffix(".err").open("w"),
    )


def kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``proc`` after ``delay`` s; False if it had already exited by then."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)  # reaped: no zombie that would still look alive
        return proc.returncode == -signal.SIGKILL


def run_to_end(args: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    proc = spawn(args, log, env)
    assert proc.wait(timeout=300) == 0, log.with_suffix(".err").read_text()
    return json.loads(log.with_suffix(".out").read_text())


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll ``condition`` (this process reads the store while the command writes) until it holds;
    False if the command ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("the command made no progress")


def timed_run(args: list[str], log: Path, env: dict[str, str]) -> float:
    """How long an uninterrupted run takes here (against a scratch database), to place the kills."""
    started = time.monotonic()
    run_to_end(args, log, env)
    return time.monotonic() - started


def per_key_counts(store: Store, table_sql: str, params: list[object]) -> dict[str, int]:
    rows = store._cursor().execute(table_sql, params).fetchall()
    return {str(h): int(c) for h, c in rows}


# --------------------------------------------------------------------------- embed


def test_embed_killed_three_times_then_rerun_embeds_each_image_exactly_once(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    n = 480
    files = make_folder(tmp_path / "imgs", n)
    expected = {xxhash.xxh3_128_hexdigest(data): rel for rel, data in files.items()}  # what the scan must hold
    assert len(expected) == n
    store = Store()
    scan = images.scan(tmp_path / "imgs", cache_dir=store.cache_dir)
    store.ingest("d", scan.root, scan.records, scan.skipped)
    pixels = load_encoder("pixels", "cpu")
    key = pixels.key
    command = ["embed", "--dataset", "d", "--encoder", "pixels", "--batch-size", "4", "--workers", "1", "--json"]
    env = {"REPLENS_EMBED_CHUNK": "8"}
    rng = np.random.default_rng(SEED)

    killed: list[bool] = []
    flagged_while_running: list[list[object]] = []
    for attempt in range(KILLS):
        start = store.count_embeddings(key)
        proc = spawn(command, tmp_path / f"embed{attempt}", env)
        if attempt == 0:  # right after it starts its run: opening, the first chunks
            reached = wait_until(lambda: (store.runs("embed")["status"] == "running").any(), proc)
        else:  # once a random number of new vectors is in (always more than the killed runs left, so
            # this command has opened its own run); each kill leaves hundreds to do, so neither a slow
            # poll under load nor the kill's random delay lets the command finish them all first
            target = start + int(rng.integers(8, 48))
            reached = wait_until(lambda: store.count_embeddings(key) >= target, proc)  # noqa: B023
        if reached and proc.poll() is None:
            flagged_while_running.append(unfinished_extractions(store, "d"))
        killed.append(kill_after(proc, float(rng.uniform(0.0, 0.25))))

    assert all(killed), killed  # each kill hit a running command
    assert flagged_while_running == [[]] * KILLS  # a run of a live command is in progress, not abandoned
    before = store.count_embeddings(key)
    assert 0 < before < n
    # After the kills: the file opens, nothing is stored twice, and the killed runs read as abandoned.
    counts = per_key_counts(
        store, "SELECT content_hash, count(*) FROM embeddings WHERE encoder_key = ? GROUP BY 1", [key]
    )
    assert set(counts) <= set(expected) and set(counts.values()) == {1} and len(counts) == before
    runs = store.runs("embed")  # newest first
    assert len(runs) == KILLS and runs.iloc[0]["status"] == "running"  # the last one killed: left running
    # Each command closed the run the command before it left behind, as interrupted.
    assert list(runs.iloc[1:]["status"]) == ["failed"] * (KILLS - 1)
    assert all(str(e).startswith("Interrupted") for e in runs.iloc[1:]["error"])
    cut = unfinished_extractions(store, "d")
    assert [(c.run_id, c.n_missing) for c in cut] == [(runs.iloc[0]["run_id"], n - before)]

    report = run_to_end(command, tmp_path / "embed-final", env)
    assert (report["encoded"], report["cached"], report["failed"]) == (n - before, before, [])

    counts = per_key_counts(
        store, "SELECT content_hash, count(*) FROM embeddings WHERE encoder_key = ? GROUP BY 1", [key]
    )
    assert counts == dict.fromkeys(expected, 1)  # every image once: 0 lost, 0 duplicated
    frame, matrix = store.load_embeddings("d", key)
    reference = embed_images(pixels, [files[rel] for rel in frame["rel_path"]])
    np.testing.assert_allclose(matrix, reference, rtol=1e-6, atol=1e-6)  # no vector damaged by a kill
    runs = store.runs("embed").set_index("run_id")
    assert runs.loc[report["run_id"], "status"] == "done"
    killed_runs = runs.drop(index=report["run_id"])
    assert set(killed_runs["status"]) == {"failed"}  # closed by the run that took over
    assert all(str(e).startswith("Interrupted") for e in killed_runs["error"])
    assert unfinished_extractions(store, "d") == []
    store.close()


# --------------------------------------------------------------------------- ingest


def test_ingest_killed_three_times_then_rerun_records_each_file_once(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """Before each attempt the folder gains new files, so each killed scan has work to lose; it is
    killed once a random number of their thumbnails exist, after a random extra delay."""
    per_attempt = 120
    root = tmp_path / "imgs"
    command = ["ingest", str(root), "--dataset", "d", "--json"]
    cache = Path(isolated_env["REPLENS_CACHE"])
    rng = np.random.default_rng(SEED + 1)
    files: dict[str, bytes] = {}
    killed: list[bool] = []
    for attempt in range(KILLS):
        batch = make_folder(root / f"batch{attempt}", per_attempt, size=32, seed0=10_000 * (attempt + 1))
        files.update({f"batch{attempt}/{rel}": data for rel, data in batch.items()})
        thumbs = [images.thumbnail_path(cache, xxhash.xxh3_128_hexdigest(data)) for data in batch.values()]
        target = int(rng.integers(5, per_attempt - 20))
        proc = spawn(command, tmp_path / f"ingest{attempt}")
        wait_until(lambda: sum(t.exists() for t in thumbs) >= target, proc)  # noqa: B023
        killed.append(kill_after(proc, float(rng.uniform(0.0, 0.3))))
    assert sum(killed) >= KILLS - 1, killed  # (a kill in the last 0.3 s of a short scan may come too late)

    report = run_to_end(command, tmp_path / "ingest-final")
    assert report["added"] + report["unchanged"] == len(files) and report["removed"] == 0

    store = Store()
    paths = store.dataset_paths("d")
    assert sorted(paths["rel_path"]) == sorted(files)  # each file once
    for rel, content_hash in zip(paths["rel_path"], paths["content_hash"]):
        assert content_hash == xxhash.xxh3_128_hexdigest(files[rel])
    image_rows = per_key_counts(store, "SELECT content_hash, count(*) FROM images GROUP BY 1", [])
    assert image_rows == dict.fromkeys(paths["content_hash"], 1)
    for content_hash in paths["content_hash"]:  # thumbnails are written atomically: none half-written
        with Image.open(images.thumbnail_path(store.cache_dir, content_hash)) as thumb:
            thumb.load()
            assert max(thumb.size) > 0
    store.close()


# --------------------------------------------------------------------------- snapshot import


def test_snapshot_import_killed_three_times_then_rerun_stores_it_once(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    n = 400
    source = Store(tmp_path / "source" / "s.duckdb", tmp_path / "source" / "cache")
    make_folder(tmp_path / "imgs", n, size=48)
    scan = images.scan(tmp_path / "imgs", cache_dir=source.cache_dir)
    source.ingest("d", scan.root, scan.records, scan.skipped)
    hashes = [r.content_hash for r in scan.records]
    key = "enc@1/last/cls"
    source.register_encoder(key, "enc", "1", "last", "cls", 4, {"id": "enc", "dim": 4})
    source.write_embeddings(key, hashes, np.random.default_rng(0).normal(size=(n, 4)))
    assigned = np.arange(n) % 5
    source.save_cluster_run(
        "run1", "d", key, "kmeans", {"k": 5}, hashes, assigned, {}, n_clusters=5, noise_fraction=0.0
    )
    snapshot_id = snapshots.save_snapshot(source, "run1", title="crash test")
    exported = snapshots.export_snapshot(source, snapshot_id, tmp_path / "shared.replens")
    source.close()
    assert exported.n_points == n and exported.n_thumbnails == n

    command = ["snapshot", "import", str(exported.path), "--json"]
    scratch = {"REPLENS_DB": str(tmp_path / "scratch" / "s.duckdb"), "REPLENS_CACHE": str(tmp_path / "scratch" / "c")}
    full = timed_run(command, tmp_path / "import-timed", scratch)
    rng = np.random.default_rng(SEED + 2)
    killed = [
        kill_after(spawn(command, tmp_path / f"import{i}"), full * float(rng.uniform(0.3, 0.9))) for i in range(KILLS)
    ]
    assert sum(killed) >= KILLS - 1, killed  # (a kill placed late may find it finished, the machine being faster)

    run_to_end(command, tmp_path / "import-final")
    store = Store()
    assert list(store.list_snapshots()["snapshot_id"]) == [snapshot_id]
    found = store.snapshot_rows(snapshot_id)
    assert found is not None
    _, points, clusters = found
    assert isinstance(points, pa.Table) and points.num_rows == n
    assert sorted(points.column("content_hash").to_pylist()) == sorted(hashes)  # each point once
    assert clusters.num_rows == 5
    for content_hash in hashes:  # every thumbnail moved into place and whole
        with Image.open(images.thumbnail_path(store.cache_dir, content_hash)) as thumb:
            thumb.load()
    store.close()
