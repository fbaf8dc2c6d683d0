"""A folder of images as a dataset source: walked once, read file by file.

The walk never leaves the root and never loops: a symbolic link is followed only when it
resolves inside the root, a linked folder only when it is not a folder the walk is already
inside, and each real folder is entered through a link at most once (links cannot multiply the
work). Whatever is passed over that could hold images is reported as a ``SkippedFile`` with why.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path, PurePosixPath

from core.images.listing import (
    MAX_FILE_BYTES,
    Listing,
    NotReadable,
    is_archive_name,
    is_ignored_name,
    is_relevant_suffix,
    listing_with_captions,
    nested_archive_reason,
    read_reason,
    too_big,
)
from core.images.records import SkippedFile

_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")
# O_NONBLOCK: a FIFO swapped in after the type check must not block the open.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)

OUTSIDE_FILE = "symbolic link to a file outside the dataset root; not read"
OUTSIDE_FOLDER = "symbolic link to a folder outside the dataset root; not followed"
LINK_LOOP = "symbolic link loop: it points back to a folder that contains it; not followed"
ENDLESS_LINK = "symbolic link loop: following it never reaches a file or folder; not followed"
BROKEN_LINK = "broken symbolic link: its target does not exist"


class FolderSource:
    label_skip = 0  # every parent folder under the root is a label

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = os.path.realpath(root)
        self._real_dirs: dict[str, str] = {"": self._real_root}  # rel folder -> real path, for reads

    def listing(self) -> Listing:
        walk = _Walk(self.root, self._real_root)
        return listing_with_captions(walk.run(), walk.skipped)

    def stat(self, rel_path: str) -> tuple[int, float]:
        info = os.stat(self._real_path(rel_path))
        return info.st_size, info.st_mtime

    def read(self, rel_path: str) -> tuple[bytes, float]:
        path = self._real_path(rel_path)
        # Checked before open(): opening a FIFO named *.png blocks, opening a device may act.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise NotReadable("not a regular file")
        with os.fdopen(os.open(path, _OPEN_FLAGS), "rb") as fh:
            info = os.fstat(fh.fileno())  # the file opened, not the one stat'ed: it may have been swapped
            if not stat.S_ISREG(info.st_mode):
                raise NotReadable("not a regular file")
            if info.st_size > MAX_FILE_BYTES:
                raise NotReadable(too_big(info.st_size))
            return fh.read(), info.st_mtime

    def _real_path(self, rel_path: str) -> str:
        """Where ``rel_path`` really is, refused unless that is inside the root (links resolved)."""
        parent, _, name = _checked_rel_path(rel_path).rpartition("/")
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:  # one realpath per folder, not per file: rescans stat every file
            real_parent = self._real_dirs[parent] = os.path.realpath(os.path.join(self.root, parent))
        path = os.path.join(real_parent, name)
        real = os.path.realpath(path) if os.path.islink(path) else path
        if not _is_inside(real, self._real_root):
            raise NotReadable(OUTSIDE_FILE)
        return real


# A folder still to list: its path, its path relative to the root, and the real paths of the
# folders it is inside (itself included), which is what a link must not point back to.
_Pending = tuple[str, str, tuple[str, ...]]


class _Walk:
    """One walk of a folder: the relevant files found, and what was passed over with why."""

    def __init__(self, root: Path, real_root: str) -> None:
        self.root, self.real_root = root, real_root
        self.found: list[str] = []
        self.skipped: list[SkippedFile] = []
        self._entered_by_link: dict[str, str] = {}  # real folder -> the link path that entered it

    def run(self) -> list[str]:
        stack: list[_Pending] = [(str(self.root), "", (self.real_root,))]
        while stack:
            path, rel, inside = stack.pop()
            stack.extend(reversed(self._visit(path, rel, inside)))  # depth first, in name order
        return self.found

    def _visit(self, path: str, rel: str, inside: tuple[str, ...]) -> list[_Pending]:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skipped.append(SkippedFile(rel or ".", f"cannot list folder: {read_reason(exc)}"))
            return []
        folders: list[_Pending] = []
        for entry in entries:
            if is_ignored_name(entry.name):
                continue
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                folders.extend(self._link(entry, child_rel, inside))
            elif _is_dir(entry):
                if _bad_name(entry.name):
                    self._skip(child_rel, "folder name is not valid UTF-8; its files were not scanned (rename it)")
                else:
                    folders.append((entry.path, child_rel, (*inside, os.path.join(inside[-1], entry.name))))
            else:
                self._file(child_rel)
        return folders

    def _link(self, entry: os.DirEntry[str], rel: str, inside: tuple[str, ...]) -> list[_Pending]:
        try:
            is_folder = stat.S_ISDIR(os.stat(entry.path).st_mode)
        except OSError as exc:
            if _worth_reporting(entry.name) or not PurePosixPath(entry.name).suffix:  # maybe a folder
                self._skip(rel, ENDLESS_LINK if exc.errno == errno.ELOOP else BROKEN_LINK)
            return []
        target = os.path.realpath(entry.path)
        if not is_folder:
            if not _is_inside(target, self.real_root):
                if _worth_reporting(entry.name):
                    self._skip(rel, OUTSIDE_FILE)
            else:
                self._file(rel)
            return []
        if not (target == self.real_root or _is_inside(target, self.real_root)):
            self._skip(rel, OUTSIDE_FOLDER)
        elif target in inside:
            self._skip(rel, LINK_LOOP)
        elif target in self._entered_by_link:
            first = self._entered_by_link[target]
            self._skip(rel, f"symbolic link to a folder already scanned through the link {first!r}; not followed twice")
        elif _bad_name(entry.name):
            self._skip(rel, "folder name is not valid UTF-8; its files were not scanned (rename it)")
        else:
            self._entered_by_link[target] = rel
            return [(entry.path, rel, (*inside, target))]
        return []

    def _file(self, rel: str) -> None:
        name = rel.rpartition("/")[2]
        if not _worth_reporting(name):
            return
        if _bad_name(name):
            self._skip(rel, "file name is not valid UTF-8; rename the file")
        elif is_archive_name(name):
            self._skip(rel, nested_archive_reason(name))
        else:
            self.found.append(rel)

    def _skip(self, rel: str, reason: str) -> None:
        self.skipped.append(SkippedFile(_printable(rel), reason))


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False  # vanished since listed; reading it as a file then says so


def _worth_reporting(name: str) -> bool:
    """A file that could be an image, a caption or an archive of them: anything else passes unmentioned."""
    return is_relevant_suffix(name) or is_archive_name(name)


def _bad_name(name: str) -> bool:
    """A name that is not valid UTF-8 (os gives it back with surrogates), which no store can keep."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _printable(rel: str) -> str:
    # Undecodable bytes shown as \xNN, so the skipped entry itself can be stored and displayed.
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_inside(real: str, real_root: str) -> bool:
    return real.startswith(real_root.rstrip(os.sep) + os.sep)


def _checked_rel_path(rel_path: str) -> str:
    # Not fsutil.has_unsafe_parts: that also refuses a leading backslash, which on POSIX is a
    # legal file name a folder scan may have recorded; this check keeps such files readable.
    parts = re.split(r"[\\/]", rel_path)  # backslash too: it is a separator on Windows
    if not rel_path or rel_path.startswith("/") or _DRIVE_PREFIX.match(rel_path) or ".." in parts:
        raise NotReadable(f"path {rel_path!r} is not inside the dataset root")
    return rel_path
