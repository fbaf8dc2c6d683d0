"""Cluster snapshots: immutable, content-addressed records of one clustering, made to share.

A snapshot copies everything it shows: which images (content hash + relative path + folder
labels), the encoder, the 2-D map, the clustering (method, parameters, metrics,
assignments) and the cluster labels with their provenance, plus a title and notes. Its id is
the sha256 of a canonical serialisation of that content, so saving the same thing twice
gives the same id and one stored copy. Creation time, RepLens version and the source run id
are recorded but are not content: they do not change the id.

Snapshots travel three ways:

* ``export_snapshot`` / ``import_snapshot``: one ``.replens`` zip (``manifest.json``,
  ``points.parquet``, ``clusters.parquet``, ``thumbs/<hash>.webp``) that opens in another
  installation without the original images. Imported files are untrusted: every member is
  checked (names, kinds, sizes, sha256, schema, id) before the database is touched, and
  thumbnails are re-encoded through Pillow, never copied.
* ``snapshot_html``: one self-contained HTML page (inline plotly.js, thumbnails as data:
  URIs, a Content-Security-Policy that allows no network and only its own scripts).
* ``diff_snapshots``: agreement between two snapshots of the same images (ARI, NMI,
  confusion matrix, images whose cluster moved under the best one-to-one matching).
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import re
import shutil
import stat
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import core
from core import images
from core.errors import ImportFormatError, InvalidInputError, RepLensError
from core.store import Store

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LIMITS",
    "ArchiveLimits",
    "ExportResult",
    "Snapshot",
    "SnapshotDiff",
    "SnapshotError",
    "SnapshotFormatError",
    "SnapshotNotFoundError",
    "delete_snapshot",
    "diff_snapshots",
    "export_snapshot",
    "import_snapshot",
    "list_snapshots",
    "load_snapshot",
    "resolve_snapshot_id",
    "save_snapshot",
    "snapshot_html",
]

FORMAT = "replens-snapshot"
FORMAT_VERSION = 1            # of the snapshot content and the .replens layout; not the DB schema
EXPORT_THUMB_SIZE = 128       # thumbnails written into a .replens file
MAX_IMPORTED_THUMB_SIDE = 512  # larger thumbnails in an imported file are refused
MAX_TITLE_CHARS = 500
MAX_NOTES_CHARS = 100_000
_GALLERY_TILES = 200          # per cluster in the HTML page; the rest are counted, not shown

_HASH_RE = re.compile(r"^[0-9A-Za-z]{2,128}$")   # what core.images.thumbnail_path accepts
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_THUMB_MEMBER_RE = re.compile(r"^thumbs/([0-9A-Za-z]{2,128})\.webp$")
_MANIFEST, _POINTS, _CLUSTERS = "manifest.json", "points.parquet", "clusters.parquet"
_NOISE_COLOUR = "#9e9e9e"
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
            "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
            "#31a354", "#756bb1", "#636363", "#fd8d3c")


# --------------------------------------------------------------------------- errors


class SnapshotError(RepLensError):
    """A snapshot that cannot be made, found or shown as asked."""


class SnapshotNotFoundError(SnapshotError, KeyError):
    """A snapshot id (or prefix) that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SnapshotFormatError(SnapshotError, ImportFormatError):
    """A ``.replens`` file that is damaged, hostile, or of a format version this RepLens cannot read."""


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what an imported ``.replens`` file may hold (uncompressed sizes)."""

    max_members: int = 250_003
    max_points: int = 250_000
    max_clusters: int = 100_000
    max_total_bytes: int = 2 << 30
    max_manifest_bytes: int = 64 << 20
    max_table_bytes: int = 512 << 20
    max_thumb_bytes: int = 1 << 20
    max_json_field_bytes: int = 1 << 20   # one free-form dict (params, metrics, encoder spec)
    max_candidates_bytes: int = 64 << 10  # one cluster's candidate labels
    max_label_chars: int = 1_000
    max_path_chars: int = 4_096
    max_folder_labels: int = 64


LIMITS = ArchiveLimits()


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Everything one snapshot holds. Treat the dicts and frames as read-only.

    ``points``: content_hash, rel_path, labels (list of folder names), x, y (float32),
    cluster (int32; -1 = noise), ordered by content_hash. ``clusters``: cluster, label,
    method (clip | text | visual | user | default), candidates (parsed JSON), edited, size.
    """

    id: str
    title: str
    notes: str
    created: str
    replens_version: str
    format_version: int
    origin: str                     # 'local' or 'imported'
    dataset: dict[str, Any]         # {"name": …}
    encoder: dict[str, Any]         # {"key": …, "spec": {…} | None}
    projection: dict[str, Any]      # {"key": … | None, "method": …, "params": {…}}
    clustering: dict[str, Any]      # {"run_id", "method", "params", "metrics", "n_clusters", "noise_fraction"}
    points: pd.DataFrame = field(repr=False)
    clusters: pd.DataFrame = field(repr=False)

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def coords(self) -> np.ndarray:
        """(n, 2) float32 map coordinates in ``points`` order."""
        return np.column_stack([self.points["x"].to_numpy(np.float32), self.points["y"].to_numpy(np.float32)])

    @property
    def assignments(self) -> dict[str, int]:
        return dict(zip(self.points["content_hash"], (int(c) for c in self.points["cluster"])))

    def manifest(self) -> dict[str, Any]:
        """The JSON description (no tables) as stored and exported."""
        return _manifest(self.id, self.created, self.replens_version, _header_of(self), self.n_points,
                         len(self.clusters))


@dataclass(frozen=True)
class ExportResult:
    path: Path
    snapshot_id: str
    n_points: int
    n_thumbnails: int
    missing_thumbnails: int   # images with no cached thumbnail: blank tiles after import

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "snapshot_id": self.snapshot_id, "n_points": self.n_points,
                "n_thumbnails": self.n_thumbnails, "missing_thumbnails": self.missing_thumbnails}


@dataclass(frozen=True, eq=False)
class SnapshotDiff:
    """How two partitions of the same images agree.

    ``matching`` pairs clusters of A with clusters of B one-to-one (Hungarian, maximising
    shared images); ``moved`` has one row per shared image with ``moved`` true when its B
    cluster is not the match of its A cluster. Noise (-1) is treated as one more cluster.
    """

    id_a: str
    id_b: str
    n_shared: int
    only_a: int
    only_b: int
    ari: float
    nmi: float
    confusion: pd.DataFrame = field(repr=False)     # rows: clusters of A, columns: clusters of B
    matching: list[tuple[int, int, int]] = field(repr=False)  # (cluster A, cluster B, shared images)
    moved: pd.DataFrame = field(repr=False)         # content_hash, rel_path, cluster_a, cluster_b, matched_b, moved

    @property
    def n_moved(self) -> int:
        return int(self.moved["moved"].sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id_a": self.id_a, "id_b": self.id_b, "n_shared": self.n_shared, "only_a": self.only_a,
            "only_b": self.only_b, "ari": self.ari, "nmi": self.nmi, "n_moved": self.n_moved,
            "confusion": {"a": [int(v) for v in self.confusion.index], "b": [int(v) for v in self.confusion.columns],
                          "counts": self.confusion.to_numpy().astype(int).tolist()},
            "matching": [{"a": a, "b": b, "shared": n} for a, b, n in self.matching],
            "moved": self.moved[self.moved["moved"]].drop(columns="moved").to_dict(orient="records"),
        }


# --------------------------------------------------------------------------- save / list / load / delete


def save_snapshot(store: Store, run_id: str, *, title: str, notes: str = "", projection_key: str | None = None) -> str:
    """Freeze cluster run ``run_id`` as a snapshot and return its id (a sha256 hex digest).

    Coordinates come from ``projection_key``, else from the newest stored projection of the
    run's dataset and encoder that covers every clustered image, else from a PCA of the
    stored embeddings (so a snapshot always has a map). Clusters without a stored label are
    called "cluster N" (and -1 "noise") with method "default". Saving identical content
    again returns the same id and stores nothing new.

    Example::

        sid = save_snapshot(store, "a1b2c3", title="DINO k=8", notes="cats split by pose")
    """
    title = _check_text(title, "title", MAX_TITLE_CHARS, required=True)
    notes = _check_text(notes, "notes", MAX_NOTES_CHARS)
    run = store.snapshot_source_run(run_id)
    if run is None:
        raise SnapshotError(
            f"No cluster run {run_id!r} in {store.path}. Run a clustering first (Clusters page or "
            "`python -m core cluster …`) and pass its run id."
        )
    assignments: pa.Table = run["assignments"]
    if assignments.num_rows == 0:
        raise SnapshotError(f"Cluster run {run_id!r} has no assignments; rerun the clustering before saving it.")
    hashes = assignments.column("content_hash").to_pylist()
    cluster_ids = assignments.column("cluster").to_numpy().astype(np.int32)
    dataset, encoder_key = run["dataset"], run["encoder_key"]

    # Images the dataset no longer holds keep their cluster, with an empty path and no folders.
    known = store.dataset_images(dataset).set_index("content_hash").reindex(hashes)
    present = known["rel_path"].notna().to_numpy()
    rel_paths = [str(p) if ok else "" for p, ok in zip(known["rel_path"], present)]
    folder_labels = [[str(v) for v in labs] if ok else [] for labs, ok in zip(known["labels"], present)]
    coords, projection = _coordinates(store, dataset, encoder_key, hashes, projection_key)

    points = _points_table(hashes, rel_paths, folder_labels, coords[:, 0], coords[:, 1], cluster_ids)
    clusters = _clusters_for_run(cluster_ids, run["labels"])
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "title": title,
        "notes": notes,
        "dataset": {"name": dataset},
        "encoder": {"key": encoder_key, "spec": _jsonable(store.encoder_spec(encoder_key))},
        "projection": projection,
        "clustering": {
            "run_id": run_id,
            "method": run["method"],
            "params": _jsonable(_json_value(run["params"])),
            "metrics": _jsonable(_json_value(run["metrics"])),
            "n_clusters": int(run["n_clusters"]),
            "noise_fraction": _jsonable(float(run["noise_fraction"])),
        },
    }
    snapshot_id = _content_id(header, points, clusters)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = _manifest(snapshot_id, created, core.__version__, header, points.num_rows, clusters.num_rows)
    _insert(store, manifest, points, clusters, origin="local", run_id=run_id)
    return snapshot_id


def list_snapshots(store: Store, query: str | None = None) -> pd.DataFrame:
    """Stored snapshots, newest first; ``query`` searches title, notes and dataset name.

    Columns: snapshot_id, title, notes, dataset, encoder_key, cluster_run_id, origin,
    created_at, n_points, n_clusters.
    """
    return store.list_snapshots(query.strip() if query else None)


def resolve_snapshot_id(store: Store, id_or_prefix: str) -> str:
    """The full id of a stored snapshot named by its id or a unique prefix (at least 4 characters)."""
    key = (id_or_prefix or "").strip().lower()
    if len(key) < 4 or not re.fullmatch(r"[0-9a-f]+", key):
        raise SnapshotNotFoundError(
            f"{id_or_prefix!r} is not a snapshot id; give the id or at least its first 4 hex characters "
            "(see `python -m core snapshot list`)."
        )
    found = store.snapshot_ids_starting(key)
    if len(found) == 1:
        return found[0]
    if not found:
        raise SnapshotNotFoundError(
            f"No snapshot {id_or_prefix!r} in {store.path}. List them with `python -m core snapshot list`, or "
            "import a .replens file with `python -m core snapshot import FILE`."
        )
    raise SnapshotNotFoundError(f"{id_or_prefix!r} matches {len(found)} snapshots; give more of the id.")


def load_snapshot(store: Store, snapshot_id: str) -> Snapshot:
    """The snapshot with this id (or unique id prefix)."""
    snapshot_id = resolve_snapshot_id(store, snapshot_id)
    found = store.snapshot_rows(snapshot_id)
    if found is None:  # deleted between resolving and reading
        raise SnapshotNotFoundError(
            f"Snapshot {snapshot_id} was deleted; list them with `python -m core snapshot list`.")
    row, points, clusters = found
    manifest = json.loads(row["manifest"])
    point_frame = pd.DataFrame({
        "content_hash": points.column("content_hash").to_pylist(),
        "rel_path": points.column("rel_path").to_pylist(),
        "labels": [list(v) for v in points.column("labels").to_pylist()],
        "x": points.column("x").to_numpy().astype(np.float32),
        "y": points.column("y").to_numpy().astype(np.float32),
        "cluster": points.column("cluster").to_numpy().astype(np.int32),
    })
    cluster_frame = pd.DataFrame({
        "cluster": clusters.column("cluster").to_numpy().astype(np.int32),
        "label": clusters.column("label").to_pylist(),
        "method": clusters.column("method").to_pylist(),
        "candidates": [json.loads(v) for v in clusters.column("candidates").to_pylist()],
        "edited": clusters.column("edited").to_numpy(zero_copy_only=False).astype(bool),
        "size": clusters.column("size").to_numpy().astype(np.int64),
    })
    return Snapshot(
        id=row["snapshot_id"], title=row["title"], notes=row["notes"], created=manifest["created"],
        replens_version=manifest["replens_version"], format_version=int(manifest["format_version"]),
        origin=row["origin"], dataset=manifest["dataset"], encoder=manifest["encoder"],
        projection=manifest["projection"], clustering=manifest["clustering"],
        points=point_frame, clusters=cluster_frame,
    )


def delete_snapshot(store: Store, snapshot_id: str) -> None:
    """Remove a snapshot (thumbnails stay in the cache: images may share them)."""
    if not store.delete_snapshot(resolve_snapshot_id(store, snapshot_id)):
        raise SnapshotNotFoundError(f"Snapshot {snapshot_id!r} was already deleted.")


# --------------------------------------------------------------------------- export


def export_snapshot(store: Store, snapshot_id: str, out_path: str | os.PathLike[str]) -> ExportResult:
    """Write one ``.replens`` file (a zip) that another installation can import.

    Members: ``manifest.json`` (with the sha256 of every other member), ``points.parquet``,
    ``clusters.parquet`` and ``thumbs/<hash>.webp`` (<= 128 px) for each image whose
    thumbnail is cached here. The file appears atomically at ``out_path``.
    """
    snap = load_snapshot(store, snapshot_id)
    members: dict[str, bytes] = {
        _POINTS: _parquet_bytes(_points_table(
            snap.points["content_hash"].tolist(), snap.points["rel_path"].tolist(), snap.points["labels"].tolist(),
            snap.points["x"].to_numpy(), snap.points["y"].to_numpy(), snap.points["cluster"].to_numpy())),
        _CLUSTERS: _parquet_bytes(_clusters_table(snap.clusters)),
    }
    missing = 0
    for content_hash in snap.points["content_hash"]:
        data = _cached_thumbnail(store, content_hash, EXPORT_THUMB_SIZE)
        if data is None:
            missing += 1
        else:
            members[f"thumbs/{content_hash}.webp"] = data
    manifest = snap.manifest()
    manifest["counts"]["thumbnails"] = len(members) - 2
    manifest["files"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                         for name, data in members.items()}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            _write_member(zf, _MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode(), compress=True)
            for name, data in members.items():
                _write_member(zf, name, data, compress=not name.startswith("thumbs/"))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(out, snap.id, snap.n_points, len(members) - 2, missing)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes, *, compress: bool) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    zf.writestr(info, data)


def _cached_thumbnail(store: Store, content_hash: str, size: int) -> bytes | None:
    """WebP bytes (longest side <= ``size``) of the cached thumbnail, or None when absent/unreadable."""
    path = images.thumbnail_path(store.cache_dir, content_hash)
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            if img.format == "WEBP" and max(img.size) <= size:
                return data
            img.load()
            rgb = img.convert("RGB")
        rgb.thumbnail((size, size))
        buf = io.BytesIO()
        rgb.save(buf, format="WEBP", quality=80)
        return buf.getvalue()
    except Exception:  # a damaged cache file is treated like a missing one (and counted)
        return None


# --------------------------------------------------------------------------- import


def import_snapshot(store: Store, path: str | os.PathLike[str]) -> str:
    """Import a ``.replens`` file written by ``export_snapshot`` (here or elsewhere); returns its id.

    The file is untrusted. Before the database is touched: member names, kinds, count and
    sizes are checked (no links, devices, absolute paths or ``..``; bounded reads), every
    member's sha256 must match the manifest, the manifest and tables must have the expected
    fields, types and sizes, and the recomputed content id must equal the stated one.
    Thumbnails are decoded and re-encoded through Pillow into a staging folder inside the
    cache's ``thumbs/`` and moved into place only after the database transaction commits.
    On any failure nothing is left behind and the database is unchanged. Importing a
    snapshot that is already stored only adds thumbnails that were missing.
    """
    path = Path(path)
    limits = LIMITS
    if not path.is_file():
        raise SnapshotFormatError(f"{path} is not a file; pass the .replens file written by `snapshot export`.")
    if path.stat().st_size > limits.max_total_bytes + (64 << 20):
        raise SnapshotFormatError(f"{path} is {path.stat().st_size} bytes, over the {limits.max_total_bytes}-byte cap.")
    declared = _declared_entries(path)
    if declared is None:
        raise SnapshotFormatError(f"{path.name} is not a readable .replens (zip) file: no zip directory found.")
    if declared > limits.max_members:  # checked before zipfile reads the whole directory into memory
        raise SnapshotFormatError(f"The archive has {declared} members, over the cap of {limits.max_members}.")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SnapshotFormatError(f"{path.name} is not a readable .replens (zip) file: {exc}") from exc
    thumbs_dir = Path(store.cache_dir) / "thumbs"
    had_thumbs_dir = thumbs_dir.exists()
    staging: Path | None = None
    try:
        with zf:
            infos = _checked_members(zf, limits)
            reader = _BoundedReader(zf, limits)
            manifest = _parse_manifest(reader.read(infos[_MANIFEST], limits.max_manifest_bytes), limits)
            _check_file_list(manifest, infos)
            points = _parse_points(
                reader.read_checked(infos[_POINTS], manifest, limits.max_table_bytes), manifest, limits)
            clusters = _parse_clusters(
                reader.read_checked(infos[_CLUSTERS], manifest, limits.max_table_bytes), manifest, points, limits)
            header = _header_from_manifest(manifest)
            snapshot_id = _content_id(header, points, clusters)
            if snapshot_id != manifest["id"]:
                raise SnapshotFormatError(
                    f"The content of {path.name} does not match its id (stated {manifest['id'][:12]}…, "
                    f"computed {snapshot_id[:12]}…): the file was altered or damaged. Ask for a fresh export."
                )
            point_hashes = set(points.column("content_hash").to_pylist())
            thumb_infos = [(m.group(1), info) for name, info in infos.items()
                           if (m := _THUMB_MEMBER_RE.match(name))]
            if thumb_infos:
                staging = thumbs_dir / f".import-{uuid.uuid4().hex}"
                staging.mkdir(parents=True)
                for content_hash, info in thumb_infos:
                    if content_hash not in point_hashes:
                        raise SnapshotFormatError(
                            f"{info.filename} is a thumbnail for an image the snapshot does not hold.")
                    data = reader.read_checked(info, manifest, limits.max_thumb_bytes)
                    (staging / f"{content_hash}.webp").write_bytes(_reencode_thumbnail(data, info.filename))
        _insert(store, _manifest(snapshot_id, manifest["created"], manifest["replens_version"], header,
                                 points.num_rows, clusters.num_rows),
                points, clusters, origin="imported", run_id=None)
        if staging is not None:
            for staged in staging.iterdir():
                target = images.thumbnail_path(store.cache_dir, staged.stem)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, target)
        return snapshot_id
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            if not had_thumbs_dir:
                try:
                    thumbs_dir.rmdir()  # only if still empty: we created it and nothing landed there
                except OSError:
                    pass


def _declared_entries(path: Path) -> int | None:
    """The member count the end-of-central-directory record states (zip64 aware), or None if absent."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        tail_len = min(size, 22 + 0xFFFF)  # the record, plus the longest possible archive comment
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        entries = struct.unpack_from("<H", tail, at + 10)[0]
        if entries != 0xFFFF:
            return int(entries)
        locator = at - 20
        if locator < 0 or tail[locator:locator + 4] != b"PK\x06\x07":
            return None
        fh.seek(struct.unpack_from("<Q", tail, locator + 8)[0])
        record = fh.read(56)
        if len(record) < 56 or record[:4] != b"PK\x06\x06":
            return None
        return int(struct.unpack_from("<Q", record, 32)[0])


class _BoundedReader:
    """Reads members with a hard cap per member and across the archive (zip-bomb proof)."""

    def __init__(self, zf: zipfile.ZipFile, limits: ArchiveLimits) -> None:
        self.zf, self.limits, self.total = zf, limits, 0

    def read(self, info: zipfile.ZipInfo, cap: int) -> bytes:
        cap = min(cap, self.limits.max_total_bytes - self.total)
        chunks, size = [], 0
        try:
            with self.zf.open(info) as fh:
                while chunk := fh.read(min(1 << 20, cap + 1 - size)):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > cap:
                        raise SnapshotFormatError(
                            f"{info.filename} expands beyond {cap} bytes (its header says {info.file_size}); "
                            "the file is damaged or hostile and was not imported."
                        )
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise SnapshotFormatError(f"{info.filename} cannot be read from the archive: {exc}") from exc
        self.total += size
        return b"".join(chunks)

    def read_checked(self, info: zipfile.ZipInfo, manifest: Mapping[str, Any], cap: int) -> bytes:
        data = self.read(info, cap)
        expected = manifest["files"][info.filename]
        if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise SnapshotFormatError(
                f"{info.filename} does not match the sha256 in manifest.json: the file was altered or damaged. "
                "Ask for a fresh export."
            )
        return data


def _checked_members(zf: zipfile.ZipFile, limits: ArchiveLimits) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise SnapshotFormatError(f"The archive has {len(infos)} members, over the cap of {limits.max_members}.")
    found: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        raw = info.orig_filename
        if (raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw) or "\\" in raw or "\x00" in raw
                or ".." in raw.replace("\\", "/").split("/")):
            raise SnapshotFormatError(f"Unsafe member name {raw!r} (absolute or with '..'); the file was not imported.")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if name == "thumbs/" and kind in (0, stat.S_IFDIR):
            continue  # a folder entry some zip tools add; harmless, nothing to read
        if kind not in (0, stat.S_IFREG) or info.is_dir():
            raise SnapshotFormatError(
                f"Member {name!r} is a link, folder or device, not a plain file; the file was not imported.")
        if info.flag_bits & 0x1:
            raise SnapshotFormatError(f"Member {name!r} is encrypted; RepLens snapshots never are.")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise SnapshotFormatError(f"Member {name!r} uses compression method {info.compress_type}; "
                                      "only stored and deflated are accepted.")
        if name in found:
            raise SnapshotFormatError(f"Member {name!r} appears twice in the archive.")
        if name == _MANIFEST:
            cap = limits.max_manifest_bytes
        elif name in (_POINTS, _CLUSTERS):
            cap = limits.max_table_bytes
        elif _THUMB_MEMBER_RE.match(name):
            cap = limits.max_thumb_bytes
        else:
            raise SnapshotFormatError(
                f"Unexpected member {name!r}: a .replens file holds only manifest.json, points.parquet, "
                "clusters.parquet and thumbs/<hash>.webp."
            )
        if info.file_size > cap:
            raise SnapshotFormatError(f"Member {name!r} declares {info.file_size} bytes, over its cap of {cap}.")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise SnapshotFormatError(f"The archive expands to over {limits.max_total_bytes} bytes; not imported.")
        found[name] = info
    for required in (_MANIFEST, _POINTS, _CLUSTERS):
        if required not in found:
            raise SnapshotFormatError(f"The archive has no {required}; it is not a RepLens snapshot export.")
    return found


# -- manifest validation (by hand: required keys, types, sizes) ------------------------


def _parse_manifest(data: bytes, limits: ArchiveLimits) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key in a JSON object")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SnapshotFormatError(f"manifest.json is not valid JSON ({str(exc)[:200]}); the file is damaged.") from exc
    if not isinstance(manifest, dict):
        raise SnapshotFormatError("manifest.json should hold a JSON object; the file is not a RepLens snapshot.")
    if manifest.get("format") != FORMAT:
        raise SnapshotFormatError("manifest.json does not describe a RepLens snapshot (format is not "
                                  f"{FORMAT!r}); export one with `python -m core snapshot export`.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SnapshotFormatError("manifest.json has no integer format_version; the file is damaged.")
    if version != FORMAT_VERSION:
        by = manifest.get("replens_version")
        by_text = f" by RepLens {by}" if isinstance(by, str) and len(by) <= 64 else ""
        advice = ("upgrade RepLens to import it" if version > FORMAT_VERSION
                  else "no RepLens release wrote that version; the file is damaged")
        raise SnapshotFormatError(
            f"This snapshot uses format version {version}{by_text}; RepLens {core.__version__} reads version "
            f"{FORMAT_VERSION}: {advice}."
        )
    v = _Validator(limits)
    v.string(manifest, "id", "manifest", pattern=_SHA256_RE)
    v.string(manifest, "replens_version", "manifest", max_len=64)
    v.string(manifest, "title", "manifest", max_len=MAX_TITLE_CHARS)
    v.string(manifest, "notes", "manifest", max_len=MAX_NOTES_CHARS)
    created = v.string(manifest, "created", "manifest", max_len=64)
    try:
        datetime.fromisoformat(created)
    except ValueError as exc:
        raise SnapshotFormatError(f"manifest.created {created!r} is not an ISO date-time.") from exc
    dataset = v.obj(manifest, "dataset", "manifest")
    v.string(dataset, "name", "manifest.dataset", max_len=200)
    encoder = v.obj(manifest, "encoder", "manifest")
    v.string(encoder, "key", "manifest.encoder", max_len=1_000)
    v.free_dict(encoder, "spec", "manifest.encoder", nullable=True)
    projection = v.obj(manifest, "projection", "manifest")
    v.string(projection, "key", "manifest.projection", max_len=1_000, nullable=True)
    v.string(projection, "method", "manifest.projection", max_len=64)
    v.free_dict(projection, "params", "manifest.projection")
    clustering = v.obj(manifest, "clustering", "manifest")
    v.string(clustering, "run_id", "manifest.clustering", max_len=200, nullable=True)
    v.string(clustering, "method", "manifest.clustering", max_len=64)
    v.free_dict(clustering, "params", "manifest.clustering")
    v.free_dict(clustering, "metrics", "manifest.clustering")
    v.integer(clustering, "n_clusters", "manifest.clustering", 0, limits.max_clusters)
    v.number(clustering, "noise_fraction", "manifest.clustering", 0.0, 1.0, nullable=True)
    counts = v.obj(manifest, "counts", "manifest")
    v.integer(counts, "points", "manifest.counts", 1, limits.max_points)
    v.integer(counts, "clusters", "manifest.counts", 1, limits.max_clusters)
    files = v.obj(manifest, "files", "manifest")
    if len(files) > limits.max_members:
        raise SnapshotFormatError(f"manifest.files lists {len(files)} files, over the cap of {limits.max_members}.")
    for name, entry in files.items():
        if not isinstance(entry, dict):
            raise SnapshotFormatError(f"manifest.files[{name[:80]!r}] should be an object.")
        v.string(entry, "sha256", "manifest.files entry", pattern=_SHA256_RE)
        v.integer(entry, "bytes", "manifest.files entry", 0, limits.max_total_bytes)
    return manifest


class _Validator:
    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits

    @staticmethod
    def _get(obj: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            raise SnapshotFormatError(f"{where}.{key} is missing; the file is damaged or not a snapshot export.")
        return obj[key]

    def string(self, obj: Mapping[str, Any], key: str, where: str, *, max_len: int | None = None,
               pattern: re.Pattern[str] | None = None, nullable: bool = False) -> Any:
        value = self._get(obj, key, where)
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise SnapshotFormatError(f"{where}.{key} should be a string, got {type(value).__name__}.")
        if max_len is not None and len(value) > max_len:
            raise SnapshotFormatError(f"{where}.{key} has {len(value)} characters, over the cap of {max_len}.")
        if pattern is not None and not pattern.match(value):
            raise SnapshotFormatError(f"{where}.{key} {value[:80]!r} is not in the expected form.")
        return value

    def integer(self, obj: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int:
        value = self._get(obj, key, where)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise SnapshotFormatError(f"{where}.{key} should be an integer in {lo}..{hi}, got {str(value)[:40]}.")
        return value

    def number(self, obj: Mapping[str, Any], key: str, where: str, lo: float, hi: float,
               nullable: bool = False) -> float | None:
        value = self._get(obj, key, where)
        if value is None and nullable:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
            raise SnapshotFormatError(f"{where}.{key} should be a number in {lo}..{hi}, got {str(value)[:40]}.")
        return float(value)

    def obj(self, obj: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
        value = self._get(obj, key, where)
        if not isinstance(value, dict):
            raise SnapshotFormatError(f"{where}.{key} should be an object, got {type(value).__name__}.")
        return value

    def free_dict(self, obj: Mapping[str, Any], key: str, where: str, nullable: bool = False) -> dict[str, Any] | None:
        value = self._get(obj, key, where)
        if value is None and nullable:
            return None
        if not isinstance(value, dict):
            raise SnapshotFormatError(f"{where}.{key} should be an object, got {type(value).__name__}.")
        size = len(_canonical(value))
        if size > self.limits.max_json_field_bytes:
            raise SnapshotFormatError(f"{where}.{key} is {size} bytes of JSON, over the cap of "
                                      f"{self.limits.max_json_field_bytes}.")
        if _depth(value) > 32:
            raise SnapshotFormatError(f"{where}.{key} is nested more than 32 levels deep.")
        return value


def _depth(value: Any, level: int = 0) -> int:
    if level > 32:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _check_file_list(manifest: Mapping[str, Any], infos: Mapping[str, zipfile.ZipInfo]) -> None:
    listed = set(manifest["files"])
    present = set(infos) - {_MANIFEST}
    if listed != present:
        extra, missing = sorted(present - listed)[:3], sorted(listed - present)[:3]
        raise SnapshotFormatError(
            "The archive's members do not match manifest.files"
            f"{f' (not listed: {extra})' if extra else ''}{f' (missing: {missing})' if missing else ''}; "
            "the file was altered or damaged."
        )
    if manifest["counts"].get("thumbnails", len(present) - 2) != len(present) - 2:
        raise SnapshotFormatError("manifest.counts.thumbnails does not match the thumbnails in the archive.")


# -- table validation -------------------------------------------------------------------

_POINT_TYPES = {"content_hash": "string", "rel_path": "string", "labels": "list<string>", "x": "float32",
                "y": "float32", "cluster": "integer"}
_CLUSTER_TYPES = {"cluster": "integer", "label": "string", "method": "string", "candidates": "string",
                  "edited": "bool", "size": "integer"}


def _read_parquet(data: bytes, name: str, types: Mapping[str, str], max_rows: int) -> pa.Table:
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        schema = pf.schema_arrow
        if pf.metadata.num_rows > max_rows:
            raise SnapshotFormatError(f"{name} has {pf.metadata.num_rows} rows, over the cap of {max_rows}.")
        for column, kind in types.items():
            if schema.get_field_index(column) < 0:
                raise SnapshotFormatError(f"{name} has no column {column!r}; the file is damaged.")
            if not _type_ok(schema.field(column).type, kind):
                raise SnapshotFormatError(
                    f"{name} column {column!r} has type {schema.field(column).type}, expected {kind}.")
        table = pf.read(columns=list(types))
    except SnapshotFormatError:
        raise
    except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
        raise SnapshotFormatError(f"{name} is not a readable Parquet table: {str(exc)[:200]}") from exc
    for column in types:
        if table.column(column).null_count:
            raise SnapshotFormatError(f"{name} column {column!r} has missing values.")
    return table


def _type_ok(t: pa.DataType, kind: str) -> bool:
    is_str = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    if kind == "string":
        return is_str
    if kind == "list<string>":
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _type_ok(t.value_type, "string")
    if kind == "float32":
        return pa.types.is_float32(t)
    if kind == "integer":
        return pa.types.is_integer(t)
    return pa.types.is_boolean(t)


def _parse_points(data: bytes, manifest: Mapping[str, Any], limits: ArchiveLimits) -> pa.Table:
    t = _read_parquet(data, _POINTS, _POINT_TYPES, limits.max_points)
    n = manifest["counts"]["points"]
    if t.num_rows != n:
        raise SnapshotFormatError(f"{_POINTS} has {t.num_rows} rows but manifest.counts.points says {n}.")
    hashes = t.column("content_hash").cast(pa.string())
    bad = pc.invert(pc.match_substring_regex(hashes, _HASH_RE.pattern))
    if pc.any(bad).as_py():
        raise SnapshotFormatError(f"{_POINTS} has content hashes that are not 2-128 letters/digits.")
    if pc.count_distinct(hashes).as_py() != n:
        raise SnapshotFormatError(f"{_POINTS} lists an image hash twice.")
    paths = t.column("rel_path").cast(pa.string())
    if pc.max(pc.utf8_length(paths)).as_py() > limits.max_path_chars:
        raise SnapshotFormatError(f"{_POINTS} has a rel_path over {limits.max_path_chars} characters.")
    labels = t.column("labels").cast(pa.list_(pa.string()))
    if pc.max(pc.list_value_length(labels)).as_py() > limits.max_folder_labels:
        raise SnapshotFormatError(f"{_POINTS} has an image with over {limits.max_folder_labels} folder labels.")
    flat = pc.list_flatten(labels)
    if len(flat) and (flat.null_count or pc.max(pc.utf8_length(flat)).as_py() > limits.max_label_chars):
        raise SnapshotFormatError(
            f"{_POINTS} has a missing folder label or one over {limits.max_label_chars} characters.")
    x, y = t.column("x").to_numpy(), t.column("y").to_numpy()
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SnapshotFormatError(f"{_POINTS} has coordinates that are not finite numbers.")
    clusters = t.column("cluster").to_numpy()
    if clusters.min() < -1 or clusters.max() >= limits.max_clusters:
        raise SnapshotFormatError(f"{_POINTS} has cluster numbers outside -1..{limits.max_clusters - 1}.")
    table = _points_table(hashes.to_pylist(), paths.to_pylist(), labels.to_pylist(), x, y, clusters)
    return table


def _parse_clusters(data: bytes, manifest: Mapping[str, Any], points: pa.Table, limits: ArchiveLimits) -> pa.Table:
    t = _read_parquet(data, _CLUSTERS, _CLUSTER_TYPES, limits.max_clusters)
    n = manifest["counts"]["clusters"]
    if t.num_rows != n:
        raise SnapshotFormatError(f"{_CLUSTERS} has {t.num_rows} rows but manifest.counts.clusters says {n}.")
    numbers = t.column("cluster").to_numpy().astype(np.int64)
    sizes = t.column("size").to_numpy().astype(np.int64)
    assigned, counts = np.unique(points.column("cluster").to_numpy(), return_counts=True)
    if len(set(numbers.tolist())) != len(numbers) or sorted(numbers.tolist()) != assigned.tolist():
        raise SnapshotFormatError(f"{_CLUSTERS} does not list exactly the clusters the points are assigned to.")
    expected = dict(zip(assigned.tolist(), counts.tolist()))
    if any(expected[c] != s for c, s in zip(numbers.tolist(), sizes.tolist())):
        raise SnapshotFormatError(f"{_CLUSTERS} gives cluster sizes that do not match the points.")
    labels = t.column("label").cast(pa.string()).to_pylist()
    methods = t.column("method").cast(pa.string()).to_pylist()
    candidates = []
    for cluster, label, method, text in zip(numbers.tolist(), labels, methods,
                                            t.column("candidates").cast(pa.string()).to_pylist()):
        if len(label) > limits.max_label_chars or len(method) > 64:
            raise SnapshotFormatError(f"{_CLUSTERS}: the label or method of cluster {cluster} is too long.")
        if len(text.encode()) > limits.max_candidates_bytes:
            raise SnapshotFormatError(f"{_CLUSTERS}: the candidates of cluster {cluster} exceed "
                                      f"{limits.max_candidates_bytes} bytes.")
        try:
            parsed = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise SnapshotFormatError(f"{_CLUSTERS}: the candidates of cluster {cluster} are not valid JSON.") from exc
        if _depth(parsed) > 32:
            raise SnapshotFormatError(f"{_CLUSTERS}: the candidates of cluster {cluster} are nested too deeply.")
        candidates.append(parsed)
    frame = pd.DataFrame({"cluster": numbers, "label": labels, "method": methods, "candidates": candidates,
                          "edited": t.column("edited").to_numpy(zero_copy_only=False).astype(bool), "size": sizes})
    return _clusters_table(frame)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _reencode_thumbnail(data: bytes, name: str) -> bytes:
    """Decode an untrusted WebP (<= 512 px a side), and write it afresh; any oddity is refused."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["WEBP"]) as img:
            width, height = img.size
            if not (0 < width <= MAX_IMPORTED_THUMB_SIDE and 0 < height <= MAX_IMPORTED_THUMB_SIDE):
                raise SnapshotFormatError(f"{name} is {width}x{height} px; thumbnails may be at most "
                                          f"{MAX_IMPORTED_THUMB_SIDE} px a side.")
            img.load()
            rgb = img.convert("RGB")
    except SnapshotFormatError:
        raise
    except Exception as exc:  # Pillow raises many types on bad input; all mean "not a thumbnail"
        raise SnapshotFormatError(f"{name} is not a valid WebP image ({type(exc).__name__}); not imported.") from exc
    if max(rgb.size) > EXPORT_THUMB_SIZE:
        rgb.thumbnail((EXPORT_THUMB_SIZE, EXPORT_THUMB_SIZE))
    buf = io.BytesIO()
    rgb.save(buf, format="WEBP", quality=80)
    return buf.getvalue()


def _header_from_manifest(m: Mapping[str, Any]) -> dict[str, Any]:
    c = m["clustering"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "title": m["title"],
        "notes": m["notes"],
        "dataset": {"name": m["dataset"]["name"]},
        "encoder": {"key": m["encoder"]["key"], "spec": m["encoder"]["spec"]},
        "projection": {"key": m["projection"]["key"], "method": m["projection"]["method"],
                       "params": m["projection"]["params"]},
        "clustering": {"run_id": c["run_id"], "method": c["method"], "params": c["params"], "metrics": c["metrics"],
                       "n_clusters": c["n_clusters"], "noise_fraction": c["noise_fraction"]},
    }


# --------------------------------------------------------------------------- HTML


def snapshot_html(store: Store, snapshot_id: str, out_path: str | os.PathLike[str]) -> Path:
    """Write one self-contained HTML page for a snapshot; returns its path.

    The page needs no network: plotly.js is inline, thumbnails are data: URIs, and a
    Content-Security-Policy forbids every fetch and every script but the page's own (by
    hash). All text (title, notes, labels, paths) is escaped; the JSON the page reads sits
    in a ``<script type="application/json">`` with ``<``, ``>`` and ``&`` escaped.
    """
    from plotly.offline import get_plotlyjs

    snap = load_snapshot(store, snapshot_id)
    pts, cls = snap.points, snap.clusters
    colours = cluster_colours(cls["cluster"].tolist())
    label_of = dict(zip(cls["cluster"].tolist(), cls["label"].tolist()))
    thumbs: dict[str, str] = {}
    for content_hash in pts["content_hash"]:
        data = _cached_thumbnail(store, content_hash, EXPORT_THUMB_SIZE)
        if data is not None:
            thumbs[content_hash] = "data:image/webp;base64," + base64.b64encode(data).decode("ascii")
    cluster_col = pts["cluster"].to_numpy()
    members = {int(c): np.flatnonzero(cluster_col == c).tolist() for c in cls["cluster"]}
    scatter = "scatter" if len(pts) <= 5_000 else "scattergl"
    traces = []
    for c in cls["cluster"].tolist():
        idx = members[c]
        traces.append({
            "type": scatter, "mode": "markers", "x": pts["x"].to_numpy()[idx].astype(float).tolist(),
            "y": pts["y"].to_numpy()[idx].astype(float).tolist(), "customdata": idx,
            # Plotly renders a pseudo-HTML subset in names; escaped text shows as typed.
            "name": html.escape(f"{_short(label_of[c], 60)} ({len(idx)})"),
            "marker": {"color": colours[c], "size": 7, "opacity": 0.85}, "hoverinfo": "none",
        })
    layout = {"margin": {"l": 30, "r": 10, "t": 10, "b": 30}, "legend": {"itemsizing": "constant"},
              "xaxis": {"zeroline": False}, "yaxis": {"zeroline": False, "scaleanchor": "x"},
              "hovermode": "closest", "dragmode": "pan", "plot_bgcolor": "#fafafa"}
    payload = {
        "traces": traces, "layout": layout, "thumbs": thumbs,
        "hashes": pts["content_hash"].tolist(), "paths": pts["rel_path"].tolist(),
        "folders": ["/".join(v) for v in pts["labels"]], "cluster": cluster_col.astype(int).tolist(),
        "labels": {str(c): label_of[c] for c in label_of}, "members": {str(c): m for c, m in members.items()},
        "galleryTiles": _GALLERY_TILES,
    }
    data_json = _script_safe_json(payload)
    app_js = _APP_JS
    plotly_js = get_plotlyjs()
    csp = ("default-src 'none'; "
           f"script-src {_csp_hash(plotly_js)} {_csp_hash(app_js)}; "
           "style-src 'unsafe-inline'; img-src data:; font-src data:; connect-src 'none'; "
           "base-uri 'none'; form-action 'none'")
    esc = html.escape
    m = snap.projection
    meta = (f"{esc(snap.dataset['name'])} · {snap.n_points} images · encoder {esc(snap.encoder['key'])} · "
            f"{esc(snap.clustering['method'])} ({len(cls)} clusters) · map: {esc(m['method'])} · "
            f"saved {esc(snap.created)} · RepLens {esc(snap.replens_version)} · id {esc(snap.id[:12])}")
    items = []
    for row in cls.itertuples(index=False):
        provenance = f"{row.method}{', edited' if row.edited else ''}"
        items.append(
            f'<li class="cluster" data-cluster="{int(row.cluster)}"><details><summary>'
            f'<span class="swatch" style="background:{colours[int(row.cluster)]}"></span>'
            f'<span class="cluster-label">{esc(row.label)}</span> '
            f'<span class="size">{int(row.size)} images</span> <span class="prov">{esc(provenance)}</span>'
            f'</summary><div class="gallery" data-cluster="{int(row.cluster)}"></div></details></li>'
        )
    page = _PAGE.format(
        csp=esc(csp), title=esc(snap.title), meta=meta, notes=esc(snap.notes), items="\n".join(items),
        data_json=data_json, plotly_js=plotly_js, app_js=app_js,
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _script_safe_json(value: Any) -> str:
    # Inside <script>, "</script" or "<!--" would end or confuse the block: escape every <, >, &.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csp_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


def cluster_colours(clusters: Iterable[int]) -> dict[int, str]:
    """One colour per cluster (noise grey), the same in the HTML export and the Snapshots page."""
    colours, i = {}, 0
    for c in clusters:
        if c < 0:
            colours[c] = _NOISE_COLOUR
        else:
            colours[c] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return colours


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · RepLens snapshot</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 1rem 2rem 1rem; color: #222; }}
header h1 {{ margin: .6rem 0 .2rem 0; font-size: 1.4rem; }}
.meta {{ color: #666; font-size: .85rem; margin: 0; }}
.notes {{ white-space: pre-wrap; margin: .5rem 0; }}
main {{ display: flex; gap: 1rem; align-items: flex-start; }}
#map {{ flex: 1 1 auto; min-width: 0; height: 72vh; }}
#hover-panel {{ position: sticky; top: .5rem; width: 200px; flex: 0 0 200px; border: 1px solid #ddd;
  border-radius: 6px; padding: .5rem; font-size: .8rem; word-break: break-all; }}
#hover-panel img {{ width: 184px; height: 184px; object-fit: contain; background: #eee; display: block; }}
#hover-caption {{ white-space: pre-wrap; margin-top: .4rem; }}
#cluster-list {{ list-style: none; padding: 0; }}
#cluster-list li {{ border-top: 1px solid #eee; padding: .3rem 0; }}
.swatch {{ display: inline-block; width: .8rem; height: .8rem; border-radius: 50%; margin-right: .4rem; }}
.size, .prov {{ color: #666; font-size: .85rem; margin-left: .5rem; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 4px; padding: .4rem 0; }}
.gallery img {{ width: 96px; height: 96px; object-fit: contain; background: #eee; }}
.more {{ color: #666; font-size: .85rem; align-self: center; }}
</style>
</head>
<body>
<header><h1>{title}</h1><p class="meta">{meta}</p><div class="notes">{notes}</div></header>
<main><div id="map"></div>
<aside id="hover-panel"><img id="hover-img" alt="" hidden>
<div id="hover-caption">Hover a point to see the image.</div></aside>
</main>
<section><h2>Clusters</h2>
<ol id="cluster-list">
{items}
</ol></section>
<script type="application/json" id="snapshot-data">{data_json}</script>
<script>{plotly_js}</script>
<script>{app_js}</script>
</body>
</html>
"""

_APP_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("snapshot-data").textContent);
  var gd = document.getElementById("map");
  var img = document.getElementById("hover-img");
  var caption = document.getElementById("hover-caption");
  function thumb(i) {
    var uri = data.thumbs[data.hashes[i]];
    return typeof uri === "string" && uri.indexOf("data:image/webp;base64,") === 0 ? uri : null;
  }
  function show(i) {
    var uri = thumb(i);
    if (uri) { img.src = uri; img.hidden = false; } else { img.removeAttribute("src"); img.hidden = true; }
    var c = String(data.cluster[i]);
    caption.textContent = data.paths[i] + "\n" + (data.folders[i] ? "folders: " + data.folders[i] + "\n" : "") +
      "cluster " + c + ": " + data.labels[c];
  }
  Plotly.newPlot(gd, data.traces, data.layout, {responsive: true, displaylogo: false, scrollZoom: true});
  gd.on("plotly_hover", function (ev) {
    if (ev && ev.points && ev.points.length) { show(ev.points[0].customdata); }
  });
  function fill(gallery) {
    if (gallery.getAttribute("data-filled")) { return; }
    gallery.setAttribute("data-filled", "1");
    var idx = data.members[gallery.getAttribute("data-cluster")] || [];
    var n = Math.min(idx.length, data.galleryTiles);
    for (var k = 0; k < n; k++) {
      var tile = document.createElement("img");
      var uri = thumb(idx[k]);
      if (uri) { tile.src = uri; }
      tile.alt = data.paths[idx[k]];
      tile.title = data.paths[idx[k]];
      tile.addEventListener("mouseenter", show.bind(null, idx[k]));
      gallery.appendChild(tile);
    }
    if (idx.length > n) {
      var more = document.createElement("span");
      more.className = "more";
      more.textContent = "and " + (idx.length - n) + " more";
      gallery.appendChild(more);
    }
  }
  document.querySelectorAll("#cluster-list details").forEach(function (d) {
    d.addEventListener("toggle", function () { if (d.open) { fill(d.querySelector(".gallery")); } });
  });
})();
"""


# --------------------------------------------------------------------------- diff


def diff_snapshots(store: Store, id_a: str, id_b: str) -> SnapshotDiff:
    """Compare two snapshots on the images they share (e.g. the same dataset under two encoders).

    ARI and NMI (scikit-learn) measure agreement of the partitions; ``confusion`` is the
    crosstab of cluster A × cluster B; ``matching`` is the one-to-one pairing of clusters that
    maximises shared images (Hungarian); an image "moved" when its B cluster is not the
    partner of its A cluster (or its A cluster has no partner).
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a, b = load_snapshot(store, id_a), load_snapshot(store, id_b)
    pa_, pb_ = a.points.set_index("content_hash"), b.points.set_index("content_hash")
    shared = sorted(set(pa_.index) & set(pb_.index))
    if not shared:
        raise SnapshotError(
            f"Snapshots {a.id[:12]} and {b.id[:12]} share no images (by content hash); diff compares two "
            "clusterings of the same images."
        )
    ca = pa_.loc[shared, "cluster"].to_numpy().astype(int)
    cb = pb_.loc[shared, "cluster"].to_numpy().astype(int)
    confusion = pd.crosstab(pd.Series(ca, name="cluster_a"), pd.Series(cb, name="cluster_b"))
    rows, cols = linear_sum_assignment(-confusion.to_numpy())
    partner = {int(confusion.index[r]): int(confusion.columns[c]) for r, c in zip(rows, cols)}
    matching = [(int(confusion.index[r]), int(confusion.columns[c]), int(confusion.iat[r, c]))
                for r, c in zip(rows, cols)]
    matched = np.array([partner.get(int(c), -2) for c in ca])
    moved = pd.DataFrame({
        "content_hash": shared, "rel_path": pa_.loc[shared, "rel_path"].tolist(),
        "cluster_a": ca, "cluster_b": cb,
        "matched_b": [p if p != -2 else None for p in matched.tolist()], "moved": matched != cb,
    })
    return SnapshotDiff(
        id_a=a.id, id_b=b.id, n_shared=len(shared), only_a=len(pa_) - len(shared), only_b=len(pb_) - len(shared),
        ari=float(adjusted_rand_score(ca, cb)), nmi=float(normalized_mutual_info_score(ca, cb)),
        confusion=confusion, matching=matching, moved=moved,
    )


# --------------------------------------------------------------------------- shared helpers


def _insert(store: Store, manifest: dict[str, Any], points: pa.Table, clusters: pa.Table, *, origin: str,
            run_id: str | None) -> bool:
    row = {
        "snapshot_id": manifest["id"], "title": manifest["title"], "notes": manifest["notes"],
        "dataset": manifest["dataset"]["name"], "encoder_key": manifest["encoder"]["key"], "cluster_run_id": run_id,
        "manifest": json.dumps(manifest, ensure_ascii=False, sort_keys=True), "origin": origin,
        "created_at": _utc(manifest["created"]),
    }
    return store.insert_snapshot(row, points, clusters)


def _utc(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _manifest(snapshot_id: str, created: str, replens_version: str, header: Mapping[str, Any], n_points: int,
              n_clusters: int) -> dict[str, Any]:
    out = {"format": FORMAT, "format_version": FORMAT_VERSION, "replens_version": replens_version, "id": snapshot_id,
           "created": created}
    out.update({k: v for k, v in header.items() if k not in ("format", "format_version")})
    out["counts"] = {"points": int(n_points), "clusters": int(n_clusters)}
    return json.loads(json.dumps(out))  # a deep copy, so callers may add to it


def _header_of(snap: Snapshot) -> dict[str, Any]:
    return _header_from_manifest({
        "title": snap.title, "notes": snap.notes, "dataset": snap.dataset, "encoder": snap.encoder,
        "projection": snap.projection, "clustering": snap.clustering,
    })


def _content_id(header: Mapping[str, Any], points: pa.Table, clusters: pa.Table) -> str:
    """sha256 over the canonical content: header JSON (minus the source run id), points, clusters.

    Points are hashed in content-hash order: strings as canonical JSON, coordinates as
    little-endian float32 and clusters as int32 bytes; each part is length-prefixed.
    """
    h = hashlib.sha256(b"replens-snapshot/1\n")

    def part(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    content = {k: v for k, v in header.items()}
    content["clustering"] = {k: v for k, v in header["clustering"].items() if k != "run_id"}
    part(_canonical(content))
    part(_canonical([points.column("content_hash").to_pylist(), points.column("rel_path").to_pylist(),
                     points.column("labels").to_pylist()]))
    part(points.column("x").to_numpy().astype("<f4").tobytes())
    part(points.column("y").to_numpy().astype("<f4").tobytes())
    part(points.column("cluster").to_numpy().astype("<i4").tobytes())
    columns = (clusters.column(n).to_pylist() for n in ("cluster", "label", "method", "candidates", "edited", "size"))
    part(_canonical([[int(c), label, method, json.loads(cand), bool(edited), int(size)]
                     for c, label, method, cand, edited, size in zip(*columns)]))
    return h.hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


_POINTS_SCHEMA = pa.schema([("content_hash", pa.string()), ("rel_path", pa.string()),
                            ("labels", pa.list_(pa.string())), ("x", pa.float32()), ("y", pa.float32()),
                            ("cluster", pa.int32())])
_CLUSTERS_SCHEMA = pa.schema([("cluster", pa.int32()), ("label", pa.string()), ("method", pa.string()),
                              ("candidates", pa.string()), ("edited", pa.bool_()), ("size", pa.int32())])


def _points_table(hashes: list[str], rel_paths: list[str], labels: list[list[str]], x: Any, y: Any,
                  clusters: Any) -> pa.Table:
    table = pa.table({
        "content_hash": pa.array(hashes, pa.string()), "rel_path": pa.array(rel_paths, pa.string()),
        "labels": pa.array([list(v) for v in labels], pa.list_(pa.string())),
        "x": pa.array(np.asarray(x, dtype=np.float32)), "y": pa.array(np.asarray(y, dtype=np.float32)),
        "cluster": pa.array(np.asarray(clusters, dtype=np.int32)),
    }, schema=_POINTS_SCHEMA)
    return table.take(pc.sort_indices(table, [("content_hash", "ascending")]))


def _clusters_table(frame: pd.DataFrame) -> pa.Table:
    """Clusters in canonical form: by number, candidates as canonical JSON text."""
    frame = frame.sort_values("cluster")
    return pa.table({
        "cluster": pa.array(frame["cluster"].to_numpy().astype(np.int32)),
        "label": pa.array([str(v) for v in frame["label"]], pa.string()),
        "method": pa.array([str(v) for v in frame["method"]], pa.string()),
        "candidates": pa.array([_canonical(_jsonable(v)).decode() for v in frame["candidates"]], pa.string()),
        "edited": pa.array([bool(v) for v in frame["edited"]], pa.bool_()),
        "size": pa.array(frame["size"].to_numpy().astype(np.int32)),
    }, schema=_CLUSTERS_SCHEMA)


def _clusters_for_run(cluster_ids: np.ndarray, labels: pa.Table) -> pa.Table:
    numbers, sizes = np.unique(cluster_ids, return_counts=True)
    stored = {int(r["cluster"]): r for r in labels.to_pylist()}
    rows = []
    for c, size in zip(numbers.tolist(), sizes.tolist()):
        r = stored.get(c)
        if r is None:
            rows.append({"cluster": c, "label": "noise" if c < 0 else f"cluster {c}", "method": "default",
                         "candidates": [], "edited": False, "size": size})
        else:
            rows.append({"cluster": c, "label": r["label"], "method": r["method"],
                         "candidates": _json_value(r["candidates"]), "edited": bool(r["edited"]), "size": size})
    return _clusters_table(pd.DataFrame(rows, columns=["cluster", "label", "method", "candidates", "edited", "size"]))


def _coordinates(store: Store, dataset: str, encoder_key: str, hashes: list[str],
                 projection_key: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    projections = store.list_projections(dataset)
    if projection_key is not None:
        rows = projections[projections["projection_key"] == projection_key]
        loaded = store.load_projection(projection_key) if len(rows) else None
        if loaded is None:
            raise SnapshotError(f"No projection {projection_key!r} for dataset {dataset!r}; compute the map first "
                                "or leave the projection out to use the newest one.")
        coords = _align(loaded, hashes)
        if coords is None:
            raise SnapshotError(f"Projection {projection_key!r} does not place every clustered image; recompute the "
                                "map on the current images or leave the projection out.")
        return coords, _projection_meta(rows.iloc[0])
    for _, row in projections[projections["encoder_key"] == encoder_key].iterrows():  # newest first
        loaded = store.load_projection(row["projection_key"])
        coords = _align(loaded, hashes) if loaded is not None else None
        if coords is not None:
            return coords, _projection_meta(row)
    return _pca_coordinates(store, dataset, encoder_key, hashes), {
        "key": None, "method": "pca", "params": {"n_components": 2, "svd_solver": "full", "computed_for": "snapshot"}}


def _projection_meta(row: pd.Series) -> dict[str, Any]:
    return {"key": str(row["projection_key"]), "method": str(row["method"]),
            "params": _jsonable(_json_value(row["params"]))}


def _align(loaded: tuple[list[str], np.ndarray], hashes: list[str]) -> np.ndarray | None:
    stored_hashes, coords = loaded
    position = {h: i for i, h in enumerate(stored_hashes)}
    idx = [position.get(h, -1) for h in hashes]
    if min(idx, default=0) < 0:
        return None
    out = np.asarray(coords, dtype=np.float32)[idx]
    return out if np.isfinite(out).all() else None


def _pca_coordinates(store: Store, dataset: str, encoder_key: str, hashes: list[str]) -> np.ndarray:
    from sklearn.decomposition import PCA

    frame, matrix = store.load_embeddings(dataset, encoder_key)
    position = {h: i for i, h in enumerate(frame["content_hash"])}
    missing = [h for h in hashes if h not in position]
    if missing:
        raise SnapshotError(f"{len(missing)} clustered images have no stored {encoder_key} embedding, so no map can "
                            "be computed; compute a projection for the run's images first.")
    x = matrix[[position[h] for h in hashes]].astype(np.float64)
    out = np.zeros((len(hashes), 2), dtype=np.float32)
    k = min(2, x.shape[0], x.shape[1])
    if k >= 1 and x.shape[0] >= 2:
        out[:, :k] = PCA(n_components=k, svd_solver="full").fit_transform(x).astype(np.float32)
    return out


def _json_value(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, (str, bytes)):
        return json.loads(value)
    return value


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, non-finite floats as null, keys as strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def _check_text(value: Any, name: str, max_chars: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"Snapshot {name} must be text, got {type(value).__name__}.")
    if required and not value.strip():
        raise InvalidInputError(f"Give the snapshot a {name} (1-{max_chars} characters).")
    if len(value) > max_chars:
        raise InvalidInputError(f"Snapshot {name} has {len(value)} characters; the most is {max_chars}.")
    return value.strip() if name == "title" else value
