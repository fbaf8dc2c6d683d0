"""Plain values the store hands out: what an ingest did, which image still needs a vector."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestStats:
    dataset: str
    added: int  # paths new to the dataset
    duplicates: int  # of those, paths whose bytes the dataset already had under another path
    unchanged: int  # paths already recorded with the same content
    updated: int  # paths already recorded whose content changed
    removed: int  # paths recorded from this source earlier that are gone now


@dataclass(frozen=True)
class PendingImage:
    """One image that still needs an embedding, with one place to read its bytes from."""

    content_hash: str
    source: str
    rel_path: str
