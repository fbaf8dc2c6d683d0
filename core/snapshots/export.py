"""Writing a ``.replens`` file: one zip with the manifest, two Parquet tables and WebP thumbnails."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core import images
from core.fsutil import atomic_path
from core.snapshots.content import CLUSTERS, MANIFEST, POINTS, clusters_table, points_table
from core.snapshots.model import EXPORT_THUMB_SIZE, ExportResult
from core.snapshots.records import load_snapshot
from core.store import Store


def export_snapshot(store: Store, snapshot_id: str, out_path: str | os.PathLike[str]) -> ExportResult:
    """Write one ``.replens`` file (a zip) that another installation can import.

    Members: ``manifest.json`` (with the sha256 of every other member), ``points.parquet``,
    ``clusters.parquet`` and ``thumbs/<hash>.webp`` (<= 128 px) for each image whose
    thumbnail is cached here. The file appears atomically at ``out_path``.
    """
    snap = load_snapshot(store, snapshot_id)
    pts = snap.points
    members: dict[str, bytes] = {
        POINTS: _parquet_bytes(
            points_table(
                pts["content_hash"].tolist(),
                pts["rel_path"].tolist(),
                pts["labels"].tolist(),
                pts["x"].to_numpy(),
                pts["y"].to_numpy(),
                pts["cluster"].to_numpy(),
            )
        ),
        CLUSTERS: _parquet_bytes(clusters_table(snap.clusters)),
    }
    missing = 0
    for content_hash in pts["content_hash"]:
        data = cached_thumbnail(store, content_hash, EXPORT_THUMB_SIZE)
        if data is None:
            missing += 1
        else:
            members[f"thumbs/{content_hash}.webp"] = data
    n_thumbs = len(members) - 2
    manifest = snap.manifest()
    manifest["counts"]["thumbnails"] = n_thumbs
    manifest["files"] = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in members.items()
    }
    with atomic_path(out_path) as tmp, zipfile.ZipFile(tmp, "w") as zf:  # the zip closes before the rename
        _write_member(zf, MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode(), compress=True)
        for name, data in members.items():
            _write_member(zf, name, data, compress=not name.startswith("thumbs/"))  # WebP does not deflate
    return ExportResult(Path(out_path), snap.id, snap.n_points, n_thumbs, missing)


def cached_thumbnail(store: Store, content_hash: str, size: int) -> bytes | None:
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


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes, *, compress: bool) -> None:
    """A member with a fixed date and plain-file mode, so the same snapshot gives the same bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    zf.writestr(info, data)
