"""Parquet shards: vectors a distributed run computed, kept on disk until the store holds them.

A shard is one Parquet file of (content_hash, vector) rows, its encoder key in the file's
metadata, written atomically under ``<cache>/ray-shards/<run id>/``. The driver writes a shard,
hands it to :meth:`Store.write_embeddings` (which never rewrites an existing (key, hash) row) and
then deletes it. A shard still on disk is work that was computed but may not be in the store
(the driver died between the two steps): the next run of the same key ingests it before asking
the cluster for anything, so no vector is computed twice and none is written twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.fsutil import atomic_path

if TYPE_CHECKING:
    from core.store import Store

SHARDS_FOLDER = "ray-shards"
SHARD_SUFFIX = ".parquet"
MANIFEST = "run.json"  # in each run's folder: which run, dataset and key its shards belong to
_KEY_FIELD = b"replens.encoder_key"


@dataclass(frozen=True)
class Shard:
    path: Path
    encoder_key: str
    n_rows: int


def shards_root(cache_dir: str | Path) -> Path:
    """Where every run's shards live: ``<cache>/ray-shards``."""
    return Path(cache_dir) / SHARDS_FOLDER


def write_shard(folder: Path, index: int, encoder_key: str, hashes: Sequence[str], vectors: np.ndarray) -> Shard:
    """Write ``vectors`` (one row per hash) as shard number ``index`` of a run's ``folder``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(hashes):
        raise ValueError(f"vectors shape {vectors.shape} does not match {len(hashes)} hashes")
    dim = vectors.shape[1]
    table = pa.table(
        {
            "content_hash": pa.array(list(hashes), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim),
        }
    ).replace_schema_metadata({_KEY_FIELD: encoder_key.encode()})
    target = folder / f"shard-{index:06d}{SHARD_SUFFIX}"
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return Shard(target, encoder_key, len(hashes))


def read_shard(path: Path) -> tuple[str, list[str], np.ndarray]:
    """(encoder key, hashes, float32 matrix) of one shard."""
    table = pq.read_table(path)
    key = (table.schema.metadata or {}).get(_KEY_FIELD, b"").decode()
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), dim)
    return key, table.column("content_hash").to_pylist(), vectors


def shard_key(path: Path) -> str:
    """The encoder key a shard holds vectors of (read from its metadata, not its rows)."""
    metadata = pq.read_schema(path).metadata or {}
    return metadata.get(_KEY_FIELD, b"").decode()


def leftover_shards(cache_dir: str | Path, encoder_key: str) -> list[Path]:
    """Shards of ``encoder_key`` that earlier runs wrote and did not ingest, oldest run first."""
    root = shards_root(cache_dir)
    if not root.is_dir():
        return []
    found = [p for p in sorted(root.glob(f"*/shard-*{SHARD_SUFFIX}")) if shard_key(p) == encoder_key]
    return sorted(found, key=lambda p: (p.parent.stat().st_mtime, p.name))


def ingest_shard(store: Store, path: Path) -> int:
    """Write one shard's vectors into ``store`` and delete it; returns the rows new to the store.

    Rows the store already holds are left as they are (``write_embeddings`` ignores them), so
    ingesting a shard twice, or one whose vectors another run stored meanwhile, writes nothing.
    """
    key, hashes, vectors = read_shard(path)
    written = store.write_embeddings(key, hashes, vectors)
    path.unlink()
    return written


def ingest_leftovers(store: Store, encoder_key: str) -> int:
    """Ingest every shard of ``encoder_key`` earlier runs left on disk; returns the rows new to the store."""
    written = 0
    for path in leftover_shards(store.cache_dir, encoder_key):
        written += ingest_shard(store, path)
        remove_if_empty(path.parent)
    return written


def remove_if_empty(folder: Path) -> None:
    """Drop a run's shard folder once nothing is left in it (its manifest aside)."""
    if not folder.is_dir():
        return
    rest = [p for p in folder.iterdir() if p.name != MANIFEST]
    if not rest:
        (folder / MANIFEST).unlink(missing_ok=True)
        folder.rmdir()


def write_manifest(folder: Path, payload: dict[str, object]) -> None:
    """What a shard folder belongs to (run, dataset, key), for whoever finds it on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
