"""Importing a ``.replens`` file: an untrusted zip, checked in full before the database is touched.

Order of defence: the file's size and declared member count (before zipfile reads the
directory), then each member's name, kind and declared size, then bounded reads with a
sha256 match against the manifest, then the content checks in ``validate`` and the content
id. Thumbnails are re-encoded into a staging folder and moved into the cache only after the
database transaction commits.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from core import images
from core.fsutil import has_unsafe_parts
from core.snapshots import validate
from core.snapshots.content import CLUSTERS, MANIFEST, POINTS, build_manifest, content_id, header_from_manifest
from core.snapshots.model import ArchiveLimits, SnapshotFormatError
from core.snapshots.records import insert_snapshot
from core.store import Store

THUMB_MEMBER_RE = re.compile(r"^thumbs/([0-9A-Za-z]{2,128})\.webp$")


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
    limits = _current_limits()
    zf = _open_archive(path, limits)
    with _thumbnail_staging(Path(store.cache_dir) / "thumbs") as staging:
        with zf:
            infos = _checked_members(zf, limits)
            reader = BoundedReader(zf, limits)
            manifest = validate.parse_manifest(reader.read(infos[MANIFEST], limits.max_manifest_bytes), limits)
            validate.check_file_list(manifest, infos)
            points = validate.parse_points(
                reader.read_checked(infos[POINTS], manifest, limits.max_table_bytes), manifest, limits
            )
            clusters = validate.parse_clusters(
                reader.read_checked(infos[CLUSTERS], manifest, limits.max_table_bytes), manifest, points, limits
            )
            header = header_from_manifest(manifest)
            snapshot_id = content_id(header, points, clusters)
            if snapshot_id != manifest["id"]:
                raise SnapshotFormatError(
                    f"The content of {path.name} does not match its id (stated {manifest['id'][:12]}…, "
                    f"computed {snapshot_id[:12]}…): the file was altered or damaged. Ask for a fresh export."
                )
            _stage_thumbnails(staging, infos, reader, manifest, points, limits)
        insert_snapshot(
            store,
            build_manifest(
                snapshot_id,
                manifest["created"],
                manifest["replens_version"],
                header,
                points.num_rows,
                clusters.num_rows,
            ),
            points,
            clusters,
            origin="imported",
            run_id=None,
        )
        _move_staged_thumbnails(store, staging.folder)
    return snapshot_id


def _current_limits() -> ArchiveLimits:
    # Read from the package at call time, so `monkeypatch.setattr(core.snapshots, "LIMITS", …)` applies.
    from core import snapshots

    limits: ArchiveLimits = snapshots.LIMITS
    return limits


def _open_archive(path: Path, limits: ArchiveLimits) -> zipfile.ZipFile:
    """The zip, once its size and declared member count are within ``limits``."""
    if not path.is_file():
        raise SnapshotFormatError(f"{path} is not a file; pass the .replens file written by `snapshot export`.")
    if path.stat().st_size > limits.max_total_bytes + (64 << 20):
        raise SnapshotFormatError(
            f"{path} is {path.stat().st_size} bytes, over the {limits.max_total_bytes}-byte cap.",
            page_message=f"{path.name} is {path.stat().st_size:,} bytes, over the {limits.max_total_bytes:,}-byte cap.",
        )
    declared = _declared_entries(path)
    if declared is None:
        raise SnapshotFormatError(f"{path.name} is not a readable .replens (zip) file: no zip directory found.")
    if declared > limits.max_members:  # checked before zipfile reads the whole directory into memory
        raise SnapshotFormatError(f"The archive has {declared} members, over the cap of {limits.max_members}.")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SnapshotFormatError(f"{path.name} is not a readable .replens (zip) file: {exc}") from exc


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
        if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
            return None
        fh.seek(struct.unpack_from("<Q", tail, locator + 8)[0])
        record = fh.read(56)
        if len(record) < 56 or record[:4] != b"PK\x06\x06":
            return None
        return int(struct.unpack_from("<Q", record, 32)[0])


class BoundedReader:
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
        """``read``, refused unless the bytes match the size and sha256 that manifest.files gives."""
        data = self.read(info, cap)
        expected = manifest["files"][info.filename]
        if len(data) != expected["bytes"]:
            raise SnapshotFormatError(
                f"{info.filename} is {len(data)} bytes but manifest.json says {expected['bytes']}: the file was "
                "altered or damaged. Ask for a fresh export."
            )
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise SnapshotFormatError(
                f"{info.filename} does not match the sha256 in manifest.json: the file was altered or damaged. "
                "Ask for a fresh export."
            )
        return data


def _checked_members(zf: zipfile.ZipFile, limits: ArchiveLimits) -> dict[str, zipfile.ZipInfo]:
    """name -> info of every member, once each is a safe, plain, expected, small enough file."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise SnapshotFormatError(f"The archive has {len(infos)} members, over the cap of {limits.max_members}.")
    found: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if name == "thumbs/" and stat.S_IFMT(info.external_attr >> 16) in (0, stat.S_IFDIR):
            _check_member_name(info.orig_filename)
            continue  # a folder entry some zip tools add; harmless, nothing to read
        _check_member_kind(info)
        if name in found:
            raise SnapshotFormatError(f"Member {name!r} appears twice in the archive.")
        cap = _member_cap(name, limits)
        if info.file_size > cap:
            raise SnapshotFormatError(f"Member {name!r} declares {info.file_size} bytes, over its cap of {cap}.")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise SnapshotFormatError(f"The archive expands to over {limits.max_total_bytes} bytes; not imported.")
        found[name] = info
    for required in (MANIFEST, POINTS, CLUSTERS):
        if required not in found:
            raise SnapshotFormatError(f"The archive has no {required}; it is not a RepLens snapshot export.")
    return found


def _check_member_name(raw: str) -> None:
    # Backslashes and NULs are refused outright: zip tools disagree on what they mean.
    if has_unsafe_parts(raw) or "\\" in raw or "\x00" in raw:
        raise SnapshotFormatError(f"Unsafe member name {raw!r} (absolute or with '..'); the file was not imported.")


def _check_member_kind(info: zipfile.ZipInfo) -> None:
    """A safe name, a plain file, not encrypted, stored or deflated."""
    _check_member_name(info.orig_filename)
    name = info.filename
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind not in (0, stat.S_IFREG) or info.is_dir():
        raise SnapshotFormatError(
            f"Member {name!r} is a link, folder or device, not a plain file; the file was not imported."
        )
    if info.flag_bits & 0x1:
        raise SnapshotFormatError(f"Member {name!r} is encrypted; RepLens snapshots never are.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise SnapshotFormatError(
            f"Member {name!r} uses compression method {info.compress_type}; only stored and deflated are accepted."
        )


def _member_cap(name: str, limits: ArchiveLimits) -> int:
    if name == MANIFEST:
        return limits.max_manifest_bytes
    if name in (POINTS, CLUSTERS):
        return limits.max_table_bytes
    if THUMB_MEMBER_RE.match(name):
        return limits.max_thumb_bytes
    raise SnapshotFormatError(
        f"Unexpected member {name!r}: a .replens file holds only manifest.json, points.parquet, "
        "clusters.parquet and thumbs/<hash>.webp."
    )


# -- thumbnails -------------------------------------------------------------------------


class _Staging:
    """A staging folder inside the cache's thumbs/, made on first use."""

    def __init__(self, thumbs_dir: Path) -> None:
        self.thumbs_dir = thumbs_dir
        self.folder: Path | None = None

    def make(self) -> Path:
        if self.folder is None:
            self.folder = self.thumbs_dir / f".import-{uuid.uuid4().hex}"
            self.folder.mkdir(parents=True)
        return self.folder


@contextmanager
def _thumbnail_staging(thumbs_dir: Path) -> Iterator[_Staging]:
    """Staging for imported thumbnails, removed afterwards with thumbs/ itself if we created it."""
    had_thumbs_dir = thumbs_dir.exists()
    staging = _Staging(thumbs_dir)
    try:
        yield staging
    finally:
        if staging.folder is not None:
            shutil.rmtree(staging.folder, ignore_errors=True)
            if not had_thumbs_dir:
                try:
                    thumbs_dir.rmdir()  # only if still empty: we created it and nothing landed there
                except OSError:
                    pass


def _stage_thumbnails(
    staging: _Staging,
    infos: Mapping[str, zipfile.ZipInfo],
    reader: BoundedReader,
    manifest: Mapping[str, Any],
    points: pa.Table,
    limits: ArchiveLimits,
) -> None:
    """Every thumbnail member, checked and re-encoded through Pillow, written into the staging folder."""
    point_hashes = set(points.column("content_hash").to_pylist())
    for name, info in infos.items():
        match = THUMB_MEMBER_RE.match(name)
        if match is None:
            continue
        content_hash = match.group(1)
        if content_hash not in point_hashes:
            raise SnapshotFormatError(f"{info.filename} is a thumbnail for an image the snapshot does not hold.")
        data = reader.read_checked(info, manifest, limits.max_thumb_bytes)
        (staging.make() / f"{content_hash}.webp").write_bytes(validate.reencode_thumbnail(data, info.filename))


def _move_staged_thumbnails(store: Store, folder: Path | None) -> None:
    """Staged thumbnails into the cache, where core.images looks; ones already there are kept."""
    if folder is None:
        return
    for staged in folder.iterdir():
        target = images.thumbnail_path(store.cache_dir, staged.stem)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
