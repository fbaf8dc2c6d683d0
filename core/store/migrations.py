"""The schema, as numbered migrations applied in order and recorded in ``schema_migrations``.

Append new migrations; never edit one that has shipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

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


# Candidate keys only one labeller writes: they tell which labeller computed an edited row's candidates.
_CANDIDATE_FINGERPRINTS: tuple[tuple[str, str], ...] = (
    ("descriptor", "visual"),
    ("delta", "text"),
    ("similarity", "clip"),
    ("synset", "imagenet"),
)


def m006_label_sets(cur: duckdb.DuckDBPyConnection) -> None:
    # Each labelling method keeps its own set of names (run_id, label_set, cluster): computing
    # visual labels no longer overwrites text labels. ``cluster_runs.label_set`` is the set the
    # run shows (NULL: none yet). ``computed_label`` is the labeller's own label, kept as
    # provenance when the name was made unique within its set or renamed by the user.
    #
    # Old rows move into the set named by their method. A user's edit (method 'user') goes into
    # the set of the labeller whose candidates it kept (their keys say which: visual candidates
    # have a "descriptor", text ones a "delta", CLIP ones a "similarity", ImageNet ones a
    # "synset"); an edit without candidates goes into the set the run shows, so the run keeps
    # showing it; a run with only such edits gets a 'user' set. The shown set is the one last
    # computed (the newest machine row), which is what the run showed before.
    old = cur.execute(
        "SELECT run_id, cluster, label, method, candidates::VARCHAR, edited, updated_at FROM cluster_labels"
    ).fetchall()
    cur.execute("ALTER TABLE cluster_runs ADD COLUMN label_set VARCHAR")
    cur.execute(
        """
        CREATE TABLE cluster_label_sets_new (
            run_id VARCHAR NOT NULL,
            label_set VARCHAR NOT NULL,     -- the method that computed it (text, visual, clip …) or 'user'
            cluster INTEGER NOT NULL,
            label VARCHAR NOT NULL,         -- unique within (run_id, label_set)
            method VARCHAR NOT NULL,        -- clip | text | visual | user
            candidates JSON NOT NULL,       -- ranked alternatives with scores (provenance)
            edited BOOLEAN NOT NULL,        -- true once a user changed it
            computed_label VARCHAR,         -- the labeller's own label (NULL for a name only a user gave)
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (run_id, label_set, cluster)
        );
        """
    )
    by_run: dict[str, list[tuple[Any, ...]]] = {}
    for row in old:
        by_run.setdefault(str(row[0]), []).append(row)
    moved: list[list[Any]] = []
    shown: list[list[Any]] = []
    for run_id, rows in by_run.items():
        machine = sorted((r for r in rows if not r[5]), key=lambda r: (r[6], str(r[3])))
        default_set = str(machine[-1][3]) if machine else None
        placed: list[tuple[str, tuple[Any, ...]]] = []
        for r in rows:
            label_set = str(r[3]) if not r[5] else _edited_row_set(r[4]) or default_set or "user"
            placed.append((label_set, r))
            computed = None if r[5] or str(r[3]) == "user" else str(r[2])
            moved.append([run_id, label_set, int(r[1]), str(r[2]), str(r[3]), str(r[4]), bool(r[5]), computed, r[6]])
        newest_edit = max(placed, key=lambda p: (p[1][6], p[0]))[0]
        shown.append([default_set or newest_edit, run_id])
    if moved:
        cur.executemany("INSERT INTO cluster_label_sets_new VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", moved)
    cur.execute("DROP TABLE cluster_labels")
    cur.execute("ALTER TABLE cluster_label_sets_new RENAME TO cluster_labels")
    if shown:
        cur.executemany("UPDATE cluster_runs SET label_set = ? WHERE run_id = ?", shown)


def m007_jobs(cur: duckdb.DuckDBPyConnection) -> None:
    # Long work (extraction, layouts, clustering, diagnostics, bias batteries) as jobs that
    # outlive the browser tab: any session or the CLI can see, cancel and resume them.
    # ``identity`` is (kind, dataset, parameters) hashed: starting the same job twice joins the
    # one that is queued or running. ``owner`` is "pid@host" of the process running it and
    # ``heartbeat_at`` the last time it said it was alive; a running job whose owner stopped
    # beating is marked interrupted and can be resumed (committed work is kept by the job itself).
    cur.execute(
        """
        CREATE TABLE jobs (
            job_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,            -- embed, layout, cluster, diagnostics, bias
            dataset VARCHAR,
            identity VARCHAR NOT NULL,
            params JSON NOT NULL,
            title VARCHAR NOT NULL,
            status VARCHAR NOT NULL,          -- queued, running, done, failed, cancelled, interrupted
            done BIGINT NOT NULL DEFAULT 0,
            total BIGINT,
            unit VARCHAR,                     -- what done/total count ("images", "steps")
            rate DOUBLE,                      -- units per second since the job (re)started
            message VARCHAR,
            result JSON,
            error VARCHAR,
            owner VARCHAR,
            cancel_requested BOOLEAN NOT NULL DEFAULT false,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TIMESTAMPTZ NOT NULL,
            started_at TIMESTAMPTZ,
            heartbeat_at TIMESTAMPTZ,
            finished_at TIMESTAMPTZ
        );
        """
    )


def _edited_row_set(candidates: str | None) -> str | None:
    """The labeller whose candidates an edited row kept, from keys only it writes; None if unknown."""
    try:
        parsed = json.loads(candidates or "[]")
    except ValueError:
        return None
    keys = {k for c in parsed if isinstance(c, dict) for k in c} if isinstance(parsed, list) else set()
    return next((method for key, method in _CANDIDATE_FINGERPRINTS if key in keys), None)


MIGRATIONS: tuple[Callable[[duckdb.DuckDBPyConnection], None], ...] = (
    m001_initial,
    m002_projections,
    m003_clusters,
    m004_snapshots,
    m005_preferences,
    m006_label_sets,
    m007_jobs,
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
