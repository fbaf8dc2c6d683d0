"""Folders and archives in, datasets out: the one ingest path the CLI and the pages share."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core import images
from core.store import IngestStats, Store


def ingest_path(store: Store, dataset: str, path: str | Path, *,
                progress: Callable[[int, int], None] | None = None,
                thumbnails: bool = True) -> tuple[images.ScanResult, IngestStats]:
    """Scan ``path`` (folder or .zip) into ``dataset``; unchanged files are not re-read."""

    def known(root: str) -> dict[str, images.ImageRecord]:
        if dataset not in store.dataset_names():
            return {}
        frame = store.known_files(dataset, root)
        return {
            row.rel_path: images.ImageRecord(
                content_hash=row.content_hash, rel_path=row.rel_path, labels=tuple(row.labels),
                width=int(row.width), height=int(row.height), n_bytes=int(row.n_bytes), format=row.format,
                mtime=float(row.mtime), caption=row.caption,
            )
            for row in frame.itertuples(index=False)
        }

    scan = images.scan(path, progress=progress, cache_dir=store.cache_dir if thumbnails else None, known=known)
    return scan, store.ingest(dataset, scan.root, scan.records, scan.skipped)
