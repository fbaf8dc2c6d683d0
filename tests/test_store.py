"""Tests for core.store: migrations, ingest bookkeeping, embeddings I/O, transactions, locking."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import PYTHON, REPO_ROOT, png_bytes, write_file
from core import images
from core.errors import (
    DatasetNotFoundError,
    EmbeddingsNotFoundError,
    InvalidInputError,
    RepLensError,
)
from core.images import ImageRecord, SkippedFile
from core.store import MIGRATIONS, SCHEMA_VERSION, PendingImage, Store
from core.store import datasets as datasets_module
from core.store import embeddings as embeddings_module
from core.store import migrations as migrations_module


def fake_records(n: int, prefix: str = "a", start: int = 0) -> list[ImageRecord]:
    """Records without files behind them: enough for everything but extraction."""
    return [
        ImageRecord(
            content_hash=f"{i:032x}",
            rel_path=f"{prefix}/{i:06d}.png",
            labels=(prefix,),
            width=8,
            height=8,
            n_bytes=100 + i,
            format="PNG",
            mtime=float(i),
            caption=f"caption {i}" if i % 2 else None,
        )
        for i in range(start, start + n)
    ]


def register(store: Store, key: str = "k@v/l/p", dim: int = 4) -> str:
    store.register_encoder(key, key.split("@")[0], "v", "l", "p", dim, {"id": key, "dim": dim})
    return key


def ingest_folder(store: Store, dataset: str, root: Path):
    scan = images.scan(root)
    return store.ingest(dataset, scan.root, scan.records, scan.skipped), scan


def path_table(store: Store, dataset: str) -> list[tuple[str, str]]:
    frame = store.dataset_paths(dataset)
    return list(zip(frame["rel_path"], frame["content_hash"]))


# --------------------------------------------------------------------------- migrations


def test_migrations_are_applied_once_and_recorded(
    db_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def counting(migration):
        def run(cur):
            calls.append(migration.__name__)
            migration(cur)

        run.__name__ = migration.__name__
        return run

    monkeypatch.setattr(migrations_module, "MIGRATIONS", tuple(counting(m) for m in MIGRATIONS))
    first = Store(db_file, tmp_path / "c")
    assert first.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    assert calls == [m.__name__ for m in MIGRATIONS]
    recorded = first._cursor().execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert recorded == [(i, m.__name__) for i, m in enumerate(MIGRATIONS, start=1)]
    first.ingest("keep", "/src", fake_records(3), [])
    first.close()

    calls.clear()
    second = Store(db_file, tmp_path / "c")
    try:
        assert second.schema_version() == SCHEMA_VERSION
        assert calls == []  # nothing re-applied on reopen
        assert second._cursor().execute("SELECT count(*) FROM schema_migrations").fetchall()[0][0] == len(MIGRATIONS)
        # Data written before closing is still there.
        assert second.dataset_names() == ["keep"]
        assert path_table(second, "keep") == [(r.rel_path, r.content_hash) for r in fake_records(3)]
    finally:
        second.close()


def test_database_from_a_newer_release_is_refused(db_file: Path, tmp_path: Path) -> None:
    s = Store(db_file, tmp_path / "c")
    s._cursor().execute("INSERT INTO schema_migrations VALUES (?, 'm999_future', now())", [SCHEMA_VERSION + 5])
    s.close()
    with pytest.raises(RepLensError, match="newer"):
        Store(db_file, tmp_path / "c").dataset_names()


# --------------------------------------------------------------------------- ingest


def test_ingest_counts_track_rescans(store: Store, image_folder) -> None:
    root = image_folder.root
    stats, scan = ingest_folder(store, "d", root)
    assert (stats.added, stats.duplicates, stats.unchanged, stats.updated, stats.removed) == (8, 0, 0, 0, 0)
    assert [r for r, _ in path_table(store, "d")] == image_folder.rel_paths

    stats, _ = ingest_folder(store, "d", root)
    assert (stats.added, stats.duplicates, stats.unchanged, stats.updated, stats.removed) == (0, 0, 8, 0, 0)

    # One brand-new file and one copy of an existing file.
    write_file(root, "birds/bird_new.png", png_bytes(1000))
    write_file(root, "birds/copy_of_cat_0.png", image_folder.files["cats/cat_0.png"])
    stats, _ = ingest_folder(store, "d", root)
    assert (stats.added, stats.duplicates, stats.unchanged, stats.updated, stats.removed) == (2, 1, 8, 0, 0)

    # Content of one path changes.
    new_bytes = png_bytes(2000)
    write_file(root, "dogs/dog_2.png", new_bytes)
    stats, _ = ingest_folder(store, "d", root)
    assert (stats.added, stats.duplicates, stats.unchanged, stats.updated, stats.removed) == (0, 0, 9, 1, 0)
    assert dict(path_table(store, "d"))["dogs/dog_2.png"] == images.content_hash(new_bytes)

    # Two paths disappear.
    (root / "cats/cat_1.png").unlink()
    (root / "birds/bird_new.png").unlink()
    stats, _ = ingest_folder(store, "d", root)
    assert (stats.added, stats.duplicates, stats.unchanged, stats.updated, stats.removed) == (0, 0, 8, 0, 2)
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert [r for r, _ in path_table(store, "d")] == on_disk
    expected_hashes = {images.content_hash((root / p).read_bytes()) for p in on_disk}
    assert set(store.dataset_images("d")["content_hash"]) == expected_hashes


def test_same_bytes_at_two_paths_is_one_image(store: Store, image_folder) -> None:
    root = image_folder.root
    write_file(root, "dogs/zz_copy.png", image_folder.files["cats/cat_2.png"])
    stats, _ = ingest_folder(store, "d", root)
    assert stats.added == 9 and stats.duplicates == 1
    imgs = store.dataset_images("d")
    assert len(imgs) == 8
    row = imgs.set_index("content_hash").loc[images.content_hash(image_folder.files["cats/cat_2.png"])]
    assert row["n_paths"] == 2
    assert row["rel_path"] == "cats/cat_2.png"  # the first path names the image
    assert row["label"] == "cats"
    assert set(imgs["n_paths"]) == {1, 2} and imgs["n_paths"].sum() == 9
    assert len(store.dataset_paths("d")) == 9
    listing = store.list_datasets().set_index("dataset").loc["d"]
    assert (listing["n_paths"], listing["n_images"]) == (9, 8)


def test_dataset_images_columns_come_from_the_scan(store: Store, image_folder) -> None:
    _, scan = ingest_folder(store, "d", image_folder.root)
    imgs = store.dataset_images("d").set_index("rel_path")
    for rec in scan.records:
        row = imgs.loc[rec.rel_path]
        assert row["content_hash"] == rec.content_hash
        assert list(row["labels"]) == list(rec.labels)
        assert row["label"] == rec.labels[0]
        assert (row["width"], row["height"], row["n_bytes"], row["format"]) == (
            64,
            64,
            len(image_folder.files[rec.rel_path]),
            "PNG",
        )
    assert imgs.loc["cats/cat_0.png", "caption"] == "a grey cat"
    assert imgs.loc["dogs/dog_1.png", "caption"] == "a happy dog"
    assert imgs["caption"].isna().sum() == 6


def test_root_level_images_get_an_empty_label(store: Store) -> None:
    records = [ImageRecord(f"{i:032x}", f"{i}.png", (), 8, 8, 1, "PNG", 0.0, None) for i in range(3)]
    store.ingest("flat", "/flat", records, [])
    imgs = store.dataset_images("flat")
    assert imgs["label"].tolist() == ["", "", ""]
    assert [list(x) for x in imgs["labels"]] == [[], [], []]


def test_skipped_files_are_recorded_and_replaced_by_a_rescan(store: Store, image_folder) -> None:
    root = image_folder.root
    write_file(root, "cats/broken.png", b"not a png at all")
    _, scan = ingest_folder(store, "d", root)
    skipped = store.skipped_files("d")
    assert skipped["rel_path"].tolist() == ["cats/broken.png"]
    assert skipped["stage"].tolist() == ["ingest"]
    assert skipped["source"].tolist() == [scan.root]
    assert "cannot identify image" in skipped["reason"].iloc[0]
    assert store.list_datasets().set_index("dataset").loc["d", "n_skipped"] == 1

    (root / "cats/broken.png").unlink()
    ingest_folder(store, "d", root)
    assert store.skipped_files("d").empty


def test_ingest_with_no_readable_image_creates_an_empty_dataset(store: Store) -> None:
    stats = store.ingest("empty", "/nowhere", [], [SkippedFile("x.png", "cannot identify image file")])
    assert (stats.added, stats.removed) == (0, 0)
    assert store.dataset_names() == ["empty"]
    assert store.dataset_images("empty").empty
    assert store.skipped_files("empty")["rel_path"].tolist() == ["x.png"]


def test_two_sources_in_one_dataset_do_not_remove_each_other(store: Store) -> None:
    a, b = fake_records(3, "a"), fake_records(2, "b", start=10)
    store.ingest("d", "/src/one", a, [])
    stats = store.ingest("d", "/src/two", b, [])
    assert stats.added == 2 and stats.removed == 0
    stats = store.ingest("d", "/src/one", a[:1], [])  # rescan of one: two paths gone there only
    assert (stats.unchanged, stats.removed) == (1, 2)
    paths = store.dataset_paths("d")
    assert list(zip(paths["source"], paths["rel_path"])) == [
        ("/src/one", a[0].rel_path),
        ("/src/two", b[0].rel_path),
        ("/src/two", b[1].rel_path),
    ]


@pytest.mark.parametrize("name", ["", "   ", "bad\nname", "x" * 201])
def test_unusable_dataset_names_are_rejected_without_writing(store: Store, name: str) -> None:
    with pytest.raises(InvalidInputError, match="Dataset name"):
        store.ingest(name, "/src", fake_records(1), [])
    assert store.dataset_names() == []


def test_unknown_dataset_says_how_to_ingest(store: Store) -> None:
    store.ingest("known", "/src", fake_records(1), [])
    key = register(store)
    calls = [
        lambda: store.dataset_images("nope"),
        lambda: store.dataset_paths("nope"),
        lambda: store.pending_images("nope", key),
        lambda: store.load_embeddings("nope", key),
        lambda: store.embedding_status("nope"),
        lambda: store.export_embeddings("nope", key, "/tmp/never.parquet"),
    ]
    for call in calls:
        with pytest.raises(DatasetNotFoundError) as info:
            call()
        message = str(info.value)
        assert "'nope'" in message and "known" in message
        assert "python -m core ingest PATH --dataset nope" in message
        assert not message.startswith('"')  # not KeyError's quoting
        assert isinstance(info.value, KeyError)


# --------------------------------------------------------------------------- embeddings


def test_write_embeddings_is_insert_or_ignore_and_counts_new_rows(store: Store) -> None:
    records = fake_records(5)
    store.ingest("d", "/src", records, [])
    key = register(store, dim=4)
    hashes = [r.content_hash for r in records]
    first = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert store.write_embeddings(key, hashes[:3], first) == 3
    assert store.write_embeddings(key, hashes[:3], first + 100) == 0
    mixed = np.full((3, 4), -1.0, np.float32)
    assert store.write_embeddings(key, hashes[2:5], mixed) == 2
    assert store.write_embeddings(key, [], np.zeros((0, 4), np.float32)) == 0
    assert store.count_embeddings(key) == 5
    _, matrix = store.load_embeddings("d", key)
    expected = np.concatenate([first, mixed[1:]])
    assert np.array_equal(matrix, expected)  # the second write did not replace anything


def test_load_embeddings_returns_exact_float32_contiguous_rows(store: Store) -> None:
    records = fake_records(7)
    store.ingest("d", "/src", records, [])
    key = register(store, dim=5)
    rng = np.random.default_rng(3)
    vectors = (rng.standard_normal((7, 5)) * 10.0 ** rng.integers(-30, 30, (7, 5))).astype(np.float32)
    vectors[0, 0] = np.finfo(np.float32).max
    vectors[1, 1] = np.finfo(np.float32).tiny
    store.write_embeddings(key, [r.content_hash for r in records], vectors.astype(np.float64))
    imgs, matrix = store.load_embeddings("d", key)
    assert matrix.dtype == np.float32
    assert matrix.flags["C_CONTIGUOUS"]
    assert matrix.shape == (7, 5)
    by_hash = dict(zip((r.content_hash for r in records), vectors))
    assert np.array_equal(matrix, np.stack([by_hash[h] for h in imgs["content_hash"]]))


def test_dataset_images_order_is_load_embeddings_order(store: Store) -> None:
    # Two sources, interleaved names, and a duplicate: the orders must still agree.
    one = fake_records(6, "m")
    two = [ImageRecord(f"{i:032x}", f"b/{i:06d}.png", ("b",), 8, 8, 1, "PNG", 0.0, None) for i in range(20, 26)]
    dup = ImageRecord(one[3].content_hash, "z/dup.png", ("z",), 8, 8, 1, "PNG", 0.0, None)
    store.ingest("d", "/src/2", one + [dup], [])
    store.ingest("d", "/src/1", two, [])
    key = register(store, dim=3)
    all_hashes = store.dataset_images("d")["content_hash"].tolist()
    assert len(all_hashes) == 12
    rng = np.random.default_rng(0)
    vectors = {h: rng.standard_normal(3).astype(np.float32) for h in all_hashes}
    shuffled = list(rng.permutation(all_hashes))
    store.write_embeddings(key, shuffled, np.stack([vectors[h] for h in shuffled]))
    imgs, matrix = store.load_embeddings("d", key)
    expected = store.dataset_images("d")
    assert imgs["content_hash"].tolist() == expected["content_hash"].tolist()
    assert imgs["rel_path"].tolist() == expected["rel_path"].tolist()
    assert np.array_equal(matrix, np.stack([vectors[h] for h in expected["content_hash"]]))
    # dataset_images is ordered by its first path.
    firsts = list(zip(expected["rel_path"], expected["source"]))
    assert firsts == sorted(firsts)


def test_load_embeddings_with_some_images_missing_keeps_order(store: Store) -> None:
    records = fake_records(6)
    store.ingest("d", "/src", records, [])
    key = register(store, dim=2)
    some = [records[i].content_hash for i in (4, 1, 3)]
    store.write_embeddings(key, some, np.array([[4, 4], [1, 1], [3, 3]], np.float32))
    imgs, matrix = store.load_embeddings("d", key)
    assert imgs["content_hash"].tolist() == [records[i].content_hash for i in (1, 3, 4)]
    assert matrix[:, 0].tolist() == [1.0, 3.0, 4.0]
    assert [p.content_hash for p in store.pending_images("d", key)] == [records[i].content_hash for i in (0, 2, 5)]


def test_missing_embeddings_raise_with_a_command_to_run(store: Store) -> None:
    store.ingest("d", "/src", fake_records(2), [])
    with pytest.raises(EmbeddingsNotFoundError, match="python -m core embed"):
        store.load_embeddings("d", "never@v/l/p")
    key = register(store)
    with pytest.raises(EmbeddingsNotFoundError, match="python -m core embed --dataset d --encoder k"):
        store.load_embeddings("d", key)


def test_larger_matrix_round_trips_through_arrow(store: Store, record_property) -> None:
    # Several DuckDB vector chunks (2048 rows each). The time is recorded, never asserted:
    # 100k x 768 timing belongs to bench/.
    n, dim = 5000, 768
    records = fake_records(n)
    store.ingest("big", "/src", records, [])
    key = register(store, dim=dim)
    vectors = np.random.default_rng(1).standard_normal((n, dim), dtype=np.float32)
    assert store.write_embeddings(key, [r.content_hash for r in records], vectors) == n
    started = time.perf_counter()
    imgs, matrix = store.load_embeddings("big", key)
    record_property("load_embeddings_5000x768_s", round(time.perf_counter() - started, 4))
    assert matrix.shape == (n, dim)
    assert imgs["content_hash"].tolist() == [r.content_hash for r in records]
    assert np.array_equal(matrix, vectors)


def test_embedding_status_counts_per_key(store: Store) -> None:
    records = fake_records(4)
    store.ingest("d", "/src", records, [])
    k1, k2 = register(store, "a@v/l/p", 2), register(store, "b@v/l/p", 3)
    store.write_embeddings(k1, [r.content_hash for r in records], np.ones((4, 2)))
    store.write_embeddings(k2, [records[0].content_hash], np.ones((1, 3)))
    status = store.embedding_status("d").set_index("encoder_key")
    assert status.loc[k1, "n_embedded"] == 4 and status.loc[k2, "n_embedded"] == 1
    assert set(status["n_images"]) == {4}
    assert store.embedded_keys("d") == [k1, k2]


def test_dataset_version_changes_with_every_change_a_cached_view_must_see(store: Store) -> None:
    records = fake_records(4)
    store.ingest("d", "/src", records, [])
    key = register(store, dim=2)
    seen = [store.dataset_version("d")]
    assert store.dataset_version("d") == seen[0]  # nothing changed: the same version
    store.write_embeddings(key, [r.content_hash for r in records[:2]], np.ones((2, 2)))
    seen.append(store.dataset_version("d"))
    store.write_embeddings(key, [r.content_hash for r in records[2:]], np.ones((2, 2)))
    seen.append(store.dataset_version("d"))
    time.sleep(0.01)  # replaced vectors: the same count, a newer write
    store.write_embeddings(key, [records[0].content_hash], np.zeros((1, 2)), replace=True)
    seen.append(store.dataset_version("d"))
    store.ingest("d", "/src", records[:3], [])  # a rescan that lost a file
    seen.append(store.dataset_version("d"))
    store.ingest("d", "/src", records, [])  # and found it again
    seen.append(store.dataset_version("d"))
    assert len(set(seen)) == len(seen), seen
    assert store.dataset_version("d") == seen[-1]


# --------------------------------------------------------------------------- transactions


def test_vectors_of_the_wrong_width_are_rejected_and_nothing_is_written(store: Store) -> None:
    records = fake_records(3)
    store.ingest("d", "/src", records, [])
    key = register(store, dim=4)
    hashes = [r.content_hash for r in records]
    store.write_embeddings(key, hashes[:1], np.ones((1, 4)))
    with pytest.raises(InvalidInputError):
        store.write_embeddings(key, hashes[1:], np.ones((2, 5)))
    with pytest.raises(InvalidInputError):
        store.write_embeddings(key, hashes[1:], np.ones((3, 4)))  # rows != hashes
    assert store.count_embeddings(key) == 1
    _, matrix = store.load_embeddings("d", key)  # still loadable at the registered width
    assert matrix.shape == (1, 4)
    # The store is still usable after the failed transaction.
    assert store.write_embeddings(key, hashes[1:], np.zeros((2, 4))) == 2


def test_failure_mid_ingest_leaves_the_database_unchanged(
    store: Store, image_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = image_folder.root
    write_file(root, "cats/broken.png", b"junk")
    ingest_folder(store, "d", root)
    before_paths = store.dataset_paths("d")
    before_skipped = store.skipped_files("d")
    before_images = store._cursor().execute("SELECT count(*) FROM images").fetchall()[0][0]

    # The rescan would delete two paths, add one and forget the skipped file; then it fails.
    (root / "cats/cat_0.png").unlink()
    (root / "dogs/dog_0.png").unlink()
    (root / "cats/broken.png").unlink()
    write_file(root, "birds/new.png", png_bytes(500))
    real = datasets_module._ingest_rows

    def explode(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("disk full")

    monkeypatch.setattr(datasets_module, "_ingest_rows", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_folder(store, "d", root)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_folder(store, "other", root)

    pd.testing.assert_frame_equal(store.dataset_paths("d"), before_paths)
    pd.testing.assert_frame_equal(store.skipped_files("d"), before_skipped)
    assert store._cursor().execute("SELECT count(*) FROM images").fetchall()[0][0] == before_images
    assert store.dataset_names() == ["d"]

    monkeypatch.setattr(datasets_module, "_ingest_rows", real)
    stats, _ = ingest_folder(store, "d", root)  # the same Store works afterwards
    assert (stats.added, stats.removed) == (1, 2)


def test_failure_writing_embeddings_rolls_back_the_chunk(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    records = fake_records(4)
    store.ingest("d", "/src", records, [])
    key = register(store, dim=2)
    hashes = [r.content_hash for r in records]
    store.write_embeddings(key, hashes[:1], np.ones((1, 2)))
    real_now = embeddings_module._now
    monkeypatch.setattr(embeddings_module, "_now", lambda: (_ for _ in ()).throw(RuntimeError("clock broke")))
    with pytest.raises(RuntimeError, match="clock broke"):
        store.write_embeddings(key, hashes[1:], np.zeros((3, 2)))
    monkeypatch.setattr(embeddings_module, "_now", real_now)
    assert store.count_embeddings(key) == 1
    assert store.write_embeddings(key, hashes, np.zeros((4, 2))) == 3


def test_failed_commit_is_reported_and_does_not_poison_the_thread_cursor(store: Store) -> None:
    """A transaction whose COMMIT fails raises that error, and the thread's cursor stays usable."""
    store.ingest("d", "/src", fake_records(2), [])
    cur = store._cursor()
    other = store._connection().cursor()  # a second writer outside the Store's own methods
    with pytest.raises(Exception, match="duplicate key"):
        with store._transaction() as mine:
            mine.execute("INSERT INTO datasets VALUES ('x', now(), now())")
            other.execute("INSERT INTO datasets VALUES ('x', now(), now())")  # commits first
    assert store._cursor() is cur
    assert store.dataset_names() == ["d", "x"]
    assert store.ingest("d", "/src", fake_records(3), []).added == 1


# --------------------------------------------------------------------------- concurrency


def test_threads_sharing_one_store_read_and_write_correctly(store: Store) -> None:
    n_threads, per_thread = 6, 40
    records = fake_records(n_threads * per_thread)
    store.ingest("d", "/src", records, [])
    key = register(store, dim=3)
    shared_key = register(store, "shared@v/l/p", dim=3)
    hashes = [r.content_hash for r in records]
    errors: list[BaseException] = []
    new_counts: list[int] = []
    barrier = threading.Barrier(n_threads + 4)

    def writer(t: int) -> None:
        try:
            barrier.wait()
            mine = hashes[t * per_thread : (t + 1) * per_thread]
            for start in range(0, per_thread, 10):
                part = mine[start : start + 10]
                vec = np.array([[t, start + j, 7] for j in range(len(part))], np.float32)
                assert store.write_embeddings(key, part, vec) == len(part)
                assert len(store.dataset_images("d")) == len(records)
            # Every thread also writes the same shared rows: exactly one write per row wins.
            new_counts.append(store.write_embeddings(shared_key, hashes[:20], np.full((20, 3), t, np.float32)))
        except BaseException as exc:
            errors.append(exc)

    def ingester(t: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                # Same dataset name from several threads, and one dataset per thread.
                store.ingest("same", f"/other/{t}", fake_records(5, f"o{t}"), [])
                store.ingest(f"mine{t}", "/src", fake_records(5), [])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    threads += [threading.Thread(target=ingester, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert sum(new_counts) == 20
    imgs, matrix = store.load_embeddings("d", key)
    assert matrix.shape == (len(records), 3)
    pos = {h: i for i, h in enumerate(hashes)}
    for h, row in zip(imgs["content_hash"], matrix):
        t, j = divmod(pos[h], per_thread)
        assert row.tolist() == [t, j, 7]
    _, shared = store.load_embeddings("d", shared_key)
    assert shared.shape == (20, 3)
    assert len({tuple(r) for r in shared}) == 1  # all 20 rows from the single winning thread
    assert store.dataset_names() == ["d", "mine0", "mine1", "mine2", "mine3", "same"]
    assert len(store.dataset_paths("same")) == 20


def test_second_process_gets_a_clear_lock_error(store: Store, db_file: Path) -> None:
    """While this process holds the file (a unit of work), another process waits for it up to
    REPLENS_DB_LOCK_TIMEOUT, then gets a clear error; once the unit ends it opens the file."""
    code = (
        "import sys\n"
        "from core.store import Store\n"
        "from core.errors import DatabaseLockedError\n"
        f"s = Store({str(db_file)!r}, {str(db_file.parent / 'c2')!r})\n"
        "try:\n"
        "    s.dataset_names()\n"
        "except DatabaseLockedError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "REPLENS_DB_LOCK_TIMEOUT": "1"}
    with store.connected():  # holds the file open until the block ends
        store.ingest("d", "/src", fake_records(1), [])
        proc = subprocess.run([PYTHON, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 3, proc.stderr
    message = proc.stdout.strip()
    assert str(db_file) in message
    assert "another process" in message and "REPLENS_DB" in message
    # Once the unit of work has ended, the other process can open the file (waiting out the idle close).
    proc = subprocess.run(
        [PYTHON, "-c", code.replace("s.dataset_names()", "print(s.dataset_names())")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "REPLENS_DB_LOCK_TIMEOUT": "30"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['d']"


def test_export_embeddings_writes_parquet_with_the_stored_vectors(store: Store, tmp_path: Path) -> None:
    records = fake_records(4)
    dup = ImageRecord(records[1].content_hash, "b/dup.png", ("b",), 8, 8, 1, "PNG", 0.0, "dup caption")
    store.ingest("d", "/src", records + [dup], [])
    key = register(store, dim=6)
    vectors = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    store.write_embeddings(key, [r.content_hash for r in records], vectors)
    out = tmp_path / "out" / "vectors.parquet"
    assert store.export_embeddings("d", key, out) == 5
    assert not out.with_name(out.name + ".tmp").exists()
    table = pq.read_table(out)
    assert table.num_rows == 5
    assert {"rel_path", "source", "content_hash", "labels", "caption", "encoder_key", "vector"} <= set(
        table.column_names
    )
    frame = table.to_pandas()
    by_hash = {r.content_hash: v for r, v in zip(records, vectors)}
    for _, row in frame.iterrows():
        assert np.array_equal(np.asarray(row["vector"], np.float32), by_hash[row["content_hash"]])
        assert row["encoder_key"] == key
    assert sorted(frame["rel_path"]) == sorted([r.rel_path for r in records] + ["b/dup.png"])
    assert frame.set_index("rel_path").loc["b/dup.png", "caption"] == "dup caption"


def test_export_without_embeddings_raises(store: Store, tmp_path: Path) -> None:
    store.ingest("d", "/src", fake_records(2), [])
    key = register(store)
    with pytest.raises(EmbeddingsNotFoundError):
        store.export_embeddings("d", key, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_record_embed_failures_shows_stage_embed(store: Store) -> None:
    records = fake_records(3)
    store.ingest("d", "/src", records, [SkippedFile("a/bad.png", "cannot identify image file")])
    failure = PendingImage(records[1].content_hash, "/src", records[1].rel_path)
    store.record_embed_failures("d", [failure], ["Cannot read: file not found"])
    store.record_embed_failures("d", [failure], ["second reason"])  # replaces, no duplicate key error
    skipped = store.skipped_files("d").set_index("rel_path")
    assert skipped.loc[records[1].rel_path, "stage"] == "embed"
    assert skipped.loc[records[1].rel_path, "reason"] == "second reason"
    assert skipped.loc["a/bad.png", "stage"] == "ingest"
    assert len(skipped) == 2


def test_runs_are_recorded_with_status(store: Store) -> None:
    ok = store.start_run("embed", "d", "k", {"batch_size": 4})
    bad = store.start_run("embed", "d", "k", {})
    store.finish_run(ok, stats={"encoded": 3})
    store.finish_run(bad, error="RuntimeError: boom")
    runs = store.runs("embed").set_index("run_id")
    assert runs.loc[ok, "status"] == "done" and runs.loc[bad, "status"] == "failed"
    assert runs.loc[bad, "error"] == "RuntimeError: boom"
    assert '"encoded": 3' in runs.loc[ok, "stats"]
    assert store.runs("projection").empty


@pytest.mark.parametrize(
    "chunk_sizes, order", [((5,), "same"), ((5,), "shuffled"), ((2, 0, 3), "shuffled"), ((3, 2), "subset")]
)
def test_gather_rows_matches_plain_indexing(chunk_sizes: tuple[int, ...], order: str) -> None:
    """Vectors arrive from DuckDB in chunks and in any order; each output row must be the
    vector of the table row it was matched to (checked against numpy fancy indexing)."""
    import pyarrow as pa

    from core.store import _gather_rows

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(sum(chunk_sizes), 4)).astype(np.float32)
    chunks, start = [], 0
    for n in chunk_sizes:
        flat = pa.array(vectors[start : start + n].ravel())
        chunks.append(pa.FixedSizeListArray.from_arrays(flat, 4))
        start += n
    column = pa.chunked_array(chunks, type=pa.list_(pa.float32(), 4))
    rows = {"same": np.arange(len(vectors)), "shuffled": rng.permutation(len(vectors)), "subset": np.array([4, 0, 2])}[
        order
    ]
    got = _gather_rows(column, rows, 4)
    np.testing.assert_array_equal(got, vectors[rows])
    assert got.dtype == np.float32 and got.shape == (len(rows), 4)


# --------------------------------------------------------------------------- rename, delete, collect (issue 10)


def _populate(store: Store, dataset: str, records: list[ImageRecord], source: str) -> str:
    """A dataset with one run record, one projection, one cluster run and its labels; -> run id."""
    store.ingest(dataset, source, records, [SkippedFile("bad.png", "broken")])
    hashes = [r.content_hash for r in records]
    store.start_run("embed", dataset, None, {})
    store.save_projection(f"proj-{dataset}", dataset, "k", "pca", {}, hashes, np.zeros((len(hashes), 2)), 0.1)
    run_id = f"run-{dataset}"
    store.save_cluster_run(run_id, dataset, "k", "kmeans", {}, hashes, np.zeros(len(hashes), int), {}, 1, 0.0)
    store.set_cluster_label(run_id, 0, "zero")
    return run_id


def test_rename_dataset_moves_every_reference_and_maps_sources(store: Store) -> None:
    run_id = _populate(store, "old", fake_records(3), "/cache/uploads/old")
    created = store.list_datasets().set_index("dataset").loc["old", "created_at"]
    store.rename_dataset("old", "new", {"/cache/uploads/old": "/cache/uploads/new"})
    assert store.dataset_names() == ["new"]
    assert store.dataset_sources("new") == ["/cache/uploads/new"]
    assert path_table(store, "new") == [(r.rel_path, r.content_hash) for r in fake_records(3)]
    assert store.skipped_files("new")["rel_path"].tolist() == ["bad.png"]
    assert store.list_datasets().set_index("dataset").loc["new", "created_at"] == created
    assert store.list_cluster_runs("new")["run_id"].tolist() == [run_id]
    assert store.list_projections("new")["projection_key"].tolist() == ["proj-old"]
    assert store.runs("embed")["dataset"].tolist() == ["new"]
    assert store.load_cluster_labels(run_id)["label"].tolist() == ["zero"]
    with pytest.raises(InvalidInputError, match="path separator"):
        store.rename_dataset("new", "a/b")
    with pytest.raises(DatasetNotFoundError):
        store.rename_dataset("old", "other")


def test_delete_dataset_removes_its_rows_only(store: Store) -> None:
    gone_run = _populate(store, "gone", fake_records(3), "/src/gone")
    kept_run = _populate(store, "kept", fake_records(2, start=1), "/src/kept")  # two hashes shared
    counts = store.delete_dataset("gone")
    assert counts == {
        "cluster_labels": 1,
        "cluster_assignments": 3,
        "cluster_runs": 1,
        "projections": 1,
        "runs": 1,
        "skipped_files": 1,
        "paths": 3,
    }
    assert store.dataset_names() == ["kept"] and store.load_cluster_run(gone_run) is None
    assert store.load_cluster_run(kept_run) is not None and store.load_projection("proj-kept") is not None
    assert store.load_projection("proj-gone") is None
    key = register(store)
    store.write_embeddings(key, [r.content_hash for r in fake_records(3)], np.ones((3, 4), np.float32))
    freed, n_images = store.collect_unused(dry_run=True)
    assert freed["n_vectors"].tolist() == [1] and freed["n_values"].tolist() == [4] and n_images == 1
    assert store.count_embeddings() == 3
    store.collect_unused()
    assert store.count_embeddings() == 2 and store.collect_unused()[1] == 0
