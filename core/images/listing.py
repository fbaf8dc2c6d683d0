"""What every image source (a folder, a zip archive) shares: which files count, how captions pair
with images, what reading one file may raise, and the interface a scan reads through."""

from __future__ import annotations

import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from core.images.records import SUPPORTED_EXTENSIONS, SkippedFile

CAPTION_EXTENSION = ".txt"
# Reading a file is all-in-memory; this bounds what one corrupt or hostile file can cost.
MAX_FILE_BYTES = 1 << 30
# A zip member that inflates to more than this many times its stored size is refused unread once
# it is past RATIO_CHECK_MIN_BYTES: photos barely compress, bombs compress ~1000:1 (so would a
# large blank BMP, the price of the rule). An archive of S bytes can then make a scan inflate at
# most about MAX_COMPRESSION_RATIO * S bytes, one member at a time.
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_MIN_BYTES = 16 << 20
# Archives are never opened inside a dataset (no nesting, so no recursion to bound); each one
# found is reported instead of passed over in silence.
ARCHIVE_SUFFIXES: tuple[str, ...] = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


@dataclass(frozen=True)
class Candidate:
    rel_path: str
    caption_rel_path: str | None


@dataclass(frozen=True)
class Listing:
    candidates: list[Candidate]
    skipped: list[SkippedFile]


class ImageSource(Protocol):
    """A dataset root: lists its images and reads them by POSIX relative path."""

    root: Path
    label_skip: int  # leading folders of a rel_path that are not labels

    def listing(self) -> Listing: ...

    def stat(self, rel_path: str) -> tuple[int, float]: ...

    def read(self, rel_path: str) -> tuple[bytes, float]: ...


class NotReadable(Exception):
    """A file that exists but is refused before reading (size, type)."""


# What reading one file or archive member can raise for reasons of that file alone:
# zipfile signals encrypted members with RuntimeError, unknown compression with
# NotImplementedError, CRC mismatches with BadZipFile, cut-off data with EOFError/zlib.error,
# damaged LZMA data with LZMAError (not an OSError, unlike bz2's).
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    NotReadable,
    zipfile.BadZipFile,
    RuntimeError,
    NotImplementedError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
)


def read_reason(exc: BaseException) -> str:
    """The short reason a read failed, for a ``SkippedFile`` or an error message."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    message = str(exc)
    if isinstance(exc, zipfile.BadZipFile) and message.startswith("Bad CRC-32"):
        # Also what a member whose header understates its size gives: zipfile stops at the stated size.
        return "damaged archive member: its data does not match its CRC-32 checksum"
    if isinstance(exc, (zlib.error, lzma.LZMAError, EOFError)):
        return f"damaged archive member: its compressed data cannot be inflated ({message or type(exc).__name__})"
    return message or type(exc).__name__


def too_big(n_bytes: int) -> str:
    return f"file is {n_bytes} bytes, more than the {MAX_FILE_BYTES} byte limit"


def is_ignored_name(name: str) -> bool:
    # Dot-files include macOS "._x.jpg" resource forks; __MACOSX holds more of them in zips.
    return name.startswith(".") or name == "__MACOSX"


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def nested_archive_reason(name: str) -> str:
    suffix = next(s for s in ARCHIVE_SUFFIXES if name.lower().endswith(s))
    return (
        f"archive ({suffix}) inside the dataset: archives within a dataset are not opened; "
        "extract it into the folder, or ingest it as a dataset of its own"
    )


def ratio_problem(file_size: int, compress_size: int) -> str | None:
    """Why a zip member's declared sizes make it a bomb to refuse unread, or None."""
    if file_size > MAX_FILE_BYTES:
        return f"archive member declares {file_size} bytes uncompressed, more than the {MAX_FILE_BYTES} byte limit"
    if file_size >= RATIO_CHECK_MIN_BYTES and file_size > MAX_COMPRESSION_RATIO * max(compress_size, 1):
        ratio = file_size // max(compress_size, 1)
        return (
            f"zip bomb: archive member inflates {ratio}:1 ({compress_size} bytes to {file_size}), over the "
            f"{MAX_COMPRESSION_RATIO}:1 an image can plausibly reach; it was not extracted"
        )
    return None


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in SUPPORTED_EXTENSIONS


def is_relevant_suffix(name: str) -> bool:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix in SUPPORTED_EXTENSIONS or suffix == CAPTION_EXTENSION


def listing_with_captions(rel_paths: list[str], skipped: list[SkippedFile]) -> Listing:
    """Images (sorted) paired with the caption file of the same stem, if any."""
    images = [p for p in rel_paths if is_image_name(p)]
    texts = [p for p in rel_paths if not is_image_name(p)]
    # Sorted so "x.TXT" vs "x.txt" resolves the same way on every run.
    captions: dict[str, str] = {}
    for text in sorted(texts, reverse=True):
        captions[_stem_key(text)] = text
    candidates = [Candidate(rel, captions.get(_stem_key(rel))) for rel in sorted(images)]
    return Listing(candidates, skipped)


def _stem_key(rel_path: str) -> str:
    path = PurePosixPath(rel_path)
    return str(path.with_suffix("")) if path.suffix else rel_path
