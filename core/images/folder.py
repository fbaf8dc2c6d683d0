"""A folder of images as a dataset source: walked once, read file by file."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from core.images.listing import (
    MAX_FILE_BYTES,
    Listing,
    NotReadable,
    is_ignored_name,
    is_relevant_suffix,
    listing_with_captions,
    too_big,
)
from core.images.records import SkippedFile

_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")


class FolderSource:
    label_skip = 0  # every parent folder under the root is a label

    def __init__(self, root: Path) -> None:
        self.root = root

    def listing(self) -> Listing:
        skipped: list[SkippedFile] = []
        rel_paths = list(self._walk(skipped))
        return listing_with_captions(rel_paths, skipped)

    def _walk(self, skipped: list[SkippedFile]) -> Iterator[str]:
        def report(err: OSError) -> None:
            rel = self._rel(Path(err.filename)) if err.filename else "."
            skipped.append(SkippedFile(rel, f"cannot list folder: {err.strerror or err}"))

        # Linked folders are followed (datasets are often assembled from symlinks), except a
        # link back to an ancestor, which would loop forever.
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=report, followlinks=True):
            dirnames[:] = [d for d in sorted(dirnames) if not is_ignored_name(d) and not _is_loop(dirpath, d)]
            for name in filenames:
                if is_ignored_name(name) or not is_relevant_suffix(name):
                    continue
                yield self._rel(Path(dirpath) / name)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def stat(self, rel_path: str) -> tuple[int, float]:
        info = os.stat(self.root / _checked_rel_path(rel_path))
        return info.st_size, info.st_mtime

    def read(self, rel_path: str) -> tuple[bytes, float]:
        path = self.root / _checked_rel_path(rel_path)
        # Checked before open(): opening a FIFO named *.png blocks until someone writes to it.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise NotReadable("not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise NotReadable(too_big(info.st_size))
        with open(path, "rb") as fh:
            return fh.read(), info.st_mtime


def _is_loop(parent: str, name: str) -> bool:
    real_parent = os.path.realpath(parent)
    real_child = os.path.realpath(os.path.join(parent, name))
    return real_parent == real_child or real_parent.startswith(real_child.rstrip(os.sep) + os.sep)


def _checked_rel_path(rel_path: str) -> str:
    # Not fsutil.has_unsafe_parts: that also refuses a leading backslash, which on POSIX is a
    # legal file name a folder scan may have recorded; this check keeps such files readable.
    parts = re.split(r"[\\/]", rel_path)  # backslash too: it is a separator on Windows
    if not rel_path or rel_path.startswith("/") or _DRIVE_PREFIX.match(rel_path) or ".." in parts:
        raise NotReadable(f"path {rel_path!r} is not inside the dataset root")
    return rel_path
