"""What every image source (a folder, a zip archive) shares: which files count, how captions pair
with images, what reading one file may raise, and the interface a scan reads through."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from core.images.records import SUPPORTED_EXTENSIONS, SkippedFile

CAPTION_EXTENSION = ".txt"
# Reading a file is all-in-memory; this bounds what one corrupt or hostile file can cost.
MAX_FILE_BYTES = 1 << 30


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
# NotImplementedError, CRC mismatches with BadZipFile, cut-off data with EOFError/zlib.error.
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    NotReadable,
    zipfile.BadZipFile,
    RuntimeError,
    NotImplementedError,
    EOFError,
    zlib.error,
)


def read_reason(exc: BaseException) -> str:
    """The short reason a read failed, for a ``SkippedFile`` or an error message."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def too_big(n_bytes: int) -> str:
    return f"file is {n_bytes} bytes, more than the {MAX_FILE_BYTES} byte limit"


def is_ignored_name(name: str) -> bool:
    # Dot-files include macOS "._x.jpg" resource forks; __MACOSX holds more of them in zips.
    return name.startswith(".") or name == "__MACOSX"


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
