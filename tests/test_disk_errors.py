"""Issue 11: a full disk and a read-only cache or database folder, on real small tmpfs mounts.

Each failed write (thumbnail, ingest, upload, weights, database change) is a typed error from
core/errors.py with a message that says what to do, and corrupts nothing: no partial file is left
and the database opens afterwards with the content it had before the failed operation.

Tests run as root, where chmod does not stop a write: read-only is a tmpfs remounted ``ro``. A
machine where ``mount`` is refused (no privilege) skips these tests with mount's own message.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors
from streamlit.testing.v1 import AppTest

from conftest import build_folder, png_bytes
from core import images, uploads
from core.datasets import ingest_path, rename_dataset
from core.errors import DatabaseError, StorageFullError, StorageNotWritableError
from core.store import Store
from core.weights import save_weights

ROOT = Path(__file__).resolve().parent.parent
DATA_PAGE = str(ROOT / "pages" / "data.py")

Mount = Callable[..., Path]


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:  # no mount binary at all
        return subprocess.CompletedProcess(["mount", *args], 127, "", str(exc))


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``tmpfs(name, size="2m")``: a fresh tmpfs mounted at ``tmp_path/name``; unmounted after the test."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "2m") -> Path:
        point = tmp_path / name
        point.mkdir()
        done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point))
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs failed here: {done.stderr.strip() or done.returncode}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=True)  # a file still open (a cached Store)


def remount(point: Path, mode: str) -> None:
    done = _mount("-o", f"remount,{mode}", str(point))
    assert done.returncode == 0, done.stderr


def fill(point: Path) -> Path:
    """Write one file until the disk is full; -> that file (delete it to free the space)."""
    filler = point / "filler.bin"
    with filler.open("wb", buffering=0) as handle:
        for chunk in (1 << 16, 4096, 512):
            try:
                while True:
                    handle.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def files_under(point: Path) -> list[Path]:
    return sorted(p for p in point.rglob("*") if p.is_file())


def content(store: Store) -> dict[str, list[tuple[str, str]]]:
    """What a database holds that a failed write could change: each dataset's (path, hash) pairs."""
    return {
        name: sorted(zip(store.dataset_paths(name)["rel_path"], store.dataset_paths(name)["content_hash"]))
        for name in store.dataset_names()
    }


def reopened_content(db: Path, cache: Path) -> dict[str, list[tuple[str, str]]]:
    store = Store(db, cache)
    try:
        return content(store)
    finally:
        store.close()


# --------------------------------------------------------------------------- thumbnails


def test_a_thumbnail_on_a_read_only_cache_is_a_typed_error_and_writes_nothing(tmpfs: Mount) -> None:
    cache = tmpfs("cache")
    remount(cache, "ro")
    data = png_bytes(1)
    with pytest.raises(StorageNotWritableError) as caught:
        images.ensure_thumbnail(cache, images.content_hash(data), data)
    assert "read-only file system" in str(caught.value) and "REPLENS_CACHE" in str(caught.value)
    page = caught.value.for_page()
    assert "read-only" in page and str(cache) not in page  # a page names no server path
    assert files_under(cache) == []


def test_a_thumbnail_on_a_full_disk_is_a_typed_error_and_leaves_no_partial_file(tmpfs: Mount) -> None:
    cache = tmpfs("cache")
    filler = fill(cache)
    data = png_bytes(2, size=256)
    digest = images.content_hash(data)
    with pytest.raises(StorageFullError) as caught:
        images.ensure_thumbnail(cache, digest, data)
    assert "Not enough disk space" in str(caught.value) and "out of disk space" in caught.value.for_page()
    assert files_under(cache) == [filler]  # no half-written thumbnail, no temporary file
    filler.unlink()
    assert images.ensure_thumbnail(cache, digest, data).is_file()  # the disk was the only problem


# --------------------------------------------------------------------------- ingest


@pytest.mark.parametrize("broken", ["read-only", "full"])
def test_an_ingest_into_a_broken_cache_is_refused_and_the_database_keeps_its_content(
    tmp_path: Path, tmpfs: Mount, broken: str
) -> None:
    cache = tmpfs("cache")
    db = tmp_path / "db" / "replens.duckdb"
    build_folder(tmp_path / "first")
    build_folder(tmp_path / "second", seed0=100)  # other pixels: their thumbnails must be written
    store = Store(db, cache)
    try:
        ingest_path(store, "first", tmp_path / "first")
        before = content(store)
        assert before and len(before["first"]) == 8
        if broken == "read-only":
            remount(cache, "ro")
        else:
            fill(cache)
        expected = StorageNotWritableError if broken == "read-only" else StorageFullError
        with pytest.raises(expected):
            ingest_path(store, "second", tmp_path / "second")
        with pytest.raises(expected):
            ingest_path(store, "first", tmp_path / "second", add=True)
        assert content(store) == before
    finally:
        store.close()
    assert reopened_content(db, tmp_path / "elsewhere") == before


# --------------------------------------------------------------------------- the database's own disk


@pytest.fixture
def db_on_small_disk(tmp_path: Path, tmpfs: Mount) -> tuple[Path, Path, dict[str, list[tuple[str, str]]]]:
    """(database on a 4 MB tmpfs holding dataset 'first', cache on the normal disk, its content)."""
    db = tmpfs("dbdisk", "4m") / "replens.duckdb"
    cache = tmp_path / "cache"
    build_folder(tmp_path / "first")
    store = Store(db, cache)
    try:
        ingest_path(store, "first", tmp_path / "first")
        before = content(store)
    finally:
        store.close()
    return db, cache, before


def test_a_database_write_on_a_full_disk_is_rolled_back_and_named(
    tmp_path: Path, db_on_small_disk: tuple[Path, Path, dict[str, list[tuple[str, str]]]]
) -> None:
    db, cache, before = db_on_small_disk
    build_folder(tmp_path / "second", seed0=100)
    store = Store(db, cache)
    try:
        content(store)  # opened before the disk fills, as a running server holds it
        filler = fill(db.parent)
        for change in (
            lambda: rename_dataset(store, "first", "renamed"),
            lambda: ingest_path(store, "second", tmp_path / "second"),
        ):
            with pytest.raises(StorageFullError) as caught:
                change()
            # The store names DuckDB's own error (core.fsutil.storage_error); pages show its page message.
            assert "out of disk space" in caught.value.for_page() and str(db) not in caught.value.for_page()
        assert content(store) == before  # the same connection still reads the old content
    finally:
        store.close()
    filler.unlink()
    assert reopened_content(db, cache) == before


def test_a_read_only_database_folder_is_a_typed_error_and_its_content_is_kept(
    tmpfs: Mount, db_on_small_disk: tuple[Path, Path, dict[str, list[tuple[str, str]]]]
) -> None:
    db, cache, before = db_on_small_disk
    remount(db.parent, "ro")
    store = Store(db, cache)
    try:
        with pytest.raises(DatabaseError, match="Read-only file system"):
            store.dataset_names()
    finally:
        store.close()
    remount(db.parent, "rw")
    assert reopened_content(db, cache) == before


def test_the_data_page_says_the_disk_is_full_when_a_rename_cannot_be_written(
    monkeypatch: pytest.MonkeyPatch, db_on_small_disk: tuple[Path, Path, dict[str, list[tuple[str, str]]]]
) -> None:
    db, cache, before = db_on_small_disk
    monkeypatch.setenv("REPLENS_DB", str(db))
    monkeypatch.setenv("REPLENS_CACHE", str(cache))
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.run()
    # As after a restart: the page's first run wrote its preferences and the file was checkpointed
    # (closed), so the rename's log needs new space on the disk.
    _close_page_store()
    filler = fill(db.parent)
    try:
        at.text_input(key="rename_to_first").set_value("renamed").run()
        at.button(key="rename_dataset").click().run()
        assert not at.exception, [e.message for e in at.exception]
        assert len(at.error) == 1 and "out of disk space" in at.error[0].value
        assert str(db) not in at.error[0].value and not at.success
    finally:
        _close_page_store()
    filler.unlink()
    assert reopened_content(db, cache) == before


def _close_page_store() -> None:
    """Close the Store the page cached (the test unmounts the disk its file is on)."""
    from ui import resources

    resources.get_store().close()
    resources._store_at.clear()


# --------------------------------------------------------------------------- uploads and weights


def _upload_on_page(at: AppTest, files: list[tuple[str, bytes]], name: str) -> None:
    at.file_uploader(key="upload_folder_0").set_value([(n, data, "image/png") for n, data in files]).run()
    at.text_input(key="upload_folder_name").set_value(name).run()
    at.button(key="add_folder").click().run()


@pytest.mark.parametrize("broken", ["read-only", "full"])
def test_an_upload_into_a_broken_cache_keeps_no_file_and_no_dataset(
    monkeypatch: pytest.MonkeyPatch, tmpfs: Mount, broken: str
) -> None:
    cache = tmpfs("cache")
    (cache / "thumbs").mkdir()  # the cache in use before it broke
    monkeypatch.setenv("REPLENS_CACHE", str(cache))
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.run()
    filler = None
    if broken == "read-only":
        remount(cache, "ro")
    else:
        filler = fill(cache)
    try:
        _upload_on_page(at, [(f"pick/cats/c{i}.png", png_bytes(i)) for i in range(3)], "pets")
        assert not at.exception, [e.message for e in at.exception]
        assert len(at.error) == 1 and not at.success
        message = at.error[0].value
        if broken == "read-only":
            assert "read-only" in message
        else:
            assert "out of disk space" in message and "is free" in message  # the pre-check, with sizes
        assert str(cache) not in message
        assert resources_store_datasets() == []
        assert files_under(cache) == ([filler] if filler else [])
    finally:
        _close_page_store()


def resources_store_datasets() -> list[str]:
    from ui import resources

    return resources.get_store().dataset_names()


def test_a_disk_that_fills_during_an_upload_leaves_no_partial_files(
    tmp_path: Path, tmpfs: Mount, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmpfs("cache")
    store = Store(tmp_path / "db.duckdb", cache)
    # Another writer takes the space after the free-space check passed: the write itself hits ENOSPC.
    monkeypatch.setattr(uploads, "check_free_space", lambda *args: None)
    files = [(f"pick/big/f{i:02d}.png", bytes([i]) * 100_000) for i in range(40)]  # 4 MB onto 2 MB
    try:
        with pytest.raises(StorageFullError):
            uploads.save_upload(store, "big", files)
        assert files_under(cache) == [] and list(cache.iterdir()) == [cache / "uploads"]
        assert not any((cache / "uploads").iterdir())  # no staging folder left
        assert store.dataset_names() == []
    finally:
        store.close()


def test_weights_that_do_not_fit_are_refused_before_writing(tmpfs: Mount) -> None:
    cache = tmpfs("cache")
    data = save_safetensors({"w": np.zeros(300_000, dtype=np.float32)})  # 1.2 MB: with the 1 MB margin, over 2 MB
    with pytest.raises(StorageFullError) as caught:
        save_weights(cache, "w.safetensors", data)
    assert "is free" in caught.value.for_page()
    assert files_under(cache) == []
