"""File-system habits written once: atomic writes, safe relative paths from untrusted names, and
writes that fail for want of space or permission turned into typed errors.

A write that cannot finish (a full disk, a read-only mount) raises ``StorageFullError`` or
``StorageNotWritableError`` and leaves what was there before: a single file is written beside its
target and moved over it in one step (:func:`atomic_path`); a set of files is written into a fresh
folder that is moved into place only when every file is written (:func:`staged_folder`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import StorageError, StorageFullError, StorageNotWritableError

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f<>:\"|?*\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}
# How libraries that do not raise OSError (DuckDB) word the same causes.
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")
_READ_ONLY_TEXT = "Read-only file system"
SPACE_MARGIN_BYTES = 1 << 20  # left free after a write: the database and thumbnails need room too


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one step.

    Readers see the old file or the new one, never half of one; on an error the temporary
    file is removed and ``target`` is untouched. A full disk or a read-only folder raises
    ``StorageFullError`` / ``StorageNotWritableError``.
    """
    out = Path(target)
    with storage_errors(out.parent, out.name):
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with storage_errors(out.parent, out.name):
            yield tmp
            os.replace(tmp, out)
    except BaseException:
        if os.path.lexists(tmp):  # unlink() of a missing file fails on a read-only mount, hiding the cause
            tmp.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


@contextmanager
def staged_folder(dest: Path, what: str) -> Iterator[Path]:
    """Yield a fresh empty folder beside ``dest`` to write a set of files into; when the block ends
    without error its files move into ``dest`` (all of them or, on an error, none), and the folder is
    removed whatever happens. So a write cut short (an error, a full disk) leaves ``dest`` as it was.

    ``what`` names the files in an error message ("the uploaded files").
    """
    with storage_errors(dest.parent, what):
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".staging", dir=dest.parent))
    try:
        with storage_errors(dest.parent, what):
            yield staging
            move_into(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def move_into(src: Path, dest: Path) -> None:
    """Move every file under ``src`` to the same place under ``dest``, replacing files of the same
    name; on an error every file moved so far goes back (and replaced ones are restored)."""
    if not dest.exists():
        os.rename(src, dest)  # one step: nothing of it is visible before everything is
        return
    files = sorted(p for p in src.rglob("*") if p.is_file() or p.is_symlink())
    backups = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".replaced", dir=dest.parent))
    done: list[tuple[Path, Path | None]] = []  # (target, where the file it replaced is kept)
    made: list[Path] = []  # folders created under dest, to remove again on an error
    try:
        for path in files:
            rel = path.relative_to(src)
            target = dest / rel
            made += _missing_parents(target, dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            backup = None
            if target.is_file():
                backup = backups / rel
                backup.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, backup)
            done.append((target, backup))
            os.replace(path, target)
    except BaseException:
        _undo_moves(done, made)
        raise
    finally:
        shutil.rmtree(backups)


def _missing_parents(target: Path, root: Path) -> list[Path]:
    missing = []
    for parent in target.parents:
        if parent == root or parent.exists():
            break
        missing.append(parent)
    return list(reversed(missing))  # outermost first, as mkdir creates them


def _undo_moves(done: list[tuple[Path, Path | None]], made: list[Path]) -> None:
    for target, backup in reversed(done):
        if os.path.lexists(target):
            target.unlink()
        if backup is not None:
            os.replace(backup, target)
    for folder in reversed(made):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


@contextmanager
def storage_errors(folder: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn an OSError for want of space (ENOSPC, EDQUOT) or of write access (EROFS; EACCES or
    EPERM on ``folder``) raised inside the block into ``StorageFullError`` / ``StorageNotWritableError``."""
    try:
        yield
    except OSError as exc:
        typed = storage_error(exc, folder, what)
        if typed is None:
            raise
        raise typed from exc


def storage_error(exc: BaseException, folder: str | os.PathLike[str], what: str) -> StorageError | None:
    """The typed error for a write to ``folder`` that failed for want of space or write access, else None.

    Reads the errno of an OSError, or the message of an error from a library that words it
    (DuckDB: "Could not write file …: No space left on device"). A permission error counts only
    when it names a path inside ``folder`` (not a file being read from elsewhere).
    """
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc)
    if code in _FULL_ERRNOS or any(t in text for t in _FULL_TEXTS):
        return full_disk_error(folder, what)
    if code == errno.EROFS or _READ_ONLY_TEXT in text:
        return not_writable_error(folder, what, "it is on a read-only file system")
    if code in _PERMISSION_ERRNOS and isinstance(exc, OSError) and _names_path_in(exc, Path(folder)):
        return not_writable_error(folder, what, "RepLens has no permission to write there")
    return None


def _names_path_in(exc: OSError, folder: Path) -> bool:
    named = exc.filename
    if named is None:
        return True
    path = Path(os.fsdecode(named)).absolute()
    root = folder.absolute()
    return path == root or root in path.parents


def full_disk_error(
    folder: str | os.PathLike[str], what: str, needed: int | None = None, free: int | None = None
) -> StorageFullError:
    sizes = ""
    if needed is not None and free is not None:
        sizes = f": it needs {human_bytes(needed)} and {human_bytes(free)} is free"
    return StorageFullError(
        f"Not enough disk space to write {what} in {folder}{sizes}. Nothing was changed. Free some space on "
        "that disk, or point REPLENS_CACHE / REPLENS_DB at a folder on a bigger one.",
        page_message=f"This server is out of disk space for {what}{sizes}. Nothing was saved or changed; "
        "ask whoever runs RepLens to free some space, then try again.",
    )


def not_writable_error(folder: str | os.PathLike[str], what: str, why: str) -> StorageNotWritableError:
    return StorageNotWritableError(
        f"Cannot write {what} in {folder}: {why}. Nothing was changed. Make the folder writable, or point "
        "REPLENS_CACHE / REPLENS_DB at a writable folder.",
        page_message=f"This server cannot save {what} right now: its storage is read-only or not writable. "
        "Nothing was saved or changed; ask whoever runs RepLens to make its cache folder writable.",
    )


def check_free_space(folder: str | os.PathLike[str], needed: int, what: str) -> None:
    """Refuse, before anything is written, a write of ``needed`` bytes to ``folder`` (or the
    nearest folder above it that exists) that would leave less than ``SPACE_MARGIN_BYTES`` free."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed + SPACE_MARGIN_BYTES > free:
        raise full_disk_error(folder, what, needed + SPACE_MARGIN_BYTES, free)


def human_bytes(n: int) -> str:
    """``n`` bytes for a person: "512 bytes", "3.4 MB", "2.0 GB" (1 MB = 1024 * 1024 bytes, as Streamlit counts)."""
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KB"
    for bigger in ("MB", "GB", "TB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def has_unsafe_parts(name: str) -> bool:
    """True for a name that could leave the folder it is joined under: absolute, drive, ``..``."""
    unified = name.replace("\\", "/")
    return unified.startswith("/") or bool(_DRIVE.match(unified)) or ".." in unified.split("/")


def safe_relative_path(name: str) -> str | None:
    """An untrusted path made safe to join under a folder, or None to refuse it.

    Refused: absolute paths, drive letters, ``..`` parts, hidden files and ``__MACOSX``; control
    and reserved characters become ``_`` and each part is cut to 200 characters.
    """
    unified = name.replace("\\", "/")
    if has_unsafe_parts(unified):
        return None
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return "/".join(_UNSAFE_CHARS.sub("_", p)[:200] for p in parts)


def is_within(root: Path, target: Path) -> bool:
    """True when ``target`` resolves to a path strictly inside ``root`` (links followed)."""
    return root.resolve() in target.resolve().parents
