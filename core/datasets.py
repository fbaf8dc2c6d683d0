"""Folders and archives in, datasets out: the one ingest path the CLI and the pages share."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

from core import images
from core.store import IngestStats, Store


def ingest_path(
    store: Store,
    dataset: str,
    path: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    thumbnails: bool = True,
) -> tuple[images.ScanResult, IngestStats]:
    """Scan ``path`` (folder or .zip) into ``dataset``; unchanged files are not re-read."""

    def known(root: str) -> dict[str, images.ImageRecord]:
        if dataset not in store.dataset_names():
            return {}
        rows = store.known_files(dataset, root).to_dict(orient="records")
        return {str(row["rel_path"]): _stored_record(row) for row in rows}

    scan = images.scan(path, progress=progress, cache_dir=store.cache_dir if thumbnails else None, known=known)
    return scan, store.ingest(dataset, scan.root, scan.records, scan.skipped)


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
