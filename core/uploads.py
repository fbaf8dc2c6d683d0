"""Files a browser uploads, saved safely under RepLens's cache.

Every name comes from an untrusted client: it is made safe with ``core.fsutil.safe_relative_path``
(absolute paths, drive letters, ``..``, hidden files refused; control characters replaced) and
nothing is ever written outside the dataset's upload folder.

Sizes are checked before a byte is written: each file of a folder against the per-file limit, the
whole upload against the per-upload limit (``core.config``), and the cache's free disk space. The
files are written into a staging folder that moves into place only once all are written, so an
upload that fails half-way (an error, a full disk) leaves no file behind.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from core import config, images
from core.errors import InvalidInputError, UploadTooLargeError
from core.fsutil import atomic_write_bytes, check_free_space, human_bytes, is_within, safe_relative_path, staged_folder
from core.names import check_dataset_name
from core.store import Store

# File types an upload may hold: images, and .txt captions beside them.
UPLOAD_TYPES = sorted({ext.lstrip(".") for ext in images.SUPPORTED_EXTENSIONS} | {"txt"})


class Upload(Protocol):
    """One uploaded file: Streamlit's ``UploadedFile`` is one, :class:`BytesUpload` another."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    def getvalue(self) -> bytes: ...


@dataclass(frozen=True)
class BytesUpload:
    """An upload already in memory, as (name, bytes)."""

    name: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def getvalue(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class UploadLimits:
    """The largest file of a folder upload, and the most one upload may bring (bytes)."""

    file_bytes: int
    upload_bytes: int

    @classmethod
    def from_config(cls) -> UploadLimits:
        return cls(config.max_file_mb() * config.MB, config.max_upload_mb() * config.MB)


def as_uploads(files: Iterable[Upload | tuple[str, bytes]]) -> list[Upload]:
    """Uploaded files, given as uploads or as (name, bytes) pairs."""
    return [BytesUpload(*f) if isinstance(f, tuple) else f for f in files]


def check_upload_sizes(files: Sequence[Upload], limits: UploadLimits | None = None) -> int:
    """Refuse a folder upload with a file over the per-file limit, or over the per-upload limit in
    all, before anything is read or written; -> its size in bytes."""
    limits = limits or UploadLimits.from_config()
    for upload in files:
        if upload.size > limits.file_bytes:
            raise _too_large(upload.name, repr(upload.name), upload.size, limits.file_bytes, "each file")
    total = sum(upload.size for upload in files)
    if total > limits.upload_bytes:
        raise _too_large("", f"these {len(files):,} files", total, limits.upload_bytes, "one upload")
    return total


def check_single_upload(name: str, size: int, limits: UploadLimits | None = None) -> None:
    """Refuse one file that is a whole upload (a .zip, a weights file, a .replens) over the per-upload limit."""
    limits = limits or UploadLimits.from_config()
    if size > limits.upload_bytes:
        shown = PurePosixPath(name.replace("\\", "/")).name
        raise _too_large(shown, repr(shown), size, limits.upload_bytes, "one upload")


def _too_large(name: str, shown: str, size: int, limit: int, per: str) -> UploadTooLargeError:
    """``name``: the file (empty for a whole folder), ``shown``: how messages name it, ``per``: whose limit."""
    setting = "REPLENS_MAX_FILE_MB" if per == "each file" else "REPLENS_MAX_UPLOAD_MB"
    return UploadTooLargeError(
        f"{shown} is {human_bytes(size)}, over the limit of {human_bytes(limit)} for {per}; nothing was saved. "
        f"Upload less at a time, or raise {setting} (and Streamlit's server.maxUploadSize) for this server.",
        page_message=f"{shown} is {human_bytes(size)}, over this server's limit of {human_bytes(limit)} for {per}. "
        "Nothing was saved. Upload fewer or smaller files at a time, or ask whoever runs RepLens to raise the limit.",
        name=name,
        size=size,
        limit=limit,
    )


def dataset_slug(name: str) -> str:
    """A folder name for a dataset's uploads; the name is checked first (``check_dataset_name``)."""
    slug = _slug(check_dataset_name(name))
    if not slug:
        raise InvalidInputError("Give the dataset a name with at least one letter or digit.")
    return slug


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip(".-")[:80]


def upload_dir(store: Store, dataset: str) -> Path:
    """Where ``dataset``'s uploaded files are kept: ``<cache>/uploads/<slug>``."""
    return store.cache_dir / "uploads" / dataset_slug(dataset)


def uploads_root(store: Store) -> Path:
    return (store.cache_dir / "uploads").resolve()


def existing_upload_dir(store: Store, dataset: str) -> Path | None:
    """``dataset``'s upload folder if it has one (also for a name stored before names were checked)."""
    slug = _slug(dataset)
    folder = uploads_root(store) / slug if slug else None
    return folder if folder is not None and folder.is_dir() else None


def upload_folders_of(store: Store, sources: Iterable[str]) -> set[Path]:
    """The upload folders (``<cache>/uploads/<slug>``) that hold any of ``sources``."""
    root = uploads_root(store)
    folders = set()
    for source in sources:
        path = Path(source)
        if root in path.parents:
            folders.add(root / path.relative_to(root).parts[0])
    return folders


def datasets_using(store: Store, folder: Path, *, besides: str | None = None) -> list[str]:
    """The datasets (other than ``besides``) with a source inside ``folder``."""
    folder = folder.resolve()
    users = []
    for name in store.dataset_names():
        if name != besides and any(folder == Path(s) or folder in Path(s).parents for s in store.dataset_sources(name)):
            users.append(name)
    return users


def claim_upload_dir(store: Store, dataset: str) -> Path:
    """``upload_dir(store, dataset)``, refused when another dataset's files are kept there
    (two names can share a folder name: "my photos" and "my-photos")."""
    dest = upload_dir(store, dataset)
    others = datasets_using(store, dest, besides=dataset)
    if others:
        raise InvalidInputError(
            f"The name {dataset!r} would keep its uploads with those of dataset {others[0]!r}; "
            "pick a name that differs in its letters or digits."
        )
    return dest


def remove_upload_folder(store: Store, folder: Path, *, besides: str | None = None) -> bool:
    """Delete an upload folder (only one under ``<cache>/uploads``, and only when no dataset
    other than ``besides`` reads from it); -> whether it was removed."""
    folder = folder.resolve()
    if folder.parent != uploads_root(store) or not folder.is_dir() or datasets_using(store, folder, besides=besides):
        return False
    shutil.rmtree(folder)
    return True


def strip_common_root(paths: list[str]) -> list[str]:
    """Drop the picked folder's own name ("holiday/cats/a.jpg" -> "cats/a.jpg").

    A directory upload names every file under the folder the user picked; when that folder
    has sub-folders, they are the labels and the picked name would only shadow them. A flat
    folder keeps its name, so uploading "cats" then "dogs" gives two labels.
    """
    split = [PurePosixPath(p).parts for p in paths]
    nested = any(len(s) > 2 for s in split)
    if split and nested and all(len(s) > 1 for s in split) and len({s[0] for s in split}) == 1:
        return ["/".join(s[1:]) for s in split]
    return paths


def plan_files(dest: Path, files: Sequence[Upload]) -> tuple[list[tuple[str, Upload]], list[str]]:
    """Where each upload goes under ``dest`` (sub-folders kept, the picked folder's own name
    dropped); -> ((relative path, upload) to write, refused names)."""
    refused: list[str] = []
    kept: list[tuple[str, Upload]] = []
    for upload in files:
        rel = safe_relative_path(upload.name)
        if rel is None:
            refused.append(upload.name)
        else:
            kept.append((rel, upload))
    root = dest.resolve()
    planned = []
    for rel, (_, upload) in zip(strip_common_root([p for p, _ in kept]), kept):
        if is_within(root, root / rel):
            planned.append((rel, upload))
        else:
            refused.append(rel)  # belt and braces (e.g. a link inside dest): never write outside it
    return planned, refused


def save_files(dest: Path, files: Iterable[Upload | tuple[str, bytes]]) -> tuple[int, list[str]]:
    """Write uploads (or (name, bytes) pairs) under ``dest`` keeping sub-folders, each file
    atomically; -> (saved, refused names). :func:`save_upload` adds the limits and staging."""
    planned, refused = plan_files(dest, as_uploads(files))
    root = dest.resolve()
    for rel, upload in planned:
        atomic_write_bytes(root / rel, upload.getvalue())
    return len(planned), refused


def save_upload(
    store: Store,
    dataset: str,
    files: Iterable[Upload | tuple[str, bytes]],
    limits: UploadLimits | None = None,
) -> tuple[Path, list[str]]:
    """Save a folder upload under ``upload_dir(store, dataset)``; -> (that folder, refused names).

    Checked before anything is written: the names (InvalidInputError when not one is usable), the
    sizes (UploadTooLargeError) and the free disk space (StorageFullError). The files are written
    into a staging folder and moved into place together, so on any error none of them is kept.
    """
    dest = claim_upload_dir(store, dataset)
    uploads = as_uploads(files)
    check_upload_sizes(uploads, limits)
    planned, refused = plan_files(dest, uploads)
    if not planned:
        unsafe = f" Refused {len(refused)} unsafe file name(s): {', '.join(refused[:5])}." if refused else ""
        raise InvalidInputError(f"None of the uploaded files could be saved; upload image files.{unsafe}")
    check_free_space(store.cache_dir, sum(upload.size for _, upload in planned), "the uploaded files")
    with staged_folder(dest, "the uploaded files") as staging:
        for rel, upload in planned:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(upload.getvalue())
    return dest, refused


def save_archive(dest: Path, name: str, data: bytes, limits: UploadLimits | None = None) -> Path:
    """Keep an uploaded .zip under ``dest/archives/``; core scans archives without unpacking.

    The whole upload is the archive: it is held to the per-upload limit and the free disk space,
    and written through a staging folder (an error leaves no file and no new folder).
    """
    safe = safe_relative_path(PurePosixPath(name.replace("\\", "/")).name)
    if safe is None or not safe.lower().endswith(".zip"):
        raise InvalidInputError(f"{name!r} is not a .zip file name; upload a .zip archive.")
    check_single_upload(safe, len(data), limits)
    if not data.startswith(b"PK"):
        raise InvalidInputError(f"{name} is not a zip archive (wrong header); re-create it and upload again.")
    check_free_space(dest.parent, len(data), "the uploaded archive")
    with staged_folder(dest, "the uploaded archive") as staging:
        (staging / "archives").mkdir()
        (staging / "archives" / safe).write_bytes(data)
    return dest / "archives" / safe


def shown_sources(store: Store, sources: str) -> str:
    """Sources ("a; b") as a page visitor should see them: an upload is "uploaded (name)", not a
    path inside the server's cache; a server path the user typed is shown as typed."""
    root = str(uploads_root(store))
    shown = []
    for source in (p.strip() for p in sources.split(";") if p.strip()):
        resolved = str(Path(source).resolve())
        inside = resolved == root or resolved.startswith(root + "/")
        shown.append(f"uploaded ({Path(resolved).name})" if inside else source)
    return "; ".join(shown)
