"""A dataset's life (issue 10, items 3, 4, 9): an explicit choice to add a second source, checked
names, rename, delete, reclaiming what no dataset uses, a folder without images refused, and the
Data page's controls for all of it (AppTest)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import build_folder, png_bytes, write_file
from core import cluster, images, snapshots, uploads
from core.datasets import (
    DatasetExistsError,
    NoImagesFoundError,
    collect_garbage,
    delete_dataset,
    ingest_path,
    rename_dataset,
)
from core.errors import DatasetNotFoundError, InvalidInputError, RepLensError, UnsupportedSourceError
from core.extract import embed_dataset
from core.names import check_dataset_name
from core.reduce import project
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PIXELS_KEY = "pixels@v1/pixels/none"
PIXELS_DIM = 768
BAD_NAMES = ["", "   ", "../evil/name", "a/b", "a\\b", "..", "x..y", "bad\nname", "tab\tname", "nul\x00", "x" * 201]


def hashes_of(folder: Path) -> set[str]:
    return {images.content_hash(p.read_bytes()) for p in folder.rglob("*.png")}


def paths_of(store: Store, dataset: str) -> set[tuple[str, str]]:
    frame = store.dataset_paths(dataset)
    return set(zip(frame["source"], frame["rel_path"]))


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_everywhere_and_nothing_is_written(store: Store, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "imgs"
    build_folder(folder)
    with pytest.raises(InvalidInputError, match="Dataset name"):
        check_dataset_name(name)
    with pytest.raises(InvalidInputError, match="Dataset name"):
        ingest_path(store, name, folder)
    with pytest.raises(InvalidInputError, match="Dataset name"):
        store.ingest(name, str(folder), [], [])
    with pytest.raises(InvalidInputError, match="Dataset name"):
        uploads.save_upload(store, name, [("a.png", png_bytes(1))])
    ingest_path(store, "good", folder)
    with pytest.raises(InvalidInputError, match="Dataset name"):
        rename_dataset(store, "good", name)
    assert store.dataset_names() == ["good"]
    assert not (store.cache_dir / "uploads").exists()  # no upload folder made, none outside the cache either
    assert not (tmp_path / "evil").exists() and not (store.cache_dir / "evil").exists()


def test_good_names_are_kept_with_spaces_trimmed(store: Store, tmp_path: Path) -> None:
    assert check_dataset_name("  Holiday photos 2024 (v2) ") == "Holiday photos 2024 (v2)"
    assert check_dataset_name("café-ñ.v1") == "café-ñ.v1"
    folder = tmp_path / "imgs"
    build_folder(folder)
    _, stats = ingest_path(store, "  trips ", folder)
    assert stats.dataset == "trips" and store.dataset_names() == ["trips"]


# --------------------------------------------------------------------------- a second source is explicit


def test_a_second_source_needs_add_and_a_rescan_does_not(store: Store, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    build_folder(one)
    build_folder(two, seed0=100)
    ingest_path(store, "d", one)
    before = paths_of(store, "d")
    with pytest.raises(DatasetExistsError, match="already exists") as info:
        ingest_path(store, "d", two)
    assert info.value.sources == [str(one.resolve())] and info.value.source == str(two.resolve())
    assert paths_of(store, "d") == before  # nothing merged

    _, again = ingest_path(store, "d", one)  # the same source: an incremental rescan
    assert (again.added, again.unchanged, again.removed) == (0, len(before), 0)

    _, added = ingest_path(store, "d", two, add=True)
    assert added.added == len(list(two.rglob("*.png")))
    assert store.dataset_sources("d") == sorted([str(one.resolve()), str(two.resolve())])
    assert set(store.dataset_images("d")["content_hash"]) == hashes_of(one) | hashes_of(two)
    _, rescan_two = ingest_path(store, "d", two)  # now one of its sources: no flag needed
    assert rescan_two.unchanged == added.added


# --------------------------------------------------------------------------- no images: an error, no dataset


def make_config_folder(root: Path) -> None:
    for i in range(5):
        write_file(root, f"etc{i}.conf", "x=1")
    write_file(root, "notes.txt", "hello")
    write_file(root, "sub/deeper/README", "no extension")
    write_file(root, "sub/b.conf", "y=2")


def test_a_folder_without_images_is_an_error_and_creates_no_dataset(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "etc"
    make_config_folder(root)
    with pytest.raises(NoImagesFoundError) as info:
        ingest_path(store, "etc", root)
    message = str(info.value)
    assert "0 images among 8 files" in message
    assert "extensions seen: .conf (6)" in message and ".txt (1)" in message and "(none) (1)" in message
    assert str(tmp_path) not in message  # no server path in what a page shows
    assert isinstance(info.value, UnsupportedSourceError) and info.value.n_files == 8
    assert store.dataset_names() == []
    with pytest.raises(DatasetNotFoundError):
        store.dataset_images("etc")


def test_only_unreadable_images_is_the_same_error_naming_them(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    write_file(root, "a.png", b"not a png")
    write_file(root, "b.conf", "z")
    with pytest.raises(
        NoImagesFoundError, match=r"0 readable images among 2 files: 1 image file\(s\) could not be read"
    ):
        ingest_path(store, "broken", root)
    assert store.dataset_names() == []


def test_a_zip_without_images_is_the_same_error(store: Store, tmp_path: Path) -> None:
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("docs/a.md", "# a")
        zf.writestr("docs/b.md", "# b")
        zf.writestr("docs/c.csv", "1,2")
    with pytest.raises(NoImagesFoundError, match=r"0 images among 3 files; extensions seen: \.md \(2\), \.csv \(1\)"):
        ingest_path(store, "docs", archive)
    assert store.dataset_names() == []


def test_an_emptied_source_leaves_its_dataset_unchanged(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    build_folder(root)
    ingest_path(store, "d", root)
    before = paths_of(store, "d")
    for p in root.rglob("*.png"):
        p.unlink()
    with pytest.raises(NoImagesFoundError):
        ingest_path(store, "d", root)
    assert paths_of(store, "d") == before


# --------------------------------------------------------------------------- rename


def test_rename_moves_uploads_runs_and_projections_and_keeps_snapshots(
    store: Store, tmp_path: Path, pixels_encoder: object
) -> None:
    src = tmp_path / "pick"
    files = build_folder(src)
    dest, _ = uploads.save_upload(store, "my photos", [(f"pick/{rel}", data) for rel, data in files.items()])
    ingest_path(store, "my photos", dest)
    embed_dataset(store, "my photos", pixels_encoder)
    run = cluster.run_clustering(store, "my photos", PIXELS_KEY, "kmeans", {"n_clusters": 2, "reduce": None})
    proj = project(store, "my photos", PIXELS_KEY, "pca")
    snap = snapshots.save_snapshot(store, run.run_id, title="before rename")
    hashes = set(store.dataset_images("my photos")["content_hash"])

    assert rename_dataset(store, "my photos", "trips") == "trips"
    assert store.dataset_names() == ["trips"]
    new_dir = (store.cache_dir / "uploads" / "trips").resolve()
    assert not (store.cache_dir / "uploads" / "my-photos").exists() and new_dir.is_dir()
    assert store.dataset_sources("trips") == [str(new_dir)]
    assert set(store.dataset_images("trips")["content_hash"]) == hashes == hashes_of(new_dir)
    assert store.list_cluster_runs("trips")["run_id"].tolist() == [run.run_id]
    assert store.list_cluster_runs("my photos").empty
    assert store.list_projections("trips")["projection_key"].tolist() == [proj.key]
    frame, vectors = store.load_embeddings("trips", PIXELS_KEY)
    assert vectors.shape == (len(hashes), PIXELS_DIM)
    loaded = snapshots.load_snapshot(store, snap)  # a frozen copy: keeps the name it was saved under
    assert loaded.dataset["name"] == "my photos" and loaded.n_points == len(hashes)
    # Uploading more into the renamed dataset reads the moved folder: an incremental rescan.
    _, stats = ingest_path(store, "trips", uploads.upload_dir(store, "trips"))
    assert (stats.unchanged, stats.added, stats.removed) == (len(files), 0, 0)
    with pytest.raises(DatasetNotFoundError):
        rename_dataset(store, "my photos", "x")


def test_rename_to_a_taken_name_is_refused(store: Store, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    build_folder(a)
    build_folder(b, seed0=50)
    ingest_path(store, "a", a)
    ingest_path(store, "b", b)
    with pytest.raises(InvalidInputError, match="already exists"):
        rename_dataset(store, "a", "b")
    assert store.dataset_names() == ["a", "b"] and set(store.dataset_images("b")["content_hash"]) == hashes_of(b)


def test_a_name_stored_before_names_were_checked_can_be_renamed_and_deleted(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    build_folder(root)
    scan = images.scan(root)
    # Bypass today's check, as an older RepLens wrote it.
    store._cursor().execute("INSERT INTO datasets VALUES ('../evil/name', now(), now())")
    with store._transaction() as cur:
        for r in scan.records:
            cur.execute(
                "INSERT INTO dataset_images VALUES ('../evil/name', ?, ?, ?, ?, ?, ?, now())",
                [scan.root, r.rel_path, r.content_hash, list(r.labels), r.caption, r.mtime],
            )
            cur.execute(
                "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?)",
                [r.content_hash, r.width, r.height, r.n_bytes, r.format],
            )
    assert rename_dataset(store, "../evil/name", "clean") == "clean"
    assert len(store.dataset_paths("clean")) == len(scan.records)
    assert delete_dataset(store, "clean")["paths"] == len(scan.records)
    assert store.dataset_names() == [] and root.is_dir()  # a server folder is never deleted


# --------------------------------------------------------------------------- delete and gc


def test_delete_then_gc_frees_exactly_what_no_dataset_uses(
    store: Store, tmp_path: Path, pixels_encoder: object
) -> None:
    keep_src, gone_src = tmp_path / "keep", tmp_path / "gone"
    keep_files = build_folder(keep_src)
    gone_files = build_folder(gone_src, seed0=4)  # seeds 4..11: four images shared with "keep"
    ingest_path(store, "keep", keep_src)
    dest, _ = uploads.save_upload(store, "gone", [(f"g/{rel}", data) for rel, data in gone_files.items()])
    ingest_path(store, "gone", dest)
    for name in ("keep", "gone"):
        embed_dataset(store, name, pixels_encoder)
    run = cluster.run_clustering(store, "gone", PIXELS_KEY, "kmeans", {"n_clusters": 2, "reduce": None})
    project(store, "gone", PIXELS_KEY, "pca")
    snap = snapshots.save_snapshot(store, run.run_id, title="gone, frozen")

    keep_hashes = {images.content_hash(b) for b in keep_files.values()}
    gone_hashes = {images.content_hash(b) for b in gone_files.values()}
    only_gone = gone_hashes - keep_hashes
    assert len(only_gone) == 4 and len(gone_hashes & keep_hashes) == 4  # the fixture is what we think
    thumb_bytes = sum(images.thumbnail_path(store.cache_dir, h).stat().st_size for h in only_gone)
    vectors_before = store.count_embeddings()

    counts = delete_dataset(store, "gone")
    assert counts["paths"] == len(gone_files) and counts["cluster_runs"] == 1 and counts["projections"] == 1
    assert counts["cluster_assignments"] == len(gone_hashes) and counts["upload_folders"] == 1
    assert not dest.exists() and store.dataset_names() == ["keep"]
    assert store.list_cluster_runs("gone").empty and store.list_projections("gone").empty
    assert store.load_cluster_run(run.run_id) is None
    assert store.count_embeddings() == vectors_before  # nothing reclaimed before gc

    dry = collect_garbage(store, dry_run=True)
    assert dry.n_vectors == len(only_gone) and store.count_embeddings() == vectors_before
    report = collect_garbage(store)
    assert report.vectors == {PIXELS_KEY: len(only_gone)}
    assert report.vector_bytes == len(only_gone) * PIXELS_DIM * 4
    assert report.image_records == len(only_gone)
    assert report.thumbnails == 0  # the snapshot still shows those images
    assert store.count_embeddings() == vectors_before - len(only_gone)
    frame, vectors = store.load_embeddings("keep", PIXELS_KEY)  # the survivor is whole
    assert set(frame["content_hash"]) == keep_hashes and vectors.shape == (len(keep_hashes), PIXELS_DIM)

    # The snapshot keeps working: it loads and exports with every thumbnail.
    loaded = snapshots.load_snapshot(store, snap)
    assert loaded.dataset["name"] == "gone" and loaded.n_points == len(gone_hashes)
    exported = snapshots.export_snapshot(store, snap, tmp_path / "gone.replens")
    assert exported.n_thumbnails == len(gone_hashes) and exported.missing_thumbnails == 0

    snapshots.delete_snapshot(store, snap)
    report = collect_garbage(store)
    assert (report.n_vectors, report.thumbnails, report.thumbnail_bytes) == (0, len(only_gone), thumb_bytes)
    assert all(not images.thumbnail_path(store.cache_dir, h).exists() for h in only_gone)
    assert all(images.thumbnail_path(store.cache_dir, h).exists() for h in keep_hashes)
    assert collect_garbage(store).to_dict()["vectors"] == 0  # idempotent


def test_upload_folders_shared_by_two_names_are_not_mixed_or_deleted(store: Store, tmp_path: Path) -> None:
    dest, _ = uploads.save_upload(store, "my photos", [("a.png", png_bytes(1)), ("b.png", png_bytes(2))])
    ingest_path(store, "my photos", dest)
    with pytest.raises(InvalidInputError, match="would keep its uploads with those of dataset 'my photos'"):
        uploads.save_upload(store, "my-photos", [("c.png", png_bytes(3))])
    assert sorted(p.name for p in dest.iterdir()) == ["a.png", "b.png"]


# --------------------------------------------------------------------------- CLI


def test_cli_add_rename_delete_gc(cli, tmp_path: Path, isolated_env: dict[str, str]) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    build_folder(one)
    build_folder(two, seed0=100)
    assert cli(["ingest", str(one), "--dataset", "d", "--json"]).returncode == 0
    refused = cli(["ingest", str(two), "--dataset", "d", "--json"])
    assert refused.returncode == 2 and refused.stdout == ""
    assert "--add" in refused.stderr and "Traceback" not in refused.stderr
    rescan = json.loads(cli(["ingest", str(one), "--dataset", "d", "--json"]).stdout)
    assert (rescan["added"], rescan["unchanged"]) == (0, 8)
    added = json.loads(cli(["ingest", str(two), "--dataset", "d", "--add", "--json"]).stdout)
    assert added["added"] == 8
    assert cli(["embed", "--dataset", "d", "--encoder", "pixels", "--device", "cpu", "--json"]).returncode == 0

    bad = cli(["dataset", "rename", "d", "../evil/name"])
    assert bad.returncode == 2 and "path separator" in bad.stderr
    assert json.loads(cli(["dataset", "rename", "d", "e", "--json"]).stdout) == {"old": "d", "new": "e"}
    deleted = json.loads(cli(["dataset", "delete", "e", "--json"]).stdout)
    assert deleted["removed"]["paths"] == 16
    gone = cli(["dataset", "delete", "e"])
    assert gone.returncode == 2 and "No dataset named 'e'" in gone.stderr
    freed = json.loads(cli(["gc", "--json"]).stdout)
    assert freed["vectors"] == 16 and freed["vector_bytes"] == 16 * PIXELS_DIM * 4 and freed["thumbnails"] == 16
    assert json.loads(cli(["datasets", "--json"]).stdout) == []


def test_cli_ingest_of_a_folder_without_images_exits_2(cli, tmp_path: Path) -> None:
    root = tmp_path / "etc"
    make_config_folder(root)
    out = cli(["ingest", str(root), "--dataset", "etc"])
    assert out.returncode == 2
    assert "error: No images found: 0 images among 8 files; extensions seen: .conf (6)" in out.stderr
    assert json.loads(cli(["datasets", "--json"]).stdout) == []


# --------------------------------------------------------------------------- the Data page


def data_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def scan_path(at: AppTest, path: Path, name: str) -> AppTest:
    at.text_input(key="server_path").set_value(str(path)).run()
    at.text_input(key="server_path_name").set_value(name).run()
    return at


def test_page_folder_without_images_shows_an_error_no_progress_and_no_dataset(tmp_path: Path) -> None:
    root = tmp_path / "etc"
    make_config_folder(root)
    at = scan_path(data_page(), root, "etc")
    at.button(key="add_path").click().run()
    assert not at.exception and not at.success
    assert len(at.error) == 1 and "0 images among 8 files" in at.error[0].value
    assert at.get("progress") == []  # the "Scanning…" bar is gone
    assert not Store().dataset_names()


def test_page_failed_scan_leaves_no_progress_bar(tmp_path: Path) -> None:
    at = scan_path(data_page(), tmp_path / "nope", "ghost")
    at.button(key="add_path").click().run()
    assert at.error and "does not exist" in at.error[0].value
    assert at.get("progress") == []


def test_page_adding_to_an_existing_name_is_an_explicit_choice(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    build_folder(one)
    build_folder(two, seed0=100)
    store = Store()
    ingest_path(store, "pets", one)
    store.close()

    at = scan_path(data_page(), two, "pets")
    assert at.checkbox(key="server_path_add").value is False
    at.button(key="add_path").click().run()
    assert at.error and "already exists" in at.error[0].value and "Tick" in at.error[0].value
    assert str(tmp_path) not in at.error[0].value
    store = Store()
    assert store.dataset_sources("pets") == [str(one.resolve())]
    store.close()

    at.checkbox(key="server_path_add").check().run()
    at.button(key="add_path").click().run()
    assert not at.error and "**pets**: 8 added" in at.success[0].value
    store = Store()
    assert store.dataset_sources("pets") == sorted([str(one.resolve()), str(two.resolve())])
    store.close()

    # Rescanning one of its own sources needs no box.
    at = scan_path(data_page(), one, "pets")
    assert "server_path_add" not in [c.key for c in at.checkbox]
    assert any("already a source" in c.value for c in at.caption)
    at.button(key="add_path").click().run()
    assert not at.error and "0 added" in at.success[0].value and "8 unchanged" in at.success[0].value

    # A bad name is refused with the core's message.
    at = scan_path(data_page(), one, "../evil/name")
    at.button(key="add_path").click().run()
    assert at.error and "path separator" in at.error[0].value


def test_page_rename_and_delete_with_confirmation(tmp_path: Path, pixels_encoder: object) -> None:
    one = tmp_path / "one"
    build_folder(one)
    store = Store()
    ingest_path(store, "old", one)
    embed_dataset(store, "old", pixels_encoder)
    store.close()

    at = data_page()
    at.text_input(key="rename_to_old").set_value("new").run()
    at.button(key="rename_dataset").click().run()
    assert not at.exception and not at.error and "Renamed **old** to **new**" in at.success[0].value
    assert at.selectbox(key="w_data_dataset").value == "new"
    store = Store()
    assert store.dataset_names() == ["new"]
    store.close()

    assert at.button(key="delete_dataset").disabled  # confirmation first
    at.checkbox(key="confirm_delete_new").check().run()
    at.button(key="delete_dataset").click().run()
    assert not at.exception and "Deleted **new**" in at.success[0].value
    store = Store()
    assert store.dataset_names() == [] and store.count_embeddings() == 8
    store.close()

    at.button(key="gc").click().run()
    assert not at.exception and "Freed 8 embeddings" in at.success[0].value
    store = Store()
    assert store.count_embeddings() == 0
    store.close()


def test_gc_report_counts_match_numpy(store: Store, tmp_path: Path, pixels_encoder: object) -> None:
    """The bytes reported are those of the float32 vectors removed, computed independently."""
    root = tmp_path / "imgs"
    build_folder(root)
    ingest_path(store, "d", root)
    embed_dataset(store, "d", pixels_encoder)
    _, vectors = store.load_embeddings("d", PIXELS_KEY)
    expected = np.asarray(vectors, dtype=np.float32).nbytes
    delete_dataset(store, "d")
    assert collect_garbage(store).vector_bytes == expected
    with pytest.raises(RepLensError):
        delete_dataset(store, "d")
