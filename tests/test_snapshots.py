"""Tests for core.snapshots: content ids, save/load/list/delete, export/import round trip,
hostile archives, the HTML page's escaping, diff, and the `snapshot` CLI."""

from __future__ import annotations

import hashlib
import html
import io
import json
import stat
import struct
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import build_folder
from core import images, snapshots
from core.cli import main as cli_main
from core.errors import ImportFormatError, InvalidInputError, RepLensError
from core.snapshots import SnapshotError, SnapshotFormatError, SnapshotNotFoundError
from core.store import Store

ENCODER = "enc@1/last/cls"
HOSTILE_LABEL = "<script>window.__pwned=1</script>"


@dataclass
class World:
    store: Store
    hashes: list[str]  # scan order
    clusters: list[int]  # per hash: cats 0, dogs 1, birds 2, the last scanned one noise


def build_world(store: Store, root: Path, run_id: str = "run1", label: str = HOSTILE_LABEL) -> World:
    """A dataset with thumbnails, 4-d embeddings and one cluster run (labels for clusters 0 and 1).

    Clusters follow the folders (cats 0, dogs 1, birds 2) except the last scanned image: noise.
    """
    build_folder(root)
    scan = images.scan(root, cache_dir=store.cache_dir)
    store.ingest("d", scan.root, scan.records, scan.skipped)
    hashes = [r.content_hash for r in scan.records]
    store.register_encoder(ENCODER, "enc", "1", "last", "cls", 4, {"id": "enc", "dim": 4, "mean": [0.5, 0.5]})
    store.write_embeddings(ENCODER, hashes, np.random.default_rng(0).normal(size=(len(hashes), 4)))
    by_folder = {"cats": 0, "dogs": 1, "birds": 2}
    clusters = [by_folder[r.labels[0]] for r in scan.records]
    clusters[-1] = -1
    save_run(
        store,
        run_id,
        "d",
        ENCODER,
        "kmeans",
        {"k": 3, "seed": 0},
        {"silhouette": 0.25, "undefined": float("nan")},
        hashes,
        clusters,
        [
            {
                "cluster": 0,
                "label": label,
                "method": "user",
                "edited": True,
                "candidates": [{"label": "cat", "score": 0.91}, {"label": "kitten", "score": 0.4}],
            },
            {"cluster": 1, "label": "dogs & co", "method": "clip", "candidates": [{"label": "dog", "score": 0.8}]},
        ],
    )
    return World(store, hashes, clusters)


def save_run(
    store: Store,
    run_id: str,
    dataset: str,
    encoder_key: str,
    method: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    hashes: Sequence[str],
    clusters: Sequence[int],
    labels: Sequence[dict[str, Any]] = (),
) -> None:
    """A cluster run with its labels, written through the store's public API (core.cluster owns real runs).

    ``labels``: dicts with cluster, label, method, candidates and optionally edited (a user's name).
    """
    assigned = np.asarray(clusters, dtype=np.int64)
    store.save_cluster_run(
        run_id,
        dataset,
        encoder_key,
        method,
        params,
        hashes,
        assigned,
        metrics,
        n_clusters=len(set(assigned[assigned >= 0].tolist())),
        noise_fraction=float((assigned < 0).mean()) if len(assigned) else 0.0,
    )
    store.save_cluster_labels(run_id, labels)
    for lab in labels:
        if lab.get("edited"):  # an edit keeps the machine's candidates as provenance
            store.set_cluster_label(run_id, lab["cluster"], lab["label"])


@pytest.fixture
def world(store: Store, tmp_path: Path) -> World:
    return build_world(store, tmp_path / "images")


def files_under(root: Path) -> set[str]:
    """Every file below ``root`` except DuckDB's own (compared by table counts instead)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".duckdb" not in p.name}


# --------------------------------------------------------------------------- save / load / list / delete


def test_save_is_content_addressed_and_stored_once(world: World) -> None:
    store = world.store
    sid = snapshots.save_snapshot(store, "run1", title="Cats vs dogs", notes="first look")
    assert len(sid) == 64 and all(c in "0123456789abcdef" for c in sid)
    assert snapshots.save_snapshot(store, "run1", title="Cats vs dogs", notes="first look") == sid
    assert store.snapshot_table_counts() == {"snapshots": 1, "snapshot_points": 8, "snapshot_clusters": 4}
    other = snapshots.save_snapshot(store, "run1", title="Cats vs dogs", notes="second look")
    assert other != sid  # notes are content

    snap = snapshots.load_snapshot(store, sid[:8])  # a unique prefix is enough
    assert snap.id == sid and snap.origin == "local" and snap.format_version == snapshots.FORMAT_VERSION
    assert snap.encoder == {"key": ENCODER, "spec": {"dim": 4, "id": "enc", "mean": [0.5, 0.5]}}
    assert snap.clustering["metrics"] == {"silhouette": 0.25, "undefined": None}  # NaN is not JSON
    assert snap.assignments == dict(zip(world.hashes, world.clusters))
    assert set(snap.points["rel_path"]) == {
        f"{lab}/{stem}.png"
        for lab, stems in {
            "cats": ("cat_0", "cat_1", "cat_2"),
            "dogs": ("dog_0", "dog_1", "dog_2"),
            "birds": ("bird_0", "bird_1"),
        }.items()
        for stem in stems
    }
    labels = dict(zip(snap.clusters["cluster"], snap.clusters["label"]))
    assert labels == {-1: "noise", 0: HOSTILE_LABEL, 1: "dogs & co", 2: "cluster 2"}
    row0 = snap.clusters[snap.clusters["cluster"] == 0].iloc[0]
    assert row0["edited"] and row0["method"] == "user" and row0["candidates"][0] == {"label": "cat", "score": 0.91}
    assert snap.clusters["size"].tolist() == np.unique(world.clusters, return_counts=True)[1].tolist()
    # No projection stored: the map is a PCA of the embeddings, and the id can be recomputed.
    assert snap.projection["method"] == "pca" and snap.projection["key"] is None
    assert snap.coords.shape == (8, 2) and snap.coords.dtype == np.float32 and np.ptp(snap.coords[:, 0]) > 0

    frame = snapshots.list_snapshots(store, "SECOND")
    assert frame["snapshot_id"].tolist() == [other]
    assert len(snapshots.list_snapshots(store)) == 2 and len(snapshots.list_snapshots(store, "d")) == 2
    snapshots.delete_snapshot(store, other)
    assert snapshots.list_snapshots(store)["snapshot_id"].tolist() == [sid]
    with pytest.raises(SnapshotNotFoundError, match="snapshot list"):
        snapshots.load_snapshot(store, other)


def test_save_uses_the_newest_covering_projection_or_the_one_named(world: World) -> None:
    store = world.store
    coords = np.arange(16, dtype=np.float32).reshape(8, 2) / 7
    store.save_projection("proj-a", "d", ENCODER, "umap", {"n_neighbors": 5}, world.hashes, coords, 0.1)
    snap = snapshots.load_snapshot(store, snapshots.save_snapshot(store, "run1", title="t"))
    assert snap.projection == {"key": "proj-a", "method": "umap", "params": {"n_neighbors": 5}}
    expected = dict(zip(world.hashes, map(tuple, coords)))
    assert np.array_equal(snap.coords, np.array([expected[h] for h in snap.points["content_hash"]], np.float32))
    with pytest.raises(SnapshotError, match="No projection 'nope'"):
        snapshots.save_snapshot(store, "run1", title="t", projection_key="nope")
    store.save_projection("partial", "d", ENCODER, "pca", {}, world.hashes[:3], coords[:3], 0.1)
    with pytest.raises(SnapshotError, match="does not place every clustered image"):
        snapshots.save_snapshot(store, "run1", title="t", projection_key="partial")


def test_save_refuses_unknown_runs_and_empty_titles(world: World) -> None:
    with pytest.raises(SnapshotError, match="No cluster run 'nope'"):
        snapshots.save_snapshot(world.store, "nope", title="t")
    with pytest.raises(InvalidInputError, match="title"):
        snapshots.save_snapshot(world.store, "run1", title="   ")
    assert world.store.snapshot_table_counts()["snapshots"] == 0


# --------------------------------------------------------------------------- export / import round trip


def test_round_trip_into_a_fresh_database(world: World, tmp_path: Path) -> None:
    sid = snapshots.save_snapshot(world.store, "run1", title="Shared", notes="line 1\nline 2 <b>")
    result = snapshots.export_snapshot(world.store, sid, tmp_path / "out" / "s.replens")
    assert result.n_points == 8 and result.n_thumbnails == 8 and result.missing_thumbnails == 0
    with zipfile.ZipFile(result.path) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        for name, entry in manifest["files"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == entry["sha256"]
        thumb = Image.open(io.BytesIO(zf.read(f"thumbs/{world.hashes[0]}.webp")))
        assert thumb.format == "WEBP" and max(thumb.size) <= 128
    assert names == {"manifest.json", "points.parquet", "clusters.parquet"} | {f"thumbs/{h}.webp" for h in world.hashes}
    assert manifest["id"] == sid and manifest["format_version"] == 1 and manifest["replens_version"]

    other_dir = tmp_path / "other"
    fresh = Store(other_dir / "fresh.duckdb", other_dir / "cache")
    try:
        before = files_under(tmp_path)
        assert snapshots.import_snapshot(fresh, result.path) == sid
        a, b = snapshots.load_snapshot(world.store, sid), snapshots.load_snapshot(fresh, sid)
        assert b.origin == "imported" and fresh.dataset_names() == []  # works without the dataset
        assert a.points["content_hash"].tolist() == b.points["content_hash"].tolist()
        assert a.assignments == b.assignments
        assert np.array_equal(a.coords, b.coords) and b.coords.dtype == np.float32
        assert a.clusters.drop(columns="candidates").equals(b.clusters.drop(columns="candidates"))
        assert a.clusters["candidates"].tolist() == b.clusters["candidates"].tolist()
        assert (a.title, a.notes, a.projection, a.clustering, a.encoder, a.created) == (
            b.title,
            b.notes,
            b.projection,
            b.clustering,
            b.encoder,
            b.created,
        )
        # Only the thumbnails were written, where core.images looks for them, as valid WebP.
        thumbs = {str(images.thumbnail_path(fresh.cache_dir, h).relative_to(tmp_path)) for h in world.hashes}
        assert files_under(tmp_path) - before == thumbs
        assert Image.open(images.thumbnail_path(fresh.cache_dir, world.hashes[0])).format == "WEBP"
        # Importing again changes nothing; export from the import gives the same id again.
        assert snapshots.import_snapshot(fresh, result.path) == sid
        assert fresh.snapshot_table_counts() == {"snapshots": 1, "snapshot_points": 8, "snapshot_clusters": 4}
        again = snapshots.export_snapshot(fresh, sid, tmp_path / "again.replens")
        assert again.n_thumbnails == 8
    finally:
        fresh.close()


# --------------------------------------------------------------------------- hostile archives


@pytest.fixture(scope="module")
def base_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], list[str]]:
    """The members of one valid export (name -> bytes) and the image hashes."""
    root = tmp_path_factory.mktemp("base")
    store = Store(root / "base.duckdb", root / "cache")
    try:
        world = build_world(store, root / "images")
        sid = snapshots.save_snapshot(store, "run1", title="base")
        path = snapshots.export_snapshot(store, sid, root / "base.replens").path
    finally:
        store.close()
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}, world.hashes


def write_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # "Duplicate name" is what one case wants
        for name, data in entries:
            zf.writestr(name, data)
    return path


def resealed(members: dict[str, bytes], **changes: bytes) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    """Members with ``changes`` applied and manifest.files recomputed (passes the sha256 check)."""
    out = dict(members)
    out.update({k.replace("__", "/").replace("_DOT_", "."): v for k, v in changes.items()})
    manifest = json.loads(out["manifest.json"])
    manifest["files"] = {
        n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in out.items() if n != "manifest.json"
    }
    manifest["counts"]["thumbnails"] = sum(n.startswith("thumbs/") for n in out)
    out["manifest.json"] = json.dumps(manifest).encode()
    return list(out.items())


def parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def with_table(members: dict[str, bytes], name: str, change) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    """Members with one Parquet table changed by ``change(table)`` (sha256 resealed, id left as is)."""
    table = pq.read_table(io.BytesIO(members[name]))
    return resealed(members, **{name.replace(".", "_DOT_"): parquet(change(table))})


def with_manifest(members: dict[str, bytes], **fields: object) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    manifest = json.loads(members["manifest.json"])
    manifest.update(fields)
    return list({**members, "manifest.json": json.dumps(manifest).encode()}.items())


def special(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def webp(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buf, format="WEBP")
    return buf.getvalue()


def forge_declared_size(path: Path, name: str, size: int) -> None:
    """Rewrite the uncompressed size that the central directory and local header state for ``name``."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for sig, size_at, name_len_at, name_at in ((b"PK\x01\x02", 24, 28, 46), (b"PK\x03\x04", 22, 26, 30)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            n = struct.unpack_from("<H", data, i + name_len_at)[0]
            if data[i + name_at : i + name_at + n] == encoded:
                struct.pack_into("<I", data, i + size_at, size)
            start = i + 4
    path.write_bytes(bytes(data))


HOSTILE = {
    "zip-slip": (lambda m, h: list(m.items()) + [("../evil.webp", b"x")], "Unsafe member name"),
    "zip-slip-nested": (lambda m, h: list(m.items()) + [("thumbs/../../evil", b"x")], "Unsafe member name"),
    "absolute-path": (lambda m, h: list(m.items()) + [("/tmp/evil", b"x")], "Unsafe member name"),
    "windows-path": (lambda m, h: list(m.items()) + [("C:\\evil.webp", b"x")], "Unsafe member name"),
    "symlink-member": (
        lambda m, h: [
            (special(f"thumbs/{h[0]}.webp", stat.S_IFLNK | 0o777), b"/etc/passwd")
            if n == f"thumbs/{h[0]}.webp"
            else (n, d)
            for n, d in m.items()
        ],
        "link, folder or device",
    ),
    "device-member": (
        lambda m, h: list(m.items()) + [(special("thumbs/dev.webp", stat.S_IFCHR | 0o666), b"")],
        "link, folder or device",
    ),
    "unexpected-member": (lambda m, h: resealed(m, evil_DOT_py=b"import os"), "Unexpected member"),
    "duplicate-member": (lambda m, h: list(m.items()) + [("points.parquet", m["points.parquet"])], "appears twice"),
    "zip-bomb": (lambda m, h: resealed(m, points_DOT_parquet=bytes(3 << 20)), "over its cap"),
    "too-many-members": (lambda m, h: list(m.items()), "members, over the cap"),
    "bad-manifest-json": (
        lambda m, h: list({**m, "manifest.json": b'{"format": "replens-snapshot", '}.items()),
        "not valid JSON",
    ),
    "manifest-not-object": (lambda m, h: list({**m, "manifest.json": b"[1, 2]"}.items()), "JSON object"),
    "unknown-version": (lambda m, h: with_manifest(m, format_version=99), "version 99.*upgrade RepLens"),
    "wrong-field-type": (lambda m, h: with_manifest(m, title=["not", "text"]), "title should be a string"),
    "missing-field": (lambda m, h: with_manifest(m, clustering={"method": "kmeans"}), "is missing"),
    "hash-mismatch": (
        lambda m, h: list({**m, "points.parquet": m["points.parquet"][:-1] + b"!"}.items()),
        "does not match the sha256",
    ),
    "id-mismatch": (
        lambda m, h: resealed(
            m, manifest_DOT_json=json.dumps({**json.loads(m["manifest.json"]), "title": "changed"}).encode()
        ),
        "does not match its id",
    ),
    "wrong-schema": (
        lambda m, h: with_table(m, "points.parquet", lambda t: t.drop_columns(["x"])),
        "has no column 'x'",
    ),
    "wrong-column-type": (
        lambda m, h: with_table(
            m, "points.parquet", lambda t: t.set_column(3, "x", pa.array([str(v) for v in t.column("x").to_pylist()]))
        ),
        "column 'x' has type string",
    ),
    "nan-coordinates": (
        lambda m, h: with_table(
            m, "points.parquet", lambda t: t.set_column(3, "x", pa.array([float("nan")] * t.num_rows, pa.float32()))
        ),
        "not finite",
    ),
    "sizes-disagree": (
        lambda m, h: with_table(
            m, "clusters.parquet", lambda t: t.set_column(5, "size", pa.array([1] * t.num_rows, pa.int32()))
        ),
        "sizes that do not match",
    ),
    "not-parquet": (lambda m, h: resealed(m, clusters_DOT_parquet=b"PAR1 not really"), "not a readable Parquet"),
    "non-image-thumbnail": (
        lambda m, h: resealed(m, **{f"thumbs__{h[-1]}_DOT_webp": b"<script>alert(1)</script>"}),
        "not a valid WebP",
    ),
    "oversized-thumbnail": (lambda m, h: resealed(m, **{f"thumbs__{h[-1]}_DOT_webp": webp(600)}), "at most 512"),
    "thumbnail-for-unknown-image": (
        lambda m, h: resealed(m, **{"thumbs__" + "ab" * 16 + "_DOT_webp": webp(8)}),
        "does not hold",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_rejected_and_leave_no_trace(
    case: str, base_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members, hashes = base_export
    build, message = HOSTILE[case]
    if case == "too-many-members":
        monkeypatch.setattr(snapshots, "LIMITS", replace(snapshots.LIMITS, max_members=5))
    if case == "zip-bomb":  # 3 MiB of zeros compress to a few KiB; the cap is lowered to keep the test fast
        monkeypatch.setattr(snapshots, "LIMITS", replace(snapshots.LIMITS, max_table_bytes=1 << 20))
    archive = write_zip(tmp_path / "hostile.replens", build(members, hashes))
    store = Store(tmp_path / "db" / "x.duckdb", tmp_path / "db" / "cache")
    try:
        counts = store.snapshot_table_counts()
        before = files_under(tmp_path)
        with pytest.raises(SnapshotFormatError, match=message) as err:
            snapshots.import_snapshot(store, archive)
        assert isinstance(err.value, ImportFormatError) and isinstance(err.value, RepLensError)
        assert store.snapshot_table_counts() == counts
        assert files_under(tmp_path) == before
        assert not (tmp_path / "db" / "cache" / "thumbs").exists()
        assert not (tmp_path / "evil.webp").exists() and not Path("/tmp/evil").exists()
    finally:
        store.close()


def test_a_declared_size_that_lies_is_caught_while_reading(
    base_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members, _ = base_export
    monkeypatch.setattr(snapshots, "LIMITS", replace(snapshots.LIMITS, max_table_bytes=1 << 20))
    archive = write_zip(tmp_path / "liar.replens", resealed(members, points_DOT_parquet=bytes(3 << 20)))
    forge_declared_size(archive, "points.parquet", 1000)  # passes the header check, not the read
    store = Store(tmp_path / "db" / "x.duckdb", tmp_path / "db" / "cache")
    try:
        with pytest.raises(SnapshotFormatError):
            snapshots.import_snapshot(store, archive)
        assert store.snapshot_table_counts()["snapshots"] == 0
    finally:
        store.close()
    # The bounded read itself stops at the cap, whatever the header claims.
    with zipfile.ZipFile(archive) as zf:
        reader = snapshots._BoundedReader(zf, snapshots.LIMITS)
        with pytest.raises(SnapshotFormatError, match="expands beyond 100 bytes"):
            reader.read(zf.getinfo("manifest.json"), 100)


def test_a_consistent_archive_with_a_script_label_imports_as_text(base_export, tmp_path: Path) -> None:
    """A sender may rewrite labels and recompute every hash and the id: that imports, as inert text."""
    members, hashes = base_export
    evil = '<img src=x onerror="window.__pwned=3">'
    clusters = pq.read_table(io.BytesIO(members["clusters.parquet"]))
    clusters = clusters.set_column(1, "label", pa.array([evil] * clusters.num_rows))
    points = pq.read_table(io.BytesIO(members["points.parquet"]))
    manifest = json.loads(members["manifest.json"])
    manifest["notes"] = "</script><script>window.__pwned=4</script>"
    manifest["id"] = snapshots._content_id(snapshots._header_from_manifest(manifest), points, clusters)
    archive = write_zip(
        tmp_path / "crafted.replens",
        resealed(members, clusters_DOT_parquet=parquet(clusters), manifest_DOT_json=json.dumps(manifest).encode()),
    )
    store = Store(tmp_path / "db" / "x.duckdb", tmp_path / "db" / "cache")
    try:
        sid = snapshots.import_snapshot(store, archive)
        assert sid == manifest["id"]
        assert set(snapshots.load_snapshot(store, sid).clusters["label"]) == {evil}
        page = snapshots.snapshot_html(store, sid, tmp_path / "p.html").read_text(encoding="utf-8")
    finally:
        store.close()
    assert "<img src=x" not in page and "window.__pwned=4</script>" not in page
    assert html.escape(evil) in page  # the cluster list, as text
    assert "\\u003cimg src=x" in page  # the page JSON, with < escaped


def test_not_a_zip_and_missing_file_are_clear_errors(tmp_path: Path, store: Store) -> None:
    (tmp_path / "x.replens").write_text("hello")
    with pytest.raises(SnapshotFormatError, match="not a readable .replens"):
        snapshots.import_snapshot(store, tmp_path / "x.replens")
    with pytest.raises(SnapshotFormatError, match="is not a file"):
        snapshots.import_snapshot(store, tmp_path / "missing.replens")


# --------------------------------------------------------------------------- HTML escaping (rendering: browser test)


def test_html_page_is_self_contained_and_escapes_text(world: World, tmp_path: Path) -> None:
    sid = snapshots.save_snapshot(
        world.store, "run1", title="<img src=x onerror=alert(1)>", notes="</script><script>window.__pwned=2</script>"
    )
    page = snapshots.snapshot_html(world.store, sid, tmp_path / "s.html").read_text(encoding="utf-8")
    assert "<script>window.__pwned" not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page  # the cluster label, as text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<script") == 3 and page.count("</script>") == 3  # data, plotly.js, app
    assert "cdn." not in page.split("<script>")[0] and 'http-equiv="Content-Security-Policy"' in page
    assert page.count('":"data:image/webp;base64,') == 8  # one per image, in the page's JSON


# --------------------------------------------------------------------------- diff


def test_diff_matches_clusters_and_finds_moved_images(world: World) -> None:
    store = world.store
    # Same partition under other numbers, then the same with one image moved.
    renamed = [{-1: -1, 0: 5, 1: 6, 2: 7}[c] for c in world.clusters]
    save_run(store, "run2", "d", ENCODER, "hdbscan", {}, {}, world.hashes, renamed)
    moved = list(renamed)
    moved[0] = 7 if moved[0] != 7 else 5
    save_run(store, "run3", "d", ENCODER, "hdbscan", {}, {}, world.hashes, moved)
    a = snapshots.save_snapshot(store, "run1", title="a")
    b = snapshots.save_snapshot(store, "run2", title="b")
    c = snapshots.save_snapshot(store, "run3", title="c")

    same = snapshots.diff_snapshots(store, a, b)
    assert same.n_shared == 8 and same.ari == pytest.approx(1.0) and same.nmi == pytest.approx(1.0)
    sizes = dict(zip(*np.unique(world.clusters, return_counts=True)))
    assert same.n_moved == 0
    assert sorted(same.matching) == [(c, {-1: -1, 0: 5, 1: 6, 2: 7}[c], sizes[c]) for c in (-1, 0, 1, 2)]

    diff = snapshots.diff_snapshots(store, a, c)
    assert diff.ari < 1.0 and diff.n_moved == 1
    assert diff.moved.loc[diff.moved["moved"], "content_hash"].tolist() == [world.hashes[0]]
    assert int(diff.confusion.to_numpy().sum()) == 8
    payload = diff.to_dict()
    assert json.dumps(payload) and payload["n_moved"] == 1 and len(payload["moved"]) == 1


# --------------------------------------------------------------------------- CLI


def test_cli_save_list_export_import_html_diff(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.store.close()  # the CLI opens the same files through REPLENS_DB / REPLENS_CACHE
    monkeypatch.setenv("REPLENS_DB", str(world.store.path))
    monkeypatch.setenv("REPLENS_CACHE", str(world.store.cache_dir))

    def run(*args: str) -> tuple[int, str, str]:
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("snapshot", "save", "--run", "run1", "--title", "From CLI", "--notes", "n", "--json")
    assert code == 0
    sid = json.loads(out)["snapshot_id"]
    code, out, _ = run("snapshot", "list", "--json")
    assert code == 0 and [r["snapshot_id"] for r in json.loads(out)] == [sid]
    assert run("snapshot", "export", sid[:10], "--out", str(tmp_path / "c.replens"))[0] == 0
    assert run("snapshot", "html", sid[:10], "--out", str(tmp_path / "c.html"))[0] == 0
    assert (tmp_path / "c.html").stat().st_size > 100_000
    code, out, _ = run("snapshot", "diff", sid[:10], sid, "--json")
    assert code == 0 and json.loads(out)["ari"] == pytest.approx(1.0)

    monkeypatch.setenv("REPLENS_DB", str(tmp_path / "fresh" / "f.duckdb"))
    monkeypatch.setenv("REPLENS_CACHE", str(tmp_path / "fresh" / "cache"))
    code, out, _ = run("snapshot", "import", str(tmp_path / "c.replens"), "--json")
    assert code == 0 and json.loads(out)["snapshot_id"] == sid and json.loads(out)["origin"] == "imported"
    (tmp_path / "bad.replens").write_bytes(b"nope")
    code, out, err = run("snapshot", "import", str(tmp_path / "bad.replens"))
    assert code == 2 and out == "" and err.startswith("error: ") and "bad.replens" in err
    code, _, err = run("snapshot", "html", "ffff", "--out", str(tmp_path / "x.html"))
    assert code == 2 and "snapshot list" in err
