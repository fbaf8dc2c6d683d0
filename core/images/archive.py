"""A .zip archive of images as a dataset source: its directory indexed once, members read on demand.

Members are untrusted and judged from the directory before any is read: absolute, drive-letter
and ``..`` names, stored links, encrypted members, unknown compression, nested archives and
members whose declared sizes make them a bomb are reported and never read.
"""

from __future__ import annotations

import stat
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UnsupportedSourceError
from core.fsutil import has_unsafe_parts
from core.images.listing import (
    MAX_FILE_BYTES,
    Listing,
    NotReadable,
    is_archive_name,
    is_ignored_name,
    is_image_name,
    is_relevant_suffix,
    listing_with_captions,
    nested_archive_reason,
    ratio_problem,
    too_big,
)
from core.images.records import SkippedFile


@dataclass(frozen=True)
class ZipIndex:
    archive: zipfile.ZipFile
    members: dict[str, zipfile.ZipInfo]  # safe, normalised, non-hidden paths only
    skipped: list[SkippedFile]  # unsafe or duplicate image entries
    # ZipFile's open-handle bookkeeping is not atomic, so threads take turns reading; the
    # expensive part of a scan, decoding, still runs in parallel.
    lock: threading.Lock = field(default_factory=threading.Lock)


class ZipSource:
    def __init__(self, root: Path, index: ZipIndex) -> None:
        self.root = root
        self.index = index
        # Zipping a folder wraps everything in that folder's name; it is not a label.
        self.label_skip = 1 if _single_wrapper_folder(index.members) else 0

    def listing(self) -> Listing:
        return listing_with_captions(list(self.index.members), list(self.index.skipped))

    def stat(self, rel_path: str) -> tuple[int, float]:
        info = self._member(rel_path)
        return info.file_size, _zip_mtime(info)

    def read(self, rel_path: str) -> tuple[bytes, float]:
        info = self._member(rel_path)
        if info.file_size > MAX_FILE_BYTES:
            raise NotReadable(too_big(info.file_size))
        with self.index.lock:
            data = self.index.archive.read(info)
        return data, _zip_mtime(info)

    def _member(self, rel_path: str) -> zipfile.ZipInfo:
        info = self.index.members.get(rel_path)
        if info is None:
            raise FileNotFoundError(f"no member {rel_path!r} in the archive")
        return info


def _single_wrapper_folder(members: Mapping[str, zipfile.ZipInfo]) -> bool:
    images = [m for m in members if is_image_name(m)]
    tops = {m.split("/", 1)[0] for m in images}
    return bool(images) and len(tops) == 1 and all("/" in m for m in images)


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    try:
        # DOS timestamps have no zone; archivers write local time.
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return 0.0  # a nonsense date in the header; the image itself is still fine


# Opening a large archive parses its whole central directory; extraction reads images one
# by one through read_bytes, so recently used archives stay open.
_ZIP_CACHE: OrderedDict[tuple[str, int, int], ZipIndex] = OrderedDict()
_ZIP_CACHE_LOCK = threading.Lock()
_ZIP_CACHE_SIZE = 4


def zip_index(path: Path) -> ZipIndex:
    """The index of the archive at ``path``, reused while its mtime and size are unchanged."""
    info = path.stat()
    key = (str(path), info.st_mtime_ns, info.st_size)
    with _ZIP_CACHE_LOCK:
        cached = _ZIP_CACHE.get(key)
        if cached is not None:
            _ZIP_CACHE.move_to_end(key)
            return cached
        index = _build_zip_index(path)
        _ZIP_CACHE[key] = index
        while len(_ZIP_CACHE) > _ZIP_CACHE_SIZE:
            # Not closed here: another thread may still be reading from it; GC closes it.
            _ZIP_CACHE.popitem(last=False)
        return index


def _build_zip_index(path: Path) -> ZipIndex:
    archive = _open_zip(path)
    members: dict[str, zipfile.ZipInfo] = {}
    skipped: list[SkippedFile] = []
    for info in archive.infolist():
        if info.is_dir() or not (is_relevant_suffix(info.filename) or is_archive_name(info.filename)):
            continue
        rel_path, problem = _normalise_member_name(info.filename)
        if rel_path is None:
            continue  # hidden or __MACOSX
        if problem is None and rel_path in members:
            problem = f"duplicate entry for {rel_path!r} in the archive; the first one is used"
        reported = is_image_name(info.filename) or is_archive_name(info.filename)
        if problem is None and (problem := _member_problem(info)) is not None:
            reported = True  # a caption that is a bomb, a link or encrypted is worth a line too
        if problem is not None:
            if reported:
                skipped.append(SkippedFile(info.filename, problem))
            continue
        members[rel_path] = info
    return ZipIndex(archive, members, skipped)


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except UnicodeDecodeError as exc:
        # zipfile decodes every name up front; one that lies about being UTF-8 leaves nothing to read.
        raise UnsupportedSourceError(
            f"{path} is not a readable zip archive: a member name is marked as UTF-8 but is not "
            f"({exc.object[exc.start : exc.end]!r}). Re-create the archive with a current zip tool."
        ) from exc
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
        raise UnsupportedSourceError(
            f"{path} is not a readable zip archive ({exc}). Re-create the archive, or extract it and pass the folder."
        ) from exc


_READABLE_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member is refused from its directory entry alone (nothing is read), or None."""
    if is_archive_name(info.filename):
        return nested_archive_reason(info.filename)
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link stored in the archive; links are not followed"
    if info.flag_bits & 0x1:
        return "encrypted archive member; RepLens cannot read password-protected archives"
    if info.compress_type not in _READABLE_METHODS:
        return f"archive member uses compression method {info.compress_type}, which RepLens cannot read"
    return ratio_problem(info.file_size, info.compress_size)


def _normalise_member_name(name: str) -> tuple[str | None, str | None]:
    """-> (POSIX relative path, why it is unsafe); path None means "ignore silently"."""
    # Some Windows archivers write backslashes despite the zip spec.
    unified = name.replace("\\", "/")
    if has_unsafe_parts(unified):
        # Checked before the hidden-name rule, which would otherwise hide "../x.png".
        return unified, "unsafe path in archive (absolute or with '..'); it was not read"
    kept = [part for part in unified.split("/") if part not in ("", ".")]
    if not kept or any(is_ignored_name(part) for part in kept):
        return None, None
    return "/".join(kept), None
