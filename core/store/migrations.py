"""The schema, as numbered migrations applied in order and recorded in ``schema_migrations``.

Append new migrations; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import duckdb

from core.errors import DatabaseError


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


def m005_preferences(cur: duckdb.DuckDBPyConnection) -> None:
    # What the user last picked, so a reload or a restart opens it again. ``dataset`` is '' for
    # app-wide choices (the last dataset) and the dataset's name for per-dataset ones (its last
    # encoder key); renaming or deleting a dataset updates or clears its rows.
    cur.execute(
        """
        CREATE TABLE preferences (
            name VARCHAR NOT NULL,             -- 'last_dataset', 'last_encoder_key'
            dataset VARCHAR NOT NULL,          -- '' = app-wide
            value VARCHAR NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (name, dataset)
        );
        """
    )


MIGRATIONS: tuple[Callable[[duckdb.DuckDBPyConnection], None], ...] = (
    m001_initial,
    m002_projections,
    m003_clusters,
    m004_snapshots,
    m005_preferences,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Bring the file up to SCHEMA_VERSION; refuse a file written by a newer RepLens."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMPTZ)"
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
            applied_at = datetime.now(UTC)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, migration.__name__, applied_at])
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
