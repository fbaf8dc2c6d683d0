"""Encoders and their vectors: written in chunks, read back as one float32 matrix via Arrow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import EmbeddingsNotFoundError, InvalidInputError
from core.jsonsafe import loads_or_empty
from core.keys import EncoderKey, encoder_id_of
from core.store.connection import StoreConnection, _json_text, _now, _sql_literal, _unregister
from core.store.records import PendingImage


class EmbeddingsMixin(StoreConnection):
    """Encoder specs and embeddings, keyed by (encoder key, content hash)."""

    if TYPE_CHECKING:  # provided by DatasetsMixin in the Store facade

        def require_dataset(self, dataset: str) -> None: ...
        def dataset_images(self, dataset: str) -> pd.DataFrame: ...

    def register_encoder(
        self, key: str, encoder_id: str, version: str, layer: str, pooling: str, dim: int, spec: dict[str, Any]
    ) -> None:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO encoders VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (encoder_key) DO NOTHING",
                [key, encoder_id, version, layer, pooling, int(dim), _json_text(spec), _now()],
            )

    def encoder_spec(self, key: str) -> dict[str, Any] | None:
        rows = self._cursor().execute("SELECT spec FROM encoders WHERE encoder_key = ?", [key]).fetchall()
        return loads_or_empty(rows[0][0]) if rows else None

    def pending_images(self, dataset: str, encoder_key: str) -> list[PendingImage]:
        """Distinct images of ``dataset`` with no embedding under ``encoder_key`` yet."""
        self.require_dataset(dataset)
        rows = (
            self._cursor()
            .execute(
                """
            SELECT content_hash, arg_min(source, source || '/' || rel_path),
                   arg_min(rel_path, source || '/' || rel_path)
            FROM dataset_images di
            WHERE dataset = ? AND NOT EXISTS (
                SELECT 1 FROM embeddings e WHERE e.encoder_key = ? AND e.content_hash = di.content_hash)
            GROUP BY content_hash ORDER BY min(rel_path)
            """,
                [dataset, encoder_key],
            )
            .fetchall()
        )
        return [PendingImage(*r) for r in rows]

    def write_embeddings(
        self, encoder_key: str, hashes: Sequence[str], vectors: np.ndarray, *, replace: bool = False
    ) -> int:
        """Store one chunk of vectors in one transaction; returns how many rows were written.

        Extraction leaves existing (key, hash) pairs untouched, so a rerun never rewrites a
        vector; ``replace=True`` (a re-import of user vectors) overwrites them instead.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(hashes):
            raise InvalidInputError(f"vectors shape {vectors.shape} does not match {len(hashes)} hashes")
        if not len(hashes):
            return 0
        dim = vectors.shape[1]
        table = _vectors_arrow(hashes, vectors)
        with self._transaction() as cur:
            known = cur.execute("SELECT dim FROM encoders WHERE encoder_key = ?", [encoder_key]).fetchall()
            if known and int(known[0][0]) != dim:
                raise InvalidInputError(f"{encoder_key} stores {known[0][0]}-d vectors; got {dim}-d ones")
            before = _count_vectors(cur, encoder_key)
            cur.register("chunk", table)
            try:
                if replace:
                    cur.execute(
                        "DELETE FROM embeddings WHERE encoder_key = ? AND content_hash IN "
                        "(SELECT content_hash FROM chunk)",
                        [encoder_key],
                    )
                    before = _count_vectors(cur, encoder_key)
                cur.execute(
                    "INSERT OR IGNORE INTO embeddings SELECT ?, content_hash, vector, ? FROM chunk",
                    [encoder_key, _now()],
                )
            finally:
                _unregister(cur, "chunk")
            after = _count_vectors(cur, encoder_key)
        return after - before

    def load_embeddings(self, dataset: str, encoder_key: str) -> tuple[pd.DataFrame, np.ndarray]:
        """(images, matrix): rows of :meth:`dataset_images` that have a vector, and the vectors.

        The matrix is float32, C-contiguous, one row per image, built from Arrow buffers.
        """
        images = self.dataset_images(dataset)
        dim = self._encoder_dim(encoder_key)
        table = self._vectors_table(dataset, encoder_key, dim, len(images))
        # Vectors come back unsorted (sorting 3 KB rows in SQL cost more than the whole read);
        # they are matched to the image order here, by hash.
        positions = pd.Index(table.column("content_hash").to_pandas()).get_indexer(images["content_hash"])
        found = positions >= 0
        if not found.any():
            raise EmbeddingsNotFoundError(
                f"Dataset {dataset!r} has no embeddings for encoder {encoder_key!r}. "
                f"Run: {_how_to_embed(dataset, encoder_key)}",
                page_message=f"Dataset {dataset!r} has no embeddings for {encoder_key!r}: extract them on the "
                "Data page first.",
            )
        return images[found].reset_index(drop=True), _gather_rows(table.column("vector"), positions[found], dim)

    def _vectors_table(self, dataset: str, encoder_key: str, dim: int, n_images: int) -> pa.Table:
        """(content_hash, vector) for the key; restricted to the dataset in SQL only when the key
        holds many more vectors than the dataset has images (the restriction costs a join)."""
        cur = self._cursor()
        n_key = _count_vectors(cur, encoder_key)
        sql = f"SELECT content_hash, vector::FLOAT[{dim}] AS vector FROM embeddings WHERE encoder_key = ?"
        params: list[Any] = [encoder_key]
        if n_key > 2 * n_images:
            sql += " AND content_hash IN (SELECT content_hash FROM dataset_images WHERE dataset = ?)"
            params.append(dataset)
        return cur.sql(sql, params=params).to_arrow_table()

    def _encoder_dim(self, encoder_key: str) -> int:
        rows = self._cursor().execute("SELECT dim FROM encoders WHERE encoder_key = ?", [encoder_key]).fetchall()
        if not rows:
            raise EmbeddingsNotFoundError(
                f"No embeddings were ever stored for encoder key {encoder_key!r}. "
                "Embed the dataset with that encoder first (python -m core embed …).",
                page_message=f"No embeddings were ever stored for {encoder_key!r}: extract them on the Data page.",
            )
        return int(rows[0][0])

    def embedding_status(self, dataset: str) -> pd.DataFrame:
        """Per encoder key: how many of the dataset's distinct images have a vector."""
        self.require_dataset(dataset)
        return (
            self._cursor()
            .execute(
                """
            WITH imgs AS (SELECT DISTINCT content_hash FROM dataset_images WHERE dataset = ?)
            SELECT enc.encoder_key, enc.encoder_id, enc.layer, enc.pooling, enc.dim,
                   count(e.content_hash) AS n_embedded, (SELECT count(*) FROM imgs) AS n_images
            FROM encoders enc
            JOIN embeddings e ON e.encoder_key = enc.encoder_key
            JOIN imgs ON imgs.content_hash = e.content_hash
            GROUP BY ALL ORDER BY enc.encoder_key
            """,
                [dataset],
            )
            .df()
        )

    def embedded_keys(self, dataset: str) -> list[str]:
        return self.embedding_status(dataset)["encoder_key"].tolist()

    def count_embeddings(self, encoder_key: str | None = None) -> int:
        if encoder_key is None:
            return int(self._cursor().execute("SELECT count(*) FROM embeddings").fetchall()[0][0])
        return _count_vectors(self._cursor(), encoder_key)

    def export_embeddings(self, dataset: str, encoder_key: str, out: str | Path) -> int:
        """Write every *path* of the dataset with its vector to Parquet; returns the row count."""
        self.require_dataset(dataset)
        self._encoder_dim(encoder_key)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        cur = self._cursor()
        n = cur.execute(
            "SELECT count(*) FROM dataset_images di JOIN embeddings e ON e.content_hash = di.content_hash "
            "AND e.encoder_key = ? WHERE di.dataset = ?",
            [encoder_key, dataset],
        ).fetchall()[0][0]
        if n == 0:
            raise EmbeddingsNotFoundError(f"Dataset {dataset!r} has no embeddings for {encoder_key!r}; embed it first.")
        tmp = out.with_name(out.name + ".tmp")
        # COPY cannot take bound parameters; the values are quoted by DuckDB's own literal syntax.
        cur.execute(
            f"""
            COPY (
                SELECT di.rel_path, di.source, di.content_hash, di.labels, di.caption,
                       {_sql_literal(encoder_key)} AS encoder_key, e.vector
                FROM dataset_images di JOIN embeddings e
                  ON e.content_hash = di.content_hash AND e.encoder_key = {_sql_literal(encoder_key)}
                WHERE di.dataset = {_sql_literal(dataset)} ORDER BY di.source, di.rel_path
            ) TO {_sql_literal(str(tmp))} (FORMAT parquet)
            """
        )
        tmp.replace(out)
        return int(n)


def _count_vectors(cur: duckdb.DuckDBPyConnection, encoder_key: str) -> int:
    return int(cur.execute("SELECT count(*) FROM embeddings WHERE encoder_key = ?", [encoder_key]).fetchall()[0][0])


def _vectors_arrow(hashes: Sequence[str], vectors: np.ndarray) -> pa.Table:
    """(content_hash, vector) as Arrow, the vectors sharing the matrix's buffer."""
    n, dim = vectors.shape
    # 64-bit offsets: one call may carry more than 2**31 floats (a large import).
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int64))
    return pa.table(
        {
            "content_hash": pa.array(list(hashes), pa.string()),
            "vector": pa.LargeListArray.from_arrays(offsets, pa.array(vectors.ravel())),
        }
    )


def _how_to_embed(dataset: str, encoder_key: str) -> str:
    """The CLI command that stores vectors of ``dataset`` under ``encoder_key``."""
    parsed = EncoderKey.try_parse(encoder_key)
    if parsed is not None and parsed.imported_name is not None:
        return f"python -m core import-embeddings FILE --dataset {dataset} --encoder-name {parsed.imported_name}"
    return f"python -m core embed --dataset {dataset} --encoder {encoder_id_of(encoder_key)}"


def _gather_rows(column: pa.ChunkedArray, rows: np.ndarray, dim: int) -> np.ndarray:
    """``matrix[i] = vector of table row rows[i]``, copied once from the Arrow chunks.

    Combining the chunks and then reordering would copy the whole matrix twice (300 MB each
    at 100k x 768); here each chunk's rows go straight to their output positions.
    """
    if column.num_chunks == 1 and len(rows) == len(column) and np.array_equal(rows, np.arange(len(rows))):
        # The usual case (extraction writes in image order): Arrow's buffer as is, no copy.
        return column.chunk(0).flatten().to_numpy(zero_copy_only=False).reshape(len(rows), dim)
    out = np.empty((len(rows), dim), dtype=np.float32)
    destination = np.full(len(column), -1, dtype=np.int64)
    destination[rows] = np.arange(len(rows))
    start = 0
    for chunk in column.chunks:
        n = len(chunk)
        block = chunk.flatten().to_numpy(zero_copy_only=False).reshape(n, dim)
        dest = destination[start : start + n]
        if n and dest[0] >= 0 and np.array_equal(dest, np.arange(dest[0], dest[0] + n)):
            out[dest[0] : dest[0] + n] = block  # the usual case: extraction wrote in image order
        else:
            keep = dest >= 0
            out[dest[keep]] = block[keep]
        start += n
    return out
