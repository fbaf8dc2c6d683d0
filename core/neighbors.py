"""Nearest neighbours by cosine similarity: exact below a size threshold, usearch HNSW above.

Exact search is one matrix product of L2-normalised float32 vectors plus ``argpartition``;
at 100k x 384 that is a few milliseconds per query, so an approximate index only pays off
for large datasets (at 1M x 384 an exact query streams 1.5 GB: ~100 ms on a laptop core).
The ANN index is built once per (encoder key, scope) and saved under
``<cache>/indexes/<key>.usearch`` with a sidecar ``<key>.slots.npz`` that says which image
each index entry holds. Reopening it after images were added or removed updates it in
place: only the new vectors are added, the vanished ones removed. Candidates are re-scored
exactly, so every similarity shown is a true cosine, never an approximation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.arrays import check_k, l2_normalize
from core.errors import InvalidInputError
from core.fsutil import atomic_path

if TYPE_CHECKING:  # usearch loads a native library; only the ANN path needs it at run time
    from usearch.index import Index

log = logging.getLogger(__name__)

ANN_THRESHOLD = 200_000
# HNSW settings chosen by single-thread CPU time and recall@10 (candidates re-scored exactly) on
# 200k clustered 384-d vectors (a Gaussian mixture of 2,000 centres, as bench/scale_bench.py
# makes) and 20k random ones (no structure: the hardest case), usearch 2.26:
#   connectivity/expansion_add  build CPU s  clustered@512  random@512  random@1024
#   16/128                      48           0.999          0.85        0.96
#   32/128                      58           0.999          0.98        1.00
#   32/96                       43           0.995          0.97        1.00
#   48/64 (the earlier setting) 36           0.988          0.97        1.00
#   48/48                       18           0.970          0.95        0.99
# Build time follows expansion_add more than connectivity; clustered recall needs
# expansion_add >= 128, random vectors connectivity >= 32. expansion_search 512 costs ~1.5 ms a
# query at 200k (a few ms at 1M), far below an exact scan at that size (~100 ms). The graph stores
# int8-quantised unit vectors (4x less memory than float32, faster to build than float16); the
# quantisation error is made up for by re-scoring ANN_MIN_CANDIDATES candidates in float32.
ANN_DTYPE = "i8"
ANN_CONNECTIVITY = 32
ANN_EXPANSION_ADD = 128
ANN_EXPANSION_SEARCH = 512
ANN_MIN_CANDIDATES = 200
# usearch's multi-threaded insert races: it left 1-8 of 3,000 entries (6 of 60,000) unreachable
# by any search in our measurements, where one thread left none. Small batches (an update with
# a few new images, a small index) are added on one thread, which costs them little.
PARALLEL_ADD_FROM = 50_000
# A removed entry stays in the graph as a tombstone that searches still walk through; past
# this share of tombstones a full rebuild is cheaper than carrying them.
MAX_REMOVED_FRACTION = 0.25
# Part of the sidecar: a cached index built with other settings (or format) is rebuilt.
_SETTINGS = {
    "format": 1,
    "dtype": ANN_DTYPE,
    "connectivity": ANN_CONNECTIVITY,
    "expansion_add": ANN_EXPANSION_ADD,
}
# A vector re-imported under the same image hash moves its fingerprint by ~1/sqrt(dim); a
# recomputation of the same vector moves it by float32 rounding only.
_FINGERPRINT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Neighbors:
    """Top-k rows of the indexed matrix for one query, best first."""

    indices: np.ndarray  # int64 row numbers
    similarities: np.ndarray  # float32 cosine similarities
    # The indexed row the search was for (``search_row``: it comes first); None for a query
    # vector from outside the index (an uploaded image), where every rank is a neighbour.
    query_row: int | None = None

    def others(self) -> np.ndarray:
        """Similarities of the neighbours proper: the query image itself left out when it is indexed."""
        if self.query_row is None:
            return self.similarities
        return self.similarities[self.indices != self.query_row]


@dataclass(frozen=True)
class IndexBuild:
    """How a ``NeighborIndex``'s ANN index came to be (what a cache hit or an update cost)."""

    reused: int  # vectors taken from the cached index as they were
    added: int  # vectors added now (every vector on a full build)
    removed: int  # cached vectors dropped: their image left the set, or its vector changed
    reason: str  # "cached", "updated", or "built: <why the cache could not be used>"


def mean_similarity(found: Neighbors) -> float:
    """Mean cosine similarity of a query's neighbours, never counting the query image itself.

    For an indexed image (``search_row``) rank 1 is that image (similarity 1) and is left out;
    for an outside query (an upload) rank 1 is a real neighbour and counts. NaN when no
    neighbour is left.
    """
    others = found.others()
    return float(np.mean(others, dtype=np.float64)) if len(others) else float("nan")


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, C-contiguous); all-zero rows stay zero.

    Zero rows are kept rather than refused: an image whose encoder gave a zero vector still
    has a row in the index, it is simply similar to nothing.
    """
    return l2_normalize(vectors, zero_rows="keep", what="vectors to search", dtype=np.float32)


def exact_topk(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities), each (n_queries, k'), of the k largest dot products per query.

    Both inputs must already be normalised. Ties are broken by row number so results are
    deterministic.
    """
    n = matrix.shape[0]
    k = _check_k(k, n)
    # matrix @ q (not q @ matrix.T): row-major gemv streams the matrix once; a single query at
    # 100k x 384 is then bound by memory bandwidth (~20 ms on a laptop-class core).
    sims = (matrix @ queries.T).T
    if k < n:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), sims.shape).copy()
    part_sims = np.take_along_axis(sims, part, axis=1)
    # lexsort sorts by the last key first: similarity descending, then row ascending.
    order = np.lexsort((part, -part_sims), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.int64), np.take_along_axis(part_sims, order, axis=1)


def _check_k(k: int, n: int) -> int:
    """``k`` capped at ``n``: asking for more neighbours than there are rows returns them all."""
    if n == 0:
        raise InvalidInputError("There are no vectors to search; extract embeddings first.")
    return min(check_k(k, n, what="neighbour search", maximum=sys.maxsize), n)


def index_key(encoder_key: str, scope: str = "") -> str:
    """File-name-safe name of the ANN index of ``encoder_key`` within ``scope`` (e.g. a dataset).

    The images are not part of the name: the same file follows a dataset as images are added
    or removed, and is updated rather than rebuilt.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(encoder_key.encode())
    digest.update(b"\0" + scope.encode())
    return digest.hexdigest()


def cached_index_exists(cache_dir: str | os.PathLike[str], encoder_key: str, scope: str = "") -> bool:
    """Whether an ANN index of ``encoder_key`` within ``scope`` was built before (opening it then
    costs seconds, or an update for the images added since, instead of a full build)."""
    index_file = index_path(cache_dir, index_key(encoder_key, scope))
    return index_file.exists() and slots_path(index_file).exists()


def index_path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    return Path(cache_dir) / "indexes" / f"{key}.usearch"


def slots_path(index_file: Path) -> Path:
    """The sidecar of an index file: which image each index entry ("slot") holds."""
    return index_file.with_suffix(".slots.npz")


@dataclass
class _Slots:
    """Entry ``i`` of the usearch index (its key) is slot ``i``: the image it was added for."""

    keys: np.ndarray  # str, one per slot (image hash, made unique)
    alive: np.ndarray  # bool: False once removed (a tombstone in the graph)
    fingerprints: np.ndarray  # float32: the vector's projection on a fixed probe (detects changes)

    @property
    def n(self) -> int:
        return len(self.keys)


class NeighborIndex:
    """Cosine neighbours over a fixed matrix (rows in the order of ``hashes``).

    ``scope`` (e.g. the dataset name) separates the cached indexes of image sets that share
    an encoder key, so each can be updated in place rather than rebuilt.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        *,
        encoder_key: str = "",
        hashes: Sequence[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        ann_threshold: int | None = None,  # None: ANN_THRESHOLD as it is when called
        scope: str = "",
        progress: AddProgress | None = None,
    ) -> None:
        self._progress = progress  # hears how many vectors a build or an update has added
        self.matrix = normalize(vectors)
        self.n, self.dim = self.matrix.shape
        if hashes is not None and len(hashes) != self.n:
            raise InvalidInputError(f"{len(hashes)} hashes for {self.n} vectors; pass one hash per row.")
        self.uses_ann = self.n >= (ANN_THRESHOLD if ann_threshold is None else ann_threshold)
        self.index_file: Path | None = None
        self.build: IndexBuild | None = None
        self._ann: Index | None = None
        self._row_of_slot = np.empty(0, dtype=np.int64)
        if self.uses_ann:
            key = index_key(encoder_key, scope)
            self.index_file = index_path(cache_dir, key) if cache_dir is not None else None
            row_keys = _unique_keys(hashes if hashes is not None else [str(i) for i in range(self.n)])
            self._ann, slots, self.build = self._open_ann(row_keys)
            self._row_of_slot = _row_of_slot(slots, row_keys)

    # -- search ---------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> list[Neighbors]:
        """Top-``k`` rows for each query vector (raw or normalised; they are normalised here)."""
        q = normalize(queries)
        if q.shape[1] != self.dim:
            raise InvalidInputError(
                f"Query vector has {q.shape[1]} dimensions, the index {self.dim}; "
                "embed the query with the same encoder."
            )
        k = _check_k(k, self.n)
        if self._ann is None:
            idx, sims = exact_topk(self.matrix, q, k)
            return [Neighbors(i, s) for i, s in zip(idx, sims)]
        return self._ann_search(q, k)

    def search_row(self, row: int, k: int) -> Neighbors:
        """Neighbours of an indexed row; the row itself always comes first.

        Identical vectors tie at similarity 1.0, and the user asked about *this* image.
        """
        if not 0 <= row < self.n:
            raise InvalidInputError(f"row {row} is outside the index (0..{self.n - 1})")
        k = _check_k(k, self.n)
        found = self.search(self.matrix[row], k)[0]
        others = found.indices != row
        indices = np.concatenate([[row], found.indices[others]])[:k]
        self_sim = np.float32(self.matrix[row] @ self.matrix[row])
        sims = np.concatenate([[self_sim], found.similarities[others]])[:k].astype(np.float32)
        return Neighbors(indices.astype(np.int64), sims, query_row=int(row))

    def _ann_search(self, queries: np.ndarray, k: int) -> list[Neighbors]:
        assert self._ann is not None
        count = min(self.n, max(4 * k, ANN_MIN_CANDIDATES))
        found = self._ann.search(queries, count)
        slot_matrix = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
        results = []
        for query, slots in zip(queries, slot_matrix):
            slots = slots[(slots >= 0) & (slots < len(self._row_of_slot))]
            rows = self._row_of_slot[slots]
            rows = rows[rows >= 0]
            # Re-score candidates exactly: displayed similarities are true cosines.
            idx, sims = exact_topk(self.matrix[rows], query[None, :], min(k, len(rows)))
            results.append(Neighbors(rows[idx[0]], sims[0]))
        return results

    # -- ANN index on disk ----------------------------------------------------------------

    def _open_ann(self, row_keys: np.ndarray) -> tuple[Index, _Slots, IndexBuild]:
        """The cached index brought up to date with ``row_keys``, or a new one built from scratch."""
        fingerprints = _fingerprints(self.matrix)
        cached, why = self._read_cached()
        if cached is not None:
            ann, slots = cached
            update = _plan_update(slots, row_keys, fingerprints)
            if update.removed_fraction <= MAX_REMOVED_FRACTION:
                return ann, *self._apply_update(ann, slots, update, row_keys, fingerprints)
            why = f"{update.n_removed_total} of {update.n_slots} cached entries would be tombstones"
            del ann
        ann = self._new_ann()
        _add(ann, np.arange(self.n), self.matrix, self._progress)
        slots = _Slots(keys=row_keys, alive=np.ones(self.n, dtype=bool), fingerprints=fingerprints)
        self._save(ann, slots)
        return ann, slots, IndexBuild(reused=0, added=self.n, removed=0, reason=f"built: {why}")

    def _apply_update(
        self, ann: Index, slots: _Slots, update: _Update, row_keys: np.ndarray, fingerprints: np.ndarray
    ) -> tuple[_Slots, IndexBuild]:
        if not len(update.stale_slots) and not len(update.new_rows):
            ann.expansion_search = ANN_EXPANSION_SEARCH  # type: ignore[misc]  # usearch's setter reads as read-only
            return slots, IndexBuild(reused=self.n, added=0, removed=0, reason="cached")
        if len(update.stale_slots):
            ann.remove(update.stale_slots.astype(np.uint64))
        new_slots = np.arange(slots.n, slots.n + len(update.new_rows), dtype=np.int64)
        if len(new_slots):
            _add(ann, new_slots, self.matrix[update.new_rows], self._progress)
        alive = np.concatenate([slots.alive, np.ones(len(new_slots), dtype=bool)])
        alive[update.stale_slots] = False
        slots = _Slots(
            keys=np.concatenate([slots.keys, row_keys[update.new_rows]]),
            alive=alive,
            fingerprints=np.concatenate([slots.fingerprints, fingerprints[update.new_rows]]),
        )
        ann.expansion_search = ANN_EXPANSION_SEARCH  # type: ignore[misc]
        self._save(ann, slots)
        reused = self.n - len(update.new_rows)
        return slots, IndexBuild(
            reused=reused, added=len(update.new_rows), removed=len(update.stale_slots), reason="updated"
        )

    def _new_ann(self) -> Index:
        from usearch.index import Index

        return Index(
            ndim=self.dim,
            metric="cos",
            dtype=ANN_DTYPE,
            connectivity=ANN_CONNECTIVITY,
            expansion_add=ANN_EXPANSION_ADD,
            expansion_search=ANN_EXPANSION_SEARCH,
        )

    def _read_cached(self) -> tuple[tuple[Index, _Slots] | None, str]:
        """(index, slots) from the cache folder, or (None, why not)."""
        if self.index_file is None:
            return None, "no cache folder"
        if not self.index_file.exists():
            return None, "no cached index"
        try:
            return _load_pair(self.index_file, self._new_ann(), self.dim), ""
        except _StaleCache as exc:
            return None, str(exc)
        except (RuntimeError, ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
            # A damaged or foreign file is rebuilt; said in the log, not hidden.
            log.warning("Rebuilding the neighbour index %s: %s", self.index_file, exc)
            return None, f"cached index unreadable ({type(exc).__name__})"

    def _save(self, ann: Index, slots: _Slots) -> None:
        if self.index_file is not None:
            _save_pair(ann, slots, self.index_file)


ADD_CHUNK = 65_536  # vectors added per call when a build reports progress (seconds each at 1M)
AddProgress = Callable[[int, int], None]  # (vectors added, vectors to add); may raise to stop the build


def _add(ann: Index, keys: np.ndarray, vectors: np.ndarray, progress: AddProgress | None = None) -> None:
    threads = 0 if len(keys) >= PARALLEL_ADD_FROM else 1  # 0: every core
    step = ADD_CHUNK if progress is not None else max(len(keys), 1)
    for start in range(0, len(keys), step):
        end = min(start + step, len(keys))
        ann.add(keys[start:end].astype(np.uint64), vectors[start:end], threads=threads)
        if progress is not None:
            progress(end, len(keys))


@dataclass(frozen=True)
class _Update:
    slot_of_row: np.ndarray  # int64 per current row: its slot, or -1 when it must be added
    new_rows: np.ndarray  # rows to add
    stale_slots: np.ndarray  # live slots to remove
    n_slots: int
    n_removed_total: int  # tombstones after the update (earlier ones included)

    @property
    def removed_fraction(self) -> float:
        total = self.n_slots + len(self.new_rows)
        return self.n_removed_total / total if total else 0.0


def _plan_update(slots: _Slots, row_keys: np.ndarray, fingerprints: np.ndarray) -> _Update:
    """Which current rows the cached slots already hold, which to add, which slots to drop."""
    live = np.flatnonzero(slots.alive)
    position = pd.Index(slots.keys[live]).get_indexer(pd.Index(row_keys))
    slot_of_row = np.where(position >= 0, live[np.maximum(position, 0)], -1)
    held = slot_of_row >= 0
    changed = held.copy()
    changed[held] = np.abs(slots.fingerprints[slot_of_row[held]] - fingerprints[held]) > _FINGERPRINT_TOLERANCE
    slot_of_row[changed] = -1
    keep = np.zeros(slots.n, dtype=bool)
    keep[slot_of_row[slot_of_row >= 0]] = True
    stale = np.flatnonzero(slots.alive & ~keep)
    return _Update(
        slot_of_row=slot_of_row,
        new_rows=np.flatnonzero(slot_of_row < 0),
        stale_slots=stale,
        n_slots=slots.n,
        n_removed_total=int((~slots.alive).sum()) + len(stale),
    )


def _row_of_slot(slots: _Slots, row_keys: np.ndarray) -> np.ndarray:
    """Current row number of every slot (-1 for a removed one): search results come back as slots."""
    rows = np.full(slots.n, -1, dtype=np.int64)
    live = np.flatnonzero(slots.alive)
    position = pd.Index(row_keys).get_indexer(pd.Index(slots.keys[live]))
    rows[live[position >= 0]] = position[position >= 0]
    return rows


def _unique_keys(hashes: Sequence[str]) -> np.ndarray:
    """The hashes as slot keys; a hash listed twice gets ``#2``, ``#3``… so each row has its own key."""
    keys = pd.Series(list(hashes), dtype=object)
    repeat = keys.groupby(keys, sort=False).cumcount().to_numpy()
    if repeat.any():
        keys = keys.where(repeat == 0, keys + "#" + (repeat + 1).astype(str))
    return keys.to_numpy(dtype=str)


def _fingerprints(matrix: np.ndarray) -> np.ndarray:
    """Each row's dot product with a fixed random unit vector: equal vectors, equal fingerprints."""
    probe = np.asarray(np.random.default_rng(0).standard_normal(matrix.shape[1]), dtype=np.float32)
    probe /= np.linalg.norm(probe)
    return np.asarray(matrix @ probe, dtype=np.float32)


class _StaleCache(Exception):
    """The cached index is readable but not usable as it is (other settings, a concurrent writer)."""


def _file_identity(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _save_pair(ann: Index, slots: _Slots, index_file: Path) -> None:
    """Write the index, then its sidecar naming the exact index file it belongs to.

    Two sessions may update the same index at once. Each file is replaced atomically, and the
    sidecar records the identity (size, mtime, inode) of the index file taken before it was
    renamed into place, so a reader that finds a sidecar and an index from different writers
    sees the mismatch and rebuilds instead of mapping entries to the wrong images.
    """
    with atomic_path(index_file) as tmp:
        ann.save(str(tmp))
        identity = _file_identity(tmp)  # rename keeps size, mtime and inode
    meta = {**_SETTINGS, "dim": int(ann.ndim), "index_file": identity}
    with atomic_path(slots_path(index_file)) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                keys=_compact(slots.keys),
                alive=slots.alive,
                fingerprints=slots.fingerprints,
                meta=np.array(json.dumps(meta)),
            )


def _compact(keys: np.ndarray) -> np.ndarray:
    """Keys as one byte per character when they are ASCII (hex hashes are): numpy's str arrays
    take four, which made a million-image sidecar 128 MB instead of 32 MB."""
    try:
        return keys.astype(bytes)
    except UnicodeEncodeError:
        return keys


def _load_pair(index_file: Path, ann: Index, dim: int) -> tuple[Index, _Slots]:
    sidecar = slots_path(index_file)
    if not sidecar.exists():
        raise _StaleCache("cached index has no sidecar")
    with np.load(sidecar, allow_pickle=False) as data:
        meta: dict[str, Any] = json.loads(str(data["meta"]))
        keys = data["keys"]
        slots = _Slots(
            keys=keys.astype(str) if keys.dtype.kind == "S" else keys,
            alive=data["alive"],
            fingerprints=data["fingerprints"],
        )
    settings = {name: meta.get(name) for name in _SETTINGS}
    if settings != _SETTINGS or meta.get("dim") != dim:
        raise _StaleCache("cached index was built with other settings")
    if _file_identity(index_file) != meta.get("index_file"):
        raise _StaleCache("cached index and sidecar come from different writes")
    ann.load(str(index_file))
    if _file_identity(index_file) != meta.get("index_file"):
        raise _StaleCache("cached index was replaced while it was read")
    if ann.ndim != dim or ann.size != int(slots.alive.sum()) or not (len(slots.alive) == len(slots.fingerprints)):
        raise _StaleCache("cached index does not match its sidecar")
    return ann, slots


def overlap(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, k: int | None = None) -> float:
    """|A ∩ B| / k for the first ``k`` items of two neighbour lists (k defaults to len(a))."""
    k = len(a) if k is None else int(k)
    if k < 1:
        raise InvalidInputError("overlap needs k >= 1")
    return len(set(list(a)[:k]) & set(list(b)[:k])) / k
