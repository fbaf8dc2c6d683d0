"""Folders and archives in, datasets out: the one ingest path the CLI and the pages share, and a
dataset's life after it: rename, delete, and reclaiming what no dataset uses any more."""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import images
from core.errors import DatasetExistsError, InvalidInputError, NoImagesFoundError
from core.names import check_dataset_name
from core.store import IngestStats, Store
from core.uploads import (
    datasets_using,
    existing_upload_dir,
    remove_upload_folder,
    upload_dir,
    upload_folders_of,
    uploads_root,
)

__all__ = [
    "DatasetExistsError",
    "GcReport",
    "NoImagesFoundError",
    "check_dataset_name",
    "collect_garbage",
    "delete_dataset",
    "ingest_path",
    "is_new_source",
    "rename_dataset",
]

# A folder such as /etc or a home directory can hold very many files; counting stops here.
_MAX_FILES_COUNTED = 100_000


def ingest_path(
    store: Store,
    dataset: str,
    path: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    thumbnails: bool = True,
    add: bool = False,
) -> tuple[images.ScanResult, IngestStats]:
    """Scan ``path`` (folder or .zip) into ``dataset``; unchanged files are not re-read.

    Re-scanning a source the dataset already holds is an incremental rescan. A different source
    joins an existing dataset only with ``add=True`` (else DatasetExistsError, before any file is
    read). A source with no readable image raises NoImagesFoundError and stores nothing.
    """
    dataset = check_dataset_name(dataset)
    exists = dataset in store.dataset_names()
    if exists and not add and is_new_source(store, dataset, path):
        raise DatasetExistsError(dataset, _source_key(path), store.dataset_sources(dataset))

    def known(root: str) -> dict[str, images.ImageRecord]:
        if not exists:
            return {}
        rows = store.known_files(dataset, root).to_dict(orient="records")
        return {str(row["rel_path"]): _stored_record(row) for row in rows}

    scan = images.scan(path, progress=progress, cache_dir=store.cache_dir if thumbnails else None, known=known)
    if not scan.records:
        raise _no_images(Path(scan.root), scan.skipped)
    return scan, store.ingest(dataset, scan.root, scan.records, scan.skipped)


def is_new_source(store: Store, dataset: str, path: str | Path) -> bool:
    """True when ``dataset`` exists, holds images, and ``path`` is not one of its sources (so
    scanning it would add a second source rather than rescan one)."""
    if dataset not in store.dataset_names():
        return False
    sources = store.dataset_sources(dataset)
    return bool(sources) and _source_key(path) not in sources


def _source_key(path: str | Path) -> str:
    """``path`` as the store records a source (``core.images`` resolves the root it scans)."""
    root = Path(path).expanduser()
    return str(root.resolve()) if root.exists() else str(root)


def _stored_record(row: Mapping[Hashable, Any]) -> images.ImageRecord:
    """The record the store holds for a file, so an unchanged file is not read again."""
    caption = row["caption"]
    return images.ImageRecord(
        content_hash=str(row["content_hash"]),
        rel_path=str(row["rel_path"]),
        labels=tuple(row["labels"]),
        width=int(row["width"]),
        height=int(row["height"]),
        n_bytes=int(row["n_bytes"]),
        format=str(row["format"]),
        mtime=float(row["mtime"]),
        caption=None if caption is None else str(caption),
    )


def _no_images(root: Path, skipped: list[images.SkippedFile]) -> NoImagesFoundError:
    """What a source without images holds instead, as an error that says what to do.

    The message names no path (the page shows it for uploads kept in RepLens's cache)."""
    n_files, extensions, complete = _count_files(root)
    shown = ", ".join(f"{ext} ({n})" for ext, n in extensions.most_common(8))
    more = " …" if len(extensions) > 8 else ""
    among = f"{n_files}{'' if complete else '+'} file{'s' if n_files != 1 else ''}"
    unreadable = [s for s in skipped if Path(s.rel_path).suffix.lower() in images.SUPPORTED_EXTENSIONS]
    if unreadable:
        examples = "; ".join(f"{s.rel_path}: {s.reason}" for s in unreadable[:3])
        found = f"0 readable images among {among}: {len(unreadable)} image file(s) could not be read ({examples})"
    else:
        found = f"0 images among {among}"
    seen = f"; extensions seen: {shown}{more}" if shown else ""
    readable = ", ".join(sorted(images.SUPPORTED_EXTENSIONS))
    return NoImagesFoundError(
        f"No images found: {found}{seen}. RepLens reads {readable} files (sub-folders become labels). "
        "Nothing was stored; pick the folder or .zip that holds the images.",
        n_files,
        extensions,
    )


def _count_files(root: Path) -> tuple[int, Counter[str], bool]:
    """(files, files per extension ("(none)" for no extension), whether all were counted)."""
    names: list[str] = []
    complete = True
    if root.is_file():
        try:
            with zipfile.ZipFile(root) as archive:
                names = [i.filename for i in archive.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError):
            names = []
    else:
        for _, _, filenames in os.walk(root):  # unreadable folders are passed over
            names.extend(filenames)
            if len(names) >= _MAX_FILES_COUNTED:
                complete = False
                break
    counts = Counter((Path(n).suffix.lower() or "(none)") for n in names)
    return len(names), counts, complete


# ---------------------------------------------------------------------------------------
# Rename, delete, collect garbage


def rename_dataset(store: Store, old: str, new: str) -> str:
    """Rename dataset ``old`` to ``new`` (checked with ``check_dataset_name``); -> the new name.

    Its cluster runs, projections and run records follow it; its upload folder moves to the new
    name's folder when that one is free. Snapshots keep the name they were saved under.
    """
    store.require_dataset(old)
    new = check_dataset_name(new)
    if new == old:
        return new
    if new in store.dataset_names():
        raise InvalidInputError(f"A dataset named {new!r} already exists; pick another name or delete that one first.")
    old_dir = existing_upload_dir(store, old)
    new_dir = uploads_root(store) / upload_dir(store, new).name
    sources = store.dataset_sources(old)
    movable = old_dir is not None and old_dir != new_dir and not new_dir.exists()
    if old_dir is None or not movable or datasets_using(store, old_dir, besides=old):
        store.rename_dataset(old, new)
        return new
    moved = {
        s: str(new_dir / Path(s).relative_to(old_dir))
        for s in sources
        if Path(s) == old_dir or old_dir in Path(s).parents
    }
    os.rename(old_dir, new_dir)
    try:
        store.rename_dataset(old, new, moved)
    except BaseException:
        os.rename(new_dir, old_dir)
        raise
    return new


def delete_dataset(store: Store, dataset: str) -> dict[str, int]:
    """Remove ``dataset`` with its cluster runs, projections, run records and upload folder.

    Snapshots stay: they are self-contained copies. Embeddings and thumbnails stay until
    :func:`collect_garbage` (another dataset may hold the same images). -> rows removed per
    kind, plus ``upload_folders`` removed.
    """
    folders = upload_folders_of(store, store.dataset_sources(dataset))
    own = existing_upload_dir(store, dataset)
    if own is not None:
        folders.add(own)
    counts = store.delete_dataset(dataset)
    counts["upload_folders"] = sum(remove_upload_folder(store, folder) for folder in sorted(folders))
    return counts


@dataclass
class GcReport:
    """What :func:`collect_garbage` freed (or, with ``dry_run``, would free)."""

    vectors: dict[str, int] = field(default_factory=dict)  # encoder key -> embeddings removed
    vector_bytes: int = 0  # float32 values x 4
    image_records: int = 0
    thumbnails: int = 0
    thumbnail_bytes: int = 0
    dry_run: bool = False

    @property
    def n_vectors(self) -> int:
        return sum(self.vectors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "vectors": self.n_vectors,
            "vectors_by_encoder": dict(self.vectors),
            "vector_bytes": self.vector_bytes,
            "image_records": self.image_records,
            "thumbnails": self.thumbnails,
            "thumbnail_bytes": self.thumbnail_bytes,
        }


def collect_garbage(store: Store, *, dry_run: bool = False) -> GcReport:
    """Reclaim the embeddings, image records and cached thumbnails of images no dataset holds.

    Thumbnails of images a snapshot shows are kept (its gallery and exports read them). Run it
    when no scan is in progress: a scan writes thumbnails before its images are stored.
    """
    freed, n_images = store.collect_unused(dry_run=dry_run)
    report = GcReport(
        vectors={str(k): int(n) for k, n in zip(freed["encoder_key"], freed["n_vectors"])},
        vector_bytes=int(freed["n_values"].sum()) * 4,
        image_records=n_images,
        dry_run=dry_run,
    )
    keep = store.referenced_hashes()
    thumbs = Path(store.cache_dir) / "thumbs"
    for path in sorted(thumbs.glob("*/*.webp")) if thumbs.is_dir() else []:
        if path.stem in keep:
            continue
        try:
            size = path.stat().st_size
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue
        report.thumbnails += 1
        report.thumbnail_bytes += size
    return report
