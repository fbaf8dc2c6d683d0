"""The DuckDB store: the only module in RepLens that writes SQL.

One file holds datasets (paths, labels, captions), images (by content hash), encoder
specs, embeddings and run records. Schema changes are numbered migration functions
(``m001_…``) applied in order and recorded in ``schema_migrations``.

Thread safety: one connection per ``Store``; every method runs on a cursor private to the
calling thread (DuckDB connections are not thread-safe, cursors are), so Streamlit
sessions can share one ``Store`` behind ``st.cache_resource``.

Embeddings are keyed by (content hash, encoder key); reads come back as Arrow and become
one contiguous float32 matrix without per-row Python loops.
"""
from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from core import config
from core.errors import (
    DatabaseError,
    DatabaseLockedError,
    DatasetNotFoundError,
    EmbeddingsNotFoundError,
    InvalidInputError,
)

# ---------------------------------------------------------------------------------------
# Migrations. Append new ones; never edit one that has shipped.


def m001_initial(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(
        """
        CREATE TABLE datasets (
            name VARCHAR PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE images (
            content_hash VARCHAR PRIMARY KEY,
            width INTEGER, height INTEGER, n_bytes BIGINT, format VARCHAR
        );
        CREATE TABLE dataset_images (
            dataset VARCHAR NOT NULL,
            source VARCHAR NOT NULL,      -- folder or .zip the path is relative to
            rel_path VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            labels VARCHAR[] NOT NULL,
            caption VARCHAR,
            mtime DOUBLE,
            added_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (dataset, source, rel_path)
        );
        CREATE TABLE skipped_files (
            dataset VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            rel_path VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            stage VARCHAR NOT NULL,       -- 'ingest' or 'embed'
            seen_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (dataset, source, rel_path, stage)
        );
        CREATE TABLE encoders (
            encoder_key VARCHAR PRIMARY KEY,
            encoder_id VARCHAR NOT NULL,
            version VARCHAR NOT NULL,
            layer VARCHAR NOT NULL,
            pooling VARCHAR NOT NULL,
            dim INTEGER NOT NULL,
            spec JSON NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE embeddings (
            encoder_key VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            vector FLOAT[] NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (encoder_key, content_hash)
        );
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            dataset VARCHAR,
            encoder_key VARCHAR,
            params JSON,
            status VARCHAR NOT NULL,      -- running, done, failed
            stats JSON,
            error VARCHAR,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ
        );
        """
    )


def m002_projections(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(
        """
        CREATE TABLE projections (
            projection_key VARCHAR PRIMARY KEY,   -- hash of (dataset images, encoder key, method, params)
            dataset VARCHAR NOT NULL,
            encoder_key VARCHAR NOT NULL,
            method VARCHAR NOT NULL,
            params JSON NOT NULL,
            n_points INTEGER NOT NULL,
            seconds DOUBLE,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE projection_points (
            projection_key VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            x FLOAT NOT NULL,
            y FLOAT NOT NULL,
            PRIMARY KEY (projection_key, content_hash)
        );
        """
    )


def m003_clusters(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(
        """
        CREATE TABLE cluster_runs (
            run_id VARCHAR PRIMARY KEY,
            dataset VARCHAR NOT NULL,
            encoder_key VARCHAR NOT NULL,
            method VARCHAR NOT NULL,
            params JSON NOT NULL,
            n_clusters INTEGER NOT NULL,
            noise_fraction DOUBLE NOT NULL,
            metrics JSON NOT NULL,
            parent_run_id VARCHAR,          -- set for runs derived by merge/split edits
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE cluster_assignments (
            run_id VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            cluster INTEGER NOT NULL,       -- -1 = noise
            PRIMARY KEY (run_id, content_hash)
        );
        CREATE TABLE cluster_labels (
            run_id VARCHAR NOT NULL,
            cluster INTEGER NOT NULL,
            label VARCHAR NOT NULL,
            method VARCHAR NOT NULL,        -- clip | text | visual | user
            candidates JSON NOT NULL,       -- ranked alternatives with scores (provenance)
            edited BOOLEAN NOT NULL,        -- true once a user changed it
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (run_id, cluster)
        );
        """
    )


def m004_snapshots(cur: duckdb.DuckDBPyConnection) -> None:
    # A snapshot is immutable and self-contained: it copies what it shows, so it survives the
    # deletion of its source run and works after import into a database without the images.
    cur.execute(
        """
        CREATE TABLE snapshots (
            snapshot_id VARCHAR PRIMARY KEY,   -- content hash of the manifest + tables
            title VARCHAR NOT NULL,
            notes VARCHAR NOT NULL,
            dataset VARCHAR NOT NULL,
            encoder_key VARCHAR NOT NULL,
            cluster_run_id VARCHAR,
            manifest JSON NOT NULL,
            origin VARCHAR NOT NULL,           -- 'local' or 'imported'
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE snapshot_points (
            snapshot_id VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            rel_path VARCHAR NOT NULL,
            labels VARCHAR[] NOT NULL,
            x FLOAT, y FLOAT,
            cluster INTEGER NOT NULL,
            PRIMARY KEY (snapshot_id, content_hash)
        );
        CREATE TABLE snapshot_clusters (
            snapshot_id VARCHAR NOT NULL,
            cluster INTEGER NOT NULL,
            label VARCHAR NOT NULL,
            method VARCHAR NOT NULL,
            candidates JSON NOT NULL,
            edited BOOLEAN NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (snapshot_id, cluster)
        );
        """
    )


MIGRATIONS: tuple[Callable[[duckdb.DuckDBPyConnection], None], ...] = (
    m001_initial, m002_projections, m003_clusters, m004_snapshots,
)
SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestStats:
    dataset: str
    added: int          # paths new to the dataset
    duplicates: int     # of those, paths whose bytes the dataset already had under another path
    unchanged: int      # paths already recorded with the same content
    updated: int        # paths already recorded whose content changed
    removed: int        # paths recorded from this source earlier that are gone now


@dataclass(frozen=True)
class PendingImage:
    """One image that still needs an embedding, with one place to read its bytes from."""

    content_hash: str
    source: str
    rel_path: str


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    """A RepLens database. Cheap to construct; the file is opened on first use."""

    def __init__(self, db_path: str | Path | None = None, cache_dir: str | Path | None = None) -> None:
        self.path = Path(db_path) if db_path is not None else config.db_path()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else config.cache_dir()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._open_lock = threading.Lock()
        self._write_lock = threading.RLock()  # one write transaction at a time: no conflicts between threads
        self._local = threading.local()

    # -- connection -------------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        with self._open_lock:
            if self._con is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                try:
                    con = duckdb.connect(str(self.path))
                except duckdb.IOException as exc:
                    raise _locked_error(self.path, exc) from exc
                con.execute("SET enable_progress_bar = false")
                _migrate(con)
                self._con = con
            return self._con

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        con = self._connection()
        cur = getattr(self._local, "cursor", None)
        if cur is None or getattr(self._local, "owner", None) is not con:
            cur = con.cursor()
            self._local.cursor, self._local.owner = cur, con
        return cur

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self._cursor()
        with self._write_lock:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a failed COMMIT has already ended the transaction; keep the original error
                raise

    def close(self) -> None:
        with self._open_lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def schema_version(self) -> int:
        return int(self._cursor().execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0])

    # -- datasets ---------------------------------------------------------------------

    def ingest(self, dataset: str, source: str, records: Sequence[Any], skipped: Sequence[Any]) -> IngestStats:
        """Record a scan (``core.images.ScanResult`` records/skipped) under ``dataset``.

        All-or-nothing: a failure leaves the database as it was.
        """
        _check_dataset_name(dataset)
        rows = pd.DataFrame(
            {
                "rel_path": [r.rel_path for r in records],
                "content_hash": [r.content_hash for r in records],
                "labels": [list(r.labels) for r in records],
                "caption": [r.caption for r in records],
                "mtime": [float(r.mtime) for r in records],
                "width": [int(r.width) for r in records],
                "height": [int(r.height) for r in records],
                "n_bytes": [int(r.n_bytes) for r in records],
                "format": [r.format for r in records],
            },
            columns=["rel_path", "content_hash", "labels", "caption", "mtime", "width", "height", "n_bytes", "format"],
        ).astype({"rel_path": "object", "content_hash": "object", "caption": "object", "format": "object"})
        skipped_df = pd.DataFrame(
            {"rel_path": [s.rel_path for s in skipped], "reason": [s.reason for s in skipped]},
            columns=["rel_path", "reason"],
        ).astype("object")
        now = _now()
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO datasets VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at",
                [dataset, now, now],
            )
            cur.register("scan_rows", rows)
            try:
                stats = _ingest_rows(cur, dataset, source, now)
            finally:
                _unregister(cur, "scan_rows")
            # The rescan is the truth about this source: earlier embed failures of its files are stale too
            # (a file still broken is skipped again by the scan, or fails again at the next embed).
            cur.execute("DELETE FROM skipped_files WHERE dataset = ? AND source = ?", [dataset, source])
            if len(skipped_df):
                cur.register("skipped_rows", skipped_df)
                cur.execute(
                    "INSERT INTO skipped_files SELECT ?, ?, rel_path, reason, 'ingest', ? FROM skipped_rows",
                    [dataset, source, now],
                )
                _unregister(cur, "skipped_rows")
        return IngestStats(dataset=dataset, **stats)

    def dataset_names(self) -> list[str]:
        return [r[0] for r in self._cursor().execute("SELECT name FROM datasets ORDER BY name").fetchall()]

    def require_dataset(self, dataset: str) -> None:
        if dataset not in self.dataset_names():
            known = ", ".join(self.dataset_names()) or "none yet"
            raise DatasetNotFoundError(
                f"No dataset named {dataset!r} (known: {known}). Ingest a folder first: "
                f"python -m core ingest PATH --dataset {dataset}"
            )

    def list_datasets(self) -> pd.DataFrame:
        """One row per dataset: paths, distinct images, skipped files, timestamps."""
        return self._cursor().execute(
            """
            SELECT d.name AS dataset,
                   count(DISTINCT (di.source, di.rel_path)) AS n_paths,
                   count(DISTINCT di.content_hash) AS n_images,
                   (SELECT count(*) FROM skipped_files s WHERE s.dataset = d.name) AS n_skipped,
                   string_agg(DISTINCT di.source, '; ') AS sources,
                   d.created_at, d.updated_at
            FROM datasets d LEFT JOIN dataset_images di ON di.dataset = d.name
            GROUP BY d.name, d.created_at, d.updated_at ORDER BY d.name
            """
        ).df()

    def dataset_images(self, dataset: str) -> pd.DataFrame:
        """One row per distinct image of ``dataset`` (a file present at two paths is one row).

        Columns: content_hash, rel_path (first path), source, labels, label (outermost
        folder or ""), caption, n_paths, width, height, n_bytes, format. Order is stable
        (by first path) and is the row order of :meth:`load_embeddings`.
        """
        self.require_dataset(dataset)
        return self._cursor().execute(_DATASET_IMAGES_SQL, [dataset]).df()

    def dataset_paths(self, dataset: str) -> pd.DataFrame:
        """Every path of ``dataset`` (duplicates included), ordered by source and path."""
        self.require_dataset(dataset)
        return self._cursor().execute(
            "SELECT source, rel_path, content_hash, labels, caption FROM dataset_images "
            "WHERE dataset = ? ORDER BY source, rel_path",
            [dataset],
        ).df()

    def known_files(self, dataset: str, source: str) -> pd.DataFrame:
        """What the last ingest of ``source`` recorded (for incremental rescans)."""
        return self._cursor().execute(
            "SELECT di.rel_path, di.content_hash, di.labels, di.caption, di.mtime, i.width, i.height, i.n_bytes, "
            "i.format FROM dataset_images di JOIN images i ON i.content_hash = di.content_hash "
            "WHERE di.dataset = ? AND di.source = ?",
            [dataset, source],
        ).df()

    def skipped_files(self, dataset: str) -> pd.DataFrame:
        self.require_dataset(dataset)
        return self._cursor().execute(
            "SELECT source, rel_path, reason, stage, seen_at FROM skipped_files WHERE dataset = ? ORDER BY rel_path",
            [dataset],
        ).df()

    def record_embed_failures(self, dataset: str, failures: Sequence[PendingImage], reasons: Sequence[str]) -> None:
        """Replace the dataset's embed-stage failures with this run's: a file that embeds now
        is no longer reported, one that still fails is reported with its latest reason."""
        now = _now()
        with self._transaction() as cur:
            cur.execute("DELETE FROM skipped_files WHERE dataset = ? AND stage = 'embed'", [dataset])
            if not failures:
                return
            cur.executemany(
                "INSERT OR REPLACE INTO skipped_files VALUES (?, ?, ?, ?, 'embed', ?)",
                [[dataset, f.source, f.rel_path, r, now] for f, r in zip(failures, reasons)],
            )

    # -- encoders and embeddings ------------------------------------------------------

    def register_encoder(self, key: str, encoder_id: str, version: str, layer: str, pooling: str,
                         dim: int, spec: dict[str, Any]) -> None:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO encoders VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (encoder_key) DO NOTHING",
                [key, encoder_id, version, layer, pooling, int(dim), json.dumps(spec, sort_keys=True), _now()],
            )

    def encoder_spec(self, key: str) -> dict[str, Any] | None:
        rows = self._cursor().execute("SELECT spec FROM encoders WHERE encoder_key = ?", [key]).fetchall()
        return json.loads(rows[0][0]) if rows else None

    def pending_images(self, dataset: str, encoder_key: str) -> list[PendingImage]:
        """Distinct images of ``dataset`` with no embedding under ``encoder_key`` yet."""
        self.require_dataset(dataset)
        rows = self._cursor().execute(
            """
            SELECT content_hash, arg_min(source, source || '/' || rel_path), arg_min(rel_path, source || '/' || rel_path)
            FROM dataset_images di
            WHERE dataset = ? AND NOT EXISTS (
                SELECT 1 FROM embeddings e WHERE e.encoder_key = ? AND e.content_hash = di.content_hash)
            GROUP BY content_hash ORDER BY min(rel_path)
            """,
            [dataset, encoder_key],
        ).fetchall()
        return [PendingImage(*r) for r in rows]

    def write_embeddings(self, encoder_key: str, hashes: Sequence[str], vectors: np.ndarray, *,
                         replace: bool = False) -> int:
        """Store one chunk of vectors in one transaction; returns how many rows were written.

        Extraction leaves existing (key, hash) pairs untouched, so a rerun never rewrites a
        vector; ``replace=True`` (a re-import of user vectors) overwrites them instead.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(hashes):
            raise InvalidInputError(f"vectors shape {vectors.shape} does not match {len(hashes)} hashes")
        if not len(hashes):
            return 0
        n, dim = vectors.shape
        # 64-bit offsets: one call may carry more than 2**31 floats (a large import).
        offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int64))
        table = pa.table(
            {
                "content_hash": pa.array(list(hashes), pa.string()),
                "vector": pa.LargeListArray.from_arrays(offsets, pa.array(vectors.ravel())),
            }
        )
        with self._transaction() as cur:
            known = cur.execute("SELECT dim FROM encoders WHERE encoder_key = ?", [encoder_key]).fetchall()
            if known and int(known[0][0]) != dim:
                raise InvalidInputError(f"{encoder_key} stores {known[0][0]}-d vectors; got {dim}-d ones")
            before = cur.execute("SELECT count(*) FROM embeddings WHERE encoder_key = ?", [encoder_key]).fetchall()[0][0]
            cur.register("chunk", table)
            try:
                if replace:
                    cur.execute("DELETE FROM embeddings WHERE encoder_key = ? AND content_hash IN "
                                "(SELECT content_hash FROM chunk)", [encoder_key])
                    before = cur.execute("SELECT count(*) FROM embeddings WHERE encoder_key = ?",
                                         [encoder_key]).fetchall()[0][0]
                cur.execute(
                    "INSERT OR IGNORE INTO embeddings SELECT ?, content_hash, vector, ? FROM chunk",
                    [encoder_key, _now()],
                )
            finally:
                _unregister(cur, "chunk")
            after = cur.execute("SELECT count(*) FROM embeddings WHERE encoder_key = ?", [encoder_key]).fetchall()[0][0]
        return int(after - before)

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
            how = (f"python -m core import-embeddings FILE --dataset {dataset} --encoder-name {encoder_key[7:]}"
                   if encoder_key.startswith("import:")
                   else f"python -m core embed --dataset {dataset} --encoder {encoder_key.split('@')[0]}")
            raise EmbeddingsNotFoundError(
                f"Dataset {dataset!r} has no embeddings for encoder {encoder_key!r}. Run: {how}"
            )
        return images[found].reset_index(drop=True), _gather_rows(table.column("vector"), positions[found], dim)

    def _vectors_table(self, dataset: str, encoder_key: str, dim: int, n_images: int) -> pa.Table:
        """(content_hash, vector) for the key; restricted to the dataset in SQL only when the key
        holds many more vectors than the dataset has images (the restriction costs a join)."""
        cur = self._cursor()
        n_key = cur.execute("SELECT count(*) FROM embeddings WHERE encoder_key = ?", [encoder_key]).fetchall()[0][0]
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
                "Embed the dataset with that encoder first (python -m core embed …)."
            )
        return int(rows[0][0])

    def embedding_status(self, dataset: str) -> pd.DataFrame:
        """Per encoder key: how many of the dataset's distinct images have a vector."""
        self.require_dataset(dataset)
        return self._cursor().execute(
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
        ).df()

    def embedded_keys(self, dataset: str) -> list[str]:
        return self.embedding_status(dataset)["encoder_key"].tolist()

    def count_embeddings(self, encoder_key: str | None = None) -> int:
        if encoder_key is None:
            return int(self._cursor().execute("SELECT count(*) FROM embeddings").fetchall()[0][0])
        return int(
            self._cursor().execute("SELECT count(*) FROM embeddings WHERE encoder_key = ?", [encoder_key]).fetchall()[0][0]
        )

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

    # -- projections (2-D maps) ---------------------------------------------------------

    def save_projection(self, projection_key: str, dataset: str, encoder_key: str, method: str,
                        params: dict[str, Any], hashes: Sequence[str], coords: np.ndarray, seconds: float) -> None:
        """Store a 2-D layout (one row per image hash) in one transaction; replaces the same key."""
        coords = np.asarray(coords, dtype=np.float32)
        if coords.shape != (len(hashes), 2):
            raise InvalidInputError(f"coords shape {coords.shape} does not match {len(hashes)} hashes x 2")
        points = pa.table({"content_hash": pa.array(list(hashes), pa.string()),
                           "x": pa.array(coords[:, 0]), "y": pa.array(coords[:, 1])})
        with self._transaction() as cur:
            cur.execute("DELETE FROM projection_points WHERE projection_key = ?", [projection_key])
            cur.execute("DELETE FROM projections WHERE projection_key = ?", [projection_key])
            cur.execute(
                "INSERT INTO projections VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [projection_key, dataset, encoder_key, method, json.dumps(params, sort_keys=True), len(hashes),
                 float(seconds), _now()],
            )
            cur.register("points", points)
            try:
                cur.execute("INSERT INTO projection_points SELECT ?, content_hash, x, y FROM points", [projection_key])
            finally:
                _unregister(cur, "points")

    def load_projection(self, projection_key: str) -> tuple[list[str], np.ndarray] | None:
        """(hashes, coords) of a stored layout, or None when it was never computed."""
        cur = self._cursor()
        if not cur.execute("SELECT 1 FROM projections WHERE projection_key = ?", [projection_key]).fetchall():
            return None
        table = cur.sql(
            "SELECT content_hash, x, y FROM projection_points WHERE projection_key = ? ORDER BY content_hash",
            params=[projection_key],
        ).to_arrow_table()
        coords = np.column_stack([table.column("x").to_numpy(), table.column("y").to_numpy()]).astype(np.float32)
        return table.column("content_hash").to_pylist(), coords

    def list_projections(self, dataset: str) -> pd.DataFrame:
        return self._cursor().execute(
            "SELECT projection_key, encoder_key, method, params, n_points, seconds, created_at FROM projections "
            "WHERE dataset = ? ORDER BY created_at DESC",
            [dataset],
        ).df()

    # -- clusters -----------------------------------------------------------------------

    def save_cluster_run(self, run_id: str, dataset: str, encoder_key: str, method: str, params: dict[str, Any],
                         hashes: Sequence[str], labels: np.ndarray, metrics: dict[str, Any], n_clusters: int,
                         noise_fraction: float, parent_run_id: str | None = None) -> None:
        """Store one clustering (run row + one assignment per image hash, -1 = noise) in one transaction.

        ``params`` and ``metrics`` must be JSON-serialisable (plain Python values).
        """
        labels = np.asarray(labels)
        if labels.shape != (len(hashes),):
            raise InvalidInputError(f"labels shape {labels.shape} does not match {len(hashes)} hashes")
        if len(set(hashes)) != len(hashes):
            raise InvalidInputError(f"{len(hashes) - len(set(hashes))} duplicate image hashes in a cluster run")
        table = pa.table({"content_hash": pa.array(list(hashes), pa.string()),
                          "cluster": pa.array(labels.astype(np.int32))})
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO cluster_runs (run_id, dataset, encoder_key, method, params, n_clusters, noise_fraction, "
                "metrics, parent_run_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, dataset, encoder_key, method, json.dumps(params, sort_keys=True), int(n_clusters),
                 float(noise_fraction), json.dumps(metrics, sort_keys=True), parent_run_id, _now()],
            )
            cur.register("assignments", table)
            try:
                cur.execute("INSERT INTO cluster_assignments SELECT ?, content_hash, cluster FROM assignments", [run_id])
            finally:
                _unregister(cur, "assignments")

    def load_cluster_run(self, run_id: str) -> tuple[dict[str, Any], list[str], np.ndarray] | None:
        """(meta, hashes, labels) of a stored clustering, hashes sorted; None when there is no such run."""
        cur = self._cursor()
        meta = _cluster_run_row(cur, run_id)
        if meta is None:
            return None
        meta["params"], meta["metrics"] = json.loads(meta["params"]), json.loads(meta["metrics"])
        table = cur.sql(
            "SELECT content_hash, cluster FROM cluster_assignments WHERE run_id = ? ORDER BY content_hash",
            params=[run_id],
        ).to_arrow_table()
        labels = table.column("cluster").to_numpy().astype(np.int64)
        return meta, table.column("content_hash").to_pylist(), labels

    def list_cluster_runs(self, dataset: str | None = None) -> pd.DataFrame:
        """Every stored clustering (newest first), optionally of one dataset; params/metrics as JSON text."""
        sql = ("SELECT run_id, dataset, encoder_key, method, params, n_clusters, noise_fraction, metrics, "
               "parent_run_id, created_at FROM cluster_runs")
        if dataset is not None:
            return self._cursor().execute(sql + " WHERE dataset = ? ORDER BY created_at DESC", [dataset]).df()
        return self._cursor().execute(sql + " ORDER BY created_at DESC").df()

    def save_cluster_labels(self, run_id: str, rows: Sequence[dict[str, Any]]) -> int:
        """Upsert machine labels (dicts with cluster, label, method, candidates) in one transaction.

        A label a user edited is never overwritten. Returns how many rows were written.
        """
        frame = pd.DataFrame(
            {"cluster": [int(r["cluster"]) for r in rows], "label": [str(r["label"]) for r in rows],
             "method": [str(r["method"]) for r in rows],
             "candidates": [json.dumps(r.get("candidates", []), sort_keys=True) for r in rows]},
            columns=["cluster", "label", "method", "candidates"],
        ).astype({"cluster": "int64", "label": "object", "method": "object", "candidates": "object"})
        if frame.empty:
            return 0
        with self._transaction() as cur:
            edited = {r[0] for r in cur.execute(
                "SELECT cluster FROM cluster_labels WHERE run_id = ? AND edited", [run_id]).fetchall()}
            cur.register("label_rows", frame)
            try:
                cur.execute(
                    "INSERT INTO cluster_labels SELECT ?, cluster, label, method, candidates, false, ? FROM label_rows "
                    "ON CONFLICT (run_id, cluster) DO UPDATE SET label = excluded.label, method = excluded.method, "
                    "candidates = excluded.candidates, updated_at = excluded.updated_at WHERE NOT cluster_labels.edited",
                    [run_id, _now()],
                )
            finally:
                _unregister(cur, "label_rows")
        return int((~frame["cluster"].isin(edited)).sum())

    def load_cluster_labels(self, run_id: str) -> pd.DataFrame:
        """cluster, label, method, candidates (parsed), edited, updated_at; one row per labelled cluster."""
        frame = self._cursor().execute(
            "SELECT cluster, label, method, candidates, edited, updated_at FROM cluster_labels WHERE run_id = ? "
            "ORDER BY cluster",
            [run_id],
        ).df()
        frame["candidates"] = [json.loads(c) for c in frame["candidates"]]
        return frame

    def add_cluster_run_metrics(self, run_id: str, metrics: dict[str, Any]) -> None:
        """Add measurements made after the fit (e.g. seed stability) to a run's metrics.

        Assignments never change; only keys in ``metrics`` are added or replaced."""
        with self._transaction() as cur:
            row = cur.execute("SELECT metrics FROM cluster_runs WHERE run_id = ?", [run_id]).fetchall()
            if not row:
                raise InvalidInputError(f"No cluster run {run_id!r} to add metrics to.")
            merged = {**json.loads(row[0][0]), **metrics}
            cur.execute("UPDATE cluster_runs SET metrics = ? WHERE run_id = ?",
                        [json.dumps(merged, sort_keys=True), run_id])

    def set_cluster_label(self, run_id: str, cluster: int, label: str) -> None:
        """A user's name for a cluster (method 'user', edited); it wins over any later recomputation.

        The machine's candidates, if any, are kept as provenance.
        """
        if not label or not label.strip():
            raise InvalidInputError(f"label {label!r} is empty; type a name for cluster {cluster}")
        self._cursor().execute(
            "INSERT INTO cluster_labels VALUES (?, ?, ?, 'user', '[]', true, ?) ON CONFLICT (run_id, cluster) "
            "DO UPDATE SET label = excluded.label, method = 'user', edited = true, updated_at = excluded.updated_at",
            [run_id, int(cluster), label.strip(), _now()],
        )

    # -- snapshots ----------------------------------------------------------------------
    # Snapshots copy what they show (see m004); core.snapshots builds, checks and hashes
    # them. These methods only move rows. Points and clusters travel as Arrow tables.

    def snapshot_source_run(self, run_id: str) -> dict[str, Any] | None:
        """A cluster run as a snapshot reads it, or None: run fields, assignments, labels.

        ``assignments`` (content_hash, cluster) and ``labels`` (cluster, label, method,
        candidates, edited) are Arrow tables ordered by hash / cluster; JSON stays text.
        """
        cur = self._cursor()
        run = _cluster_run_row(cur, run_id)
        if run is None:
            return None
        run["assignments"] = cur.sql(
            "SELECT content_hash, cluster FROM cluster_assignments WHERE run_id = ? ORDER BY content_hash",
            params=[run_id],
        ).to_arrow_table()
        run["labels"] = cur.sql(
            "SELECT cluster, label, method, candidates::VARCHAR AS candidates, edited FROM cluster_labels "
            "WHERE run_id = ? ORDER BY cluster",
            params=[run_id],
        ).to_arrow_table()
        return run

    def insert_snapshot(self, row: dict[str, Any], points: pa.Table, clusters: pa.Table) -> bool:
        """Write one snapshot (row + points + clusters) in one transaction; False if the id exists.

        ``row`` holds the ``snapshots`` columns; ``points`` / ``clusters`` hold the columns of
        ``snapshot_points`` / ``snapshot_clusters`` without ``snapshot_id``.
        """
        snapshot_id = row["snapshot_id"]
        with self._transaction() as cur:
            if cur.execute("SELECT 1 FROM snapshots WHERE snapshot_id = ?", [snapshot_id]).fetchall():
                return False
            cur.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [snapshot_id, row["title"], row["notes"], row["dataset"], row["encoder_key"], row["cluster_run_id"],
                 row["manifest"], row["origin"], row["created_at"]],
            )
            cur.register("snap_points", points)
            cur.register("snap_clusters", clusters)
            try:
                cur.execute(
                    "INSERT INTO snapshot_points SELECT ?, content_hash, rel_path, labels, x, y, cluster FROM snap_points",
                    [snapshot_id],
                )
                cur.execute(
                    "INSERT INTO snapshot_clusters SELECT ?, cluster, label, method, candidates, edited, size "
                    "FROM snap_clusters",
                    [snapshot_id],
                )
            finally:
                _unregister(cur, "snap_points")
                _unregister(cur, "snap_clusters")
        return True

    def snapshot_rows(self, snapshot_id: str) -> tuple[dict[str, Any], pa.Table, pa.Table] | None:
        """(row, points, clusters) of one snapshot, or None. Points by hash, clusters by number."""
        cur = self._cursor()
        rows = cur.execute(
            "SELECT snapshot_id, title, notes, dataset, encoder_key, cluster_run_id, manifest, origin, created_at "
            "FROM snapshots WHERE snapshot_id = ?",
            [snapshot_id],
        ).fetchall()
        if not rows:
            return None
        names = ("snapshot_id", "title", "notes", "dataset", "encoder_key", "cluster_run_id", "manifest", "origin",
                 "created_at")
        points = cur.sql(
            "SELECT content_hash, rel_path, labels, x, y, cluster FROM snapshot_points WHERE snapshot_id = ? "
            "ORDER BY content_hash",
            params=[snapshot_id],
        ).to_arrow_table()
        clusters = cur.sql(
            "SELECT cluster, label, method, candidates::VARCHAR AS candidates, edited, size FROM snapshot_clusters "
            "WHERE snapshot_id = ? ORDER BY cluster",
            params=[snapshot_id],
        ).to_arrow_table()
        return dict(zip(names, rows[0])), points, clusters

    def list_snapshots(self, query: str | None = None) -> pd.DataFrame:
        """Newest first; ``query`` keeps rows whose title, notes or dataset contain it (any case)."""
        sql = """
            SELECT s.snapshot_id, s.title, s.notes, s.dataset, s.encoder_key, s.cluster_run_id, s.origin,
                   s.created_at,
                   (SELECT count(*) FROM snapshot_points p WHERE p.snapshot_id = s.snapshot_id) AS n_points,
                   (SELECT count(*) FROM snapshot_clusters c WHERE c.snapshot_id = s.snapshot_id) AS n_clusters
            FROM snapshots s
        """
        params: list[Any] = []
        if query:
            sql += " WHERE contains(lower(s.title || chr(10) || s.notes || chr(10) || s.dataset), lower(?))"
            params.append(query)
        return self._cursor().execute(sql + " ORDER BY s.created_at DESC, s.snapshot_id", params).df()

    def snapshot_ids_starting(self, prefix: str) -> list[str]:
        """Stored snapshot ids that begin with ``prefix`` (for short ids typed by hand)."""
        return [r[0] for r in self._cursor().execute(
            "SELECT snapshot_id FROM snapshots WHERE starts_with(snapshot_id, ?) ORDER BY snapshot_id", [prefix]
        ).fetchall()]

    def delete_snapshot(self, snapshot_id: str) -> bool:
        """Remove a snapshot and its rows in one transaction; False if there was none."""
        with self._transaction() as cur:
            gone = cur.execute("DELETE FROM snapshots WHERE snapshot_id = ? RETURNING 1", [snapshot_id]).fetchall()
            cur.execute("DELETE FROM snapshot_points WHERE snapshot_id = ?", [snapshot_id])
            cur.execute("DELETE FROM snapshot_clusters WHERE snapshot_id = ?", [snapshot_id])
        return bool(gone)

    def snapshot_table_counts(self) -> dict[str, int]:
        """Row counts of the snapshot tables (to check that a failed import changed nothing)."""
        cur = self._cursor()
        return {t: int(cur.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0])
                for t in ("snapshots", "snapshot_points", "snapshot_clusters")}

    def _insert_cluster_run_for_tests(self, run_id: str, dataset: str, encoder_key: str, method: str,
                                      params: dict[str, Any], metrics: dict[str, Any], hashes: Sequence[str],
                                      clusters: Sequence[int], labels: Sequence[dict[str, Any]] = ()) -> None:
        """Test fixture only: write a cluster run's rows directly (core.cluster owns real runs)."""
        assigned = np.asarray(clusters, dtype=np.int64)
        n_clusters = len(set(assigned[assigned >= 0].tolist()))
        noise = float((assigned < 0).mean()) if len(assigned) else 0.0
        now = _now()
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO cluster_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                [run_id, dataset, encoder_key, method, json.dumps(params, sort_keys=True), n_clusters, noise,
                 json.dumps(metrics, sort_keys=True), now],
            )
            cur.executemany("INSERT INTO cluster_assignments VALUES (?, ?, ?)",
                            [[run_id, h, int(c)] for h, c in zip(hashes, assigned)])
            if labels:
                cur.executemany(
                    "INSERT INTO cluster_labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [[run_id, int(lab["cluster"]), lab["label"], lab.get("method", "user"),
                      json.dumps(lab.get("candidates", [])), bool(lab.get("edited", False)), now] for lab in labels],
                )

    # -- runs -------------------------------------------------------------------------

    def start_run(self, kind: str, dataset: str | None, encoder_key: str | None, params: dict[str, Any]) -> str:
        run_id = uuid.uuid4().hex[:12]
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO runs (run_id, kind, dataset, encoder_key, params, status, started_at) "
                "VALUES (?, ?, ?, ?, ?, 'running', ?)",
                [run_id, kind, dataset, encoder_key, json.dumps(params, sort_keys=True), _now()],
            )
        return run_id

    def finish_run(self, run_id: str, *, stats: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self._transaction() as cur:
            cur.execute(
                "UPDATE runs SET status = ?, stats = ?, error = ?, finished_at = ? WHERE run_id = ?",
                ["failed" if error else "done", json.dumps(stats or {}, sort_keys=True), error, _now(), run_id],
            )

    def runs(self, kind: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY started_at DESC"
        return self._cursor().execute(sql, [kind] if kind else []).df()


# ---------------------------------------------------------------------------------------

_DATASET_IMAGES_SQL = """
    SELECT di.content_hash,
           arg_min(di.rel_path, di.source || '/' || di.rel_path) AS rel_path,
           arg_min(di.source, di.source || '/' || di.rel_path) AS source,
           arg_min(di.labels, di.source || '/' || di.rel_path) AS labels,
           coalesce(arg_min(di.labels, di.source || '/' || di.rel_path)[1], '') AS label,
           arg_min(di.caption, di.source || '/' || di.rel_path) AS caption,
           count(*) AS n_paths,
           any_value(i.width) AS width, any_value(i.height) AS height,
           any_value(i.n_bytes) AS n_bytes, any_value(i.format) AS format
    FROM dataset_images di JOIN images i ON i.content_hash = di.content_hash
    WHERE di.dataset = ?
    GROUP BY di.content_hash
    ORDER BY rel_path, source
"""


def _ingest_rows(cur: duckdb.DuckDBPyConnection, dataset: str, source: str, now: datetime) -> dict[str, int]:
    known_paths = dict(
        cur.execute(
            "SELECT rel_path, content_hash FROM dataset_images WHERE dataset = ? AND source = ?", [dataset, source]
        ).fetchall()
    )
    seen_hashes = {
        r[0] for r in cur.execute("SELECT DISTINCT content_hash FROM dataset_images WHERE dataset = ?", [dataset]).fetchall()
    }
    counts = {"added": 0, "duplicates": 0, "unchanged": 0, "updated": 0, "removed": 0}
    for rel_path, content_hash in cur.execute("SELECT rel_path, content_hash FROM scan_rows ORDER BY rel_path").fetchall():
        previous = known_paths.get(rel_path)
        if previous is None:
            counts["added"] += 1
            counts["duplicates"] += content_hash in seen_hashes
        else:
            counts["unchanged" if previous == content_hash else "updated"] += 1
        seen_hashes.add(content_hash)
    # A rescan is the truth about its source: paths that vanished from it leave the dataset.
    counts["removed"] = len(cur.execute(
        "DELETE FROM dataset_images di WHERE dataset = ? AND source = ? "
        "AND NOT EXISTS (SELECT 1 FROM scan_rows s WHERE s.rel_path = di.rel_path) RETURNING rel_path",
        [dataset, source],
    ).fetchall())
    cur.execute(
        "INSERT OR IGNORE INTO images SELECT DISTINCT ON (content_hash) content_hash, width, height, n_bytes, format "
        "FROM scan_rows"
    )
    cur.execute(
        "INSERT OR REPLACE INTO dataset_images SELECT ?, ?, rel_path, content_hash, labels, caption, mtime, ? FROM scan_rows",
        [dataset, source, now],
    )
    return counts


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMPTZ)"
    )
    applied = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
    newer = [v for v in applied if v > SCHEMA_VERSION]
    if newer:
        raise DatabaseError(
            f"The database was written by a newer RepLens (schema {max(newer)} > {SCHEMA_VERSION}). "
            "Upgrade RepLens or point REPLENS_DB at another file."
        )
    for version, migration in enumerate(MIGRATIONS, start=1):
        if version in applied:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            migration(con)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, migration.__name__, _now()])
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")


def _locked_error(path: Path, exc: Exception) -> Exception:
    text = str(exc)
    if "lock" not in text.lower():
        return DatabaseError(
            f"Could not open the database {path}: {text.splitlines()[0] if text else type(exc).__name__}. "
            "Check that REPLENS_DB names a RepLens DuckDB file (or a new path) and that its folder is writable."
        )
    holder = text.split("Conflicting lock is held in", 1)[-1].split(". See also")[0].strip()
    return DatabaseLockedError(
        f"The database {path} is open in another process ({holder}). Close that process "
        "(e.g. stop the running RepLens app or CLI command) or set REPLENS_DB to another file."
    )


_CLUSTER_RUN_COLUMNS = ("run_id", "dataset", "encoder_key", "method", "params", "n_clusters", "noise_fraction",
                        "metrics", "parent_run_id", "created_at")


def _cluster_run_row(cur: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any] | None:
    """One cluster_runs row as a dict (JSON columns still text), or None."""
    rows = cur.execute(
        f"SELECT {', '.join(_CLUSTER_RUN_COLUMNS)} FROM cluster_runs WHERE run_id = ?", [run_id]
    ).fetchall()
    return dict(zip(_CLUSTER_RUN_COLUMNS, rows[0])) if rows else None


def _unregister(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow/pandas view. Runs in ``finally`` blocks: inside a transaction
    that has already failed DuckDB refuses even this, and that refusal must not replace the
    error that caused it (the view dies with the cursor's transaction anyway)."""
    with suppress(duckdb.Error):
        cur.unregister(name)


def _check_dataset_name(name: str) -> None:
    if not name or not name.strip() or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise InvalidInputError(f"Dataset name {name!r} is not usable: give 1-200 printable characters.")


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
        dest = destination[start:start + n]
        if n and dest[0] >= 0 and np.array_equal(dest, np.arange(dest[0], dest[0] + n)):
            out[dest[0]:dest[0] + n] = block  # the usual case: extraction wrote in image order
        else:
            keep = dest >= 0
            out[dest[keep]] = block[keep]
        start += n
    return out
