"""Nearest neighbours by cosine similarity: exact below a size threshold, usearch HNSW above.

Exact search is one matrix product of L2-normalised float32 vectors plus ``argpartition``;
at 100k x 384 that is a few milliseconds per query, so an approximate index only pays off
for large datasets. The ANN index is built once per (encoder key, image set) and saved
under ``<cache>/indexes/<key>.usearch``; its candidates are re-scored exactly, so every
similarity shown is a true cosine, never an approximation.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.arrays import check_k, l2_normalize
from core.errors import InvalidInputError
from core.fsutil import atomic_path

if TYPE_CHECKING:  # usearch loads a native library; only the ANN path needs it at run time
    from usearch.index import Index

ANN_THRESHOLD = 200_000
# HNSW settings tuned on random 384-d vectors (the hardest case: no cluster structure):
# recall@10 ~0.98 vs exact at 20k. Real embeddings are clustered and do better. The graph
# stores int8-quantised unit vectors (4x less memory, ~3x faster to build than float32);
# the exact re-scoring of ANN_MIN_CANDIDATES candidates makes up for the quantisation.
ANN_DTYPE = "i8"
ANN_CONNECTIVITY = 48
ANN_EXPANSION_ADD = 64
ANN_EXPANSION_SEARCH = 512
ANN_MIN_CANDIDATES = 200


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


def index_key(encoder_key: str, hashes: Sequence[str]) -> str:
    """File-name-safe identity of an index over these images (in this row order) and encoder."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(encoder_key.encode())
    for h in hashes:
        digest.update(b"\0" + h.encode())
    return digest.hexdigest()


def index_path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    return Path(cache_dir) / "indexes" / f"{key}.usearch"


class NeighborIndex:
    """Cosine neighbours over a fixed matrix (rows in the order of ``hashes``)."""

    def __init__(
        self,
        vectors: np.ndarray,
        *,
        encoder_key: str = "",
        hashes: Sequence[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        ann_threshold: int = ANN_THRESHOLD,
    ) -> None:
        self.matrix = normalize(vectors)
        self.n, self.dim = self.matrix.shape
        self.uses_ann = self.n >= ann_threshold
        self.index_file: Path | None = None
        self._ann: Index | None = None
        if self.uses_ann:
            key = index_key(encoder_key, hashes if hashes is not None else [str(i) for i in range(self.n)])
            self.index_file = index_path(cache_dir, key) if cache_dir is not None else None
            self._ann = self._load_or_build_ann()

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
        return [self._ann_one(row, k) for row in q]

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

    def _ann_one(self, query: np.ndarray, k: int) -> Neighbors:
        assert self._ann is not None
        count = min(self.n, max(4 * k, ANN_MIN_CANDIDATES))
        keys = np.asarray(self._ann.search(query, count).keys, dtype=np.int64)
        keys = keys[keys >= 0]
        # Re-score candidates exactly: displayed similarities are true cosines.
        idx, sims = exact_topk(self.matrix[keys], query[None, :], min(k, len(keys)))
        return Neighbors(keys[idx[0]], sims[0])

    # -- ANN index on disk ----------------------------------------------------------------

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

    def _load_or_build_ann(self) -> Index:
        ann = self._new_ann()
        if self.index_file is not None and self.index_file.exists():
            try:
                ann.load(str(self.index_file))
                if ann.size == self.n and ann.ndim == self.dim:
                    # usearch declares this setter apart from its getter, which mypy reads as read-only.
                    ann.expansion_search = ANN_EXPANSION_SEARCH  # type: ignore[misc]
                    return ann
            except (RuntimeError, ValueError, OSError):
                pass  # a damaged or foreign file: rebuild it below
            ann = self._new_ann()
        ann.add(np.arange(self.n, dtype=np.uint64), self.matrix)
        if self.index_file is not None:
            _save_atomically(ann, self.index_file)
        return ann


def _save_atomically(ann: Index, path: Path) -> None:
    # Two sessions may build the same index at once; readers must never see half a file.
    with atomic_path(path) as tmp:
        ann.save(str(tmp))


def overlap(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, k: int | None = None) -> float:
    """|A ∩ B| / k for the first ``k`` items of two neighbour lists (k defaults to len(a))."""
    k = len(a) if k is None else int(k)
    if k < 1:
        raise InvalidInputError("overlap needs k >= 1")
    return len(set(list(a)[:k]) & set(list(b)[:k])) / k
