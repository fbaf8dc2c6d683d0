"""Datasets: which paths a folder or zip holds, their images, labels, captions and skipped files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import DatasetNotFoundError, InvalidInputError
from core.names import check_dataset_name
from core.store.connection import StoreConnection, _now, _unregister
from core.store.preferences import LAST_DATASET
from core.store.records import IngestStats, PendingImage


class DatasetsMixin(StoreConnection):
    """Datasets and their images."""

    def ingest(self, dataset: str, source: str, records: Sequence[Any], skipped: Sequence[Any]) -> IngestStats:
        """Record a scan (``core.images.ScanResult`` records/skipped) under ``dataset``.

        All-or-nothing: a failure leaves the database as it was.
        """
        dataset = check_dataset_name(dataset)
        rows, skipped_df = _scan_frame(records), _skipped_frame(skipped)
        now = _now()
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO datasets VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at",
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
                f"python -m core ingest PATH --dataset {dataset}",
                page_message=f"There is no dataset named {dataset!r} (known: {known}). "
                "Add its images on the Data page first.",
            )

    def list_datasets(self) -> pd.DataFrame:
        """One row per dataset: paths, distinct images, skipped files, timestamps."""
        return (
            self._cursor()
            .execute(
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
            )
            .df()
        )

    def dataset_version(self, dataset: str) -> str:
        """A string that changes whenever ``dataset``'s images or any stored vectors change: the
        dataset's last ingest and path count, and per encoder key the vector count and newest
        write (vectors are global, so a write for another dataset changes it too: harmless, a
        cache keyed by it reloads once). Milliseconds at a million rows, unlike the counts of
        :meth:`list_datasets` and ``embedding_status``, which join images to vectors."""
        cur = self._cursor()
        updated = cur.execute("SELECT updated_at FROM datasets WHERE name = ?", [dataset]).fetchall()
        n_paths = cur.execute("SELECT count(*) FROM dataset_images WHERE dataset = ?", [dataset]).fetchall()[0][0]
        vectors = cur.execute(
            "SELECT encoder_key, count(*), max(created_at) FROM embeddings GROUP BY encoder_key ORDER BY encoder_key"
        ).fetchall()
        written = ",".join(f"{key}={n}@{latest}" for key, n, latest in vectors)
        return f"{updated[0][0] if updated else ''}|{n_paths}|{written}"

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
        return (
            self._cursor()
            .execute(
                "SELECT source, rel_path, content_hash, labels, caption FROM dataset_images "
                "WHERE dataset = ? ORDER BY source, rel_path",
                [dataset],
            )
            .df()
        )

    def known_files(self, dataset: str, source: str) -> pd.DataFrame:
        """What the last ingest of ``source`` recorded (for incremental rescans)."""
        return (
            self._cursor()
            .execute(
                "SELECT di.rel_path, di.content_hash, di.labels, di.caption, di.mtime, i.width, i.height, i.n_bytes, "
                "i.format FROM dataset_images di JOIN images i ON i.content_hash = di.content_hash "
                "WHERE di.dataset = ? AND di.source = ?",
                [dataset, source],
            )
            .df()
        )

    def skipped_files(self, dataset: str) -> pd.DataFrame:
        self.require_dataset(dataset)
        return (
            self._cursor()
            .execute(
                "SELECT source, rel_path, reason, stage, seen_at FROM skipped_files "
                "WHERE dataset = ? ORDER BY rel_path",
                [dataset],
            )
            .df()
        )

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

    def dataset_sources(self, dataset: str) -> list[str]:
        """The folders and archives ``dataset`` was scanned from (sorted)."""
        self.require_dataset(dataset)
        rows = (
            self._cursor()
            .execute(
                "SELECT source FROM dataset_images WHERE dataset = ? UNION "
                "SELECT source FROM skipped_files WHERE dataset = ? ORDER BY source",
                [dataset, dataset],
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def rename_dataset(self, old: str, new: str, sources: Mapping[str, str] | None = None) -> None:
        """Give ``old`` the name ``new`` everywhere it is referenced (snapshots, which are frozen
        copies, keep the name they were saved with). ``sources`` maps stored source paths to new
        ones (an upload folder that moved with the name). All or nothing."""
        self.require_dataset(old)
        new = check_dataset_name(new)
        if new == old:
            return
        if new in self.dataset_names():
            raise InvalidInputError(
                f"A dataset named {new!r} already exists; pick another name or delete that one first."
            )
        moved = list((sources or {}).items())
        # The new source of each row, in the copy itself (key columns are copied then deleted
        # rather than updated in place: DuckDB checks keys eagerly inside a transaction).
        source_sql = "CASE source " + "WHEN ? THEN ? " * len(moved) + "ELSE source END" if moved else "source"
        source_params = [text for pair in moved for text in pair]
        with self._transaction() as cur:
            cur.execute("INSERT INTO datasets SELECT ?, created_at, ? FROM datasets WHERE name = ?", [new, _now(), old])
            for table, columns in (
                ("dataset_images", "rel_path, content_hash, labels, caption, mtime, added_at"),
                ("skipped_files", "rel_path, reason, stage, seen_at"),
            ):
                cur.execute(
                    f"INSERT INTO {table} SELECT ?, {source_sql}, {columns} FROM {table} WHERE dataset = ?",
                    [new, *source_params, old],
                )
                cur.execute(f"DELETE FROM {table} WHERE dataset = ?", [old])
            for table in ("runs", "projections", "cluster_runs"):
                cur.execute(f"UPDATE {table} SET dataset = ? WHERE dataset = ?", [new, old])
            # Remembered choices follow the name (copied, then deleted: ``dataset`` is a key column).
            cur.execute(
                "INSERT INTO preferences SELECT name, ?, value, updated_at FROM preferences WHERE dataset = ?",
                [new, old],
            )
            cur.execute("DELETE FROM preferences WHERE dataset = ?", [old])
            cur.execute("UPDATE preferences SET value = ? WHERE name = ? AND value = ?", [new, LAST_DATASET, old])
            cur.execute("DELETE FROM datasets WHERE name = ?", [old])

    def delete_dataset(self, dataset: str) -> dict[str, int]:
        """Remove ``dataset``: its paths, skipped files, cluster runs (with their assignments and
        labels), projections and run records. Images and embeddings stay until
        :meth:`collect_unused` (another dataset may hold the same files); snapshots stay (they
        are self-contained copies). -> rows removed per kind. All or nothing."""
        self.require_dataset(dataset)
        counts: dict[str, int] = {}
        with self._transaction() as cur:

            def delete(name: str, sql: str) -> None:
                counts[name] = len(cur.execute(sql + " RETURNING 1", [dataset]).fetchall())

            runs_of = "SELECT run_id FROM cluster_runs WHERE dataset = ?"
            delete("cluster_labels", f"DELETE FROM cluster_labels WHERE run_id IN ({runs_of})")
            delete("cluster_assignments", f"DELETE FROM cluster_assignments WHERE run_id IN ({runs_of})")
            delete("cluster_runs", "DELETE FROM cluster_runs WHERE dataset = ?")
            delete("projections", "DELETE FROM projections WHERE dataset = ?")
            cur.execute(
                "DELETE FROM projection_points pp WHERE NOT EXISTS "
                "(SELECT 1 FROM projections p WHERE p.projection_key = pp.projection_key)"
            )
            delete("runs", "DELETE FROM runs WHERE dataset = ?")
            delete("skipped_files", "DELETE FROM skipped_files WHERE dataset = ?")
            delete("paths", "DELETE FROM dataset_images WHERE dataset = ?")
            cur.execute("DELETE FROM preferences WHERE dataset = ?", [dataset])
            cur.execute("DELETE FROM preferences WHERE name = ? AND value = ?", [LAST_DATASET, dataset])
            cur.execute("DELETE FROM datasets WHERE name = ?", [dataset])
        return counts

    def referenced_hashes(self) -> set[str]:
        """Content hashes some dataset or snapshot still shows (their thumbnails are in use)."""
        rows = (
            self._cursor()
            .execute("SELECT content_hash FROM dataset_images UNION SELECT content_hash FROM snapshot_points")
            .fetchall()
        )
        return {r[0] for r in rows}

    def collect_unused(self, *, dry_run: bool = False) -> tuple[pd.DataFrame, int]:
        """Embeddings and image records of files no dataset holds any more.

        -> (one row per encoder key: n_vectors, n_values (floats, 4 bytes each), image records
        removed). With ``dry_run`` nothing is deleted. All or nothing.
        """
        unused = "NOT EXISTS (SELECT 1 FROM dataset_images di WHERE di.content_hash = {t}.content_hash)"
        with self._transaction() as cur:
            freed = cur.execute(
                "SELECT encoder_key, count(*) AS n_vectors, coalesce(sum(len(vector)), 0) AS n_values "
                f"FROM embeddings WHERE {unused.format(t='embeddings')} GROUP BY encoder_key ORDER BY encoder_key"
            ).df()
            n_images = int(
                cur.execute(f"SELECT count(*) FROM images WHERE {unused.format(t='images')}").fetchall()[0][0]
            )
            if not dry_run:
                cur.execute(f"DELETE FROM embeddings WHERE {unused.format(t='embeddings')}")
                cur.execute(f"DELETE FROM images WHERE {unused.format(t='images')}")
        if not dry_run:
            self._cursor().execute("CHECKPOINT")
        return freed.astype({"n_vectors": "int64", "n_values": "int64"}), n_images


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


def _scan_frame(records: Sequence[Any]) -> pa.Table:
    """The scanned records as the ``scan_rows`` view (``core.images.ImageRecord`` fields).

    Built column by column as Arrow arrays: a million records become one table in about a
    second, where a pandas frame with a list column took several.
    """
    return pa.table(
        {
            "rel_path": pa.array([r.rel_path for r in records], pa.string()),
            "content_hash": pa.array([r.content_hash for r in records], pa.string()),
            "labels": _labels_array([r.labels for r in records]),
            "caption": pa.array([r.caption for r in records], pa.string()),
            "mtime": pa.array([float(r.mtime) for r in records], pa.float64()),
            "width": pa.array([int(r.width) for r in records], pa.int32()),
            "height": pa.array([int(r.height) for r in records], pa.int32()),
            "n_bytes": pa.array([int(r.n_bytes) for r in records], pa.int64()),
            "format": pa.array([r.format for r in records], pa.string()),
        }
    )


def _labels_array(labels: Sequence[Sequence[str]]) -> pa.ListArray:
    """One list of labels per record, assembled from flat values and offsets (converting a
    million small Python lists one by one is the slowest part of building the table)."""
    offsets = np.zeros(len(labels) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in labels], out=offsets[1:])
    values = pa.array([label for row in labels for label in row], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _skipped_frame(skipped: Sequence[Any]) -> pa.Table:
    """The files a scan could not read, as the ``skipped_rows`` view."""
    return pa.table(
        {
            "rel_path": pa.array([s.rel_path for s in skipped], pa.string()),
            "reason": pa.array([s.reason for s in skipped], pa.string()),
        }
    )


# What a rescan did to each scanned path, counted in one pass. A new path is a duplicate when
# its bytes are already in the dataset (under any source) or at an earlier path of this scan.
_COUNT_SQL = """
    WITH scanned AS (
        SELECT rel_path, content_hash,
               row_number() OVER (PARTITION BY content_hash ORDER BY rel_path) AS nth
        FROM scan_rows
    ),
    known AS (SELECT rel_path, content_hash FROM dataset_images WHERE dataset = $dataset AND source = $source),
    held AS (SELECT DISTINCT content_hash FROM dataset_images WHERE dataset = $dataset)
    SELECT
        count(*) FILTER (WHERE k.rel_path IS NULL),
        count(*) FILTER (WHERE k.rel_path IS NULL AND (s.nth > 1 OR h.content_hash IS NOT NULL)),
        count(*) FILTER (WHERE k.content_hash = s.content_hash),
        count(*) FILTER (WHERE k.rel_path IS NOT NULL AND k.content_hash <> s.content_hash)
    FROM scanned s
    LEFT JOIN known k ON k.rel_path = s.rel_path
    LEFT JOIN held h ON h.content_hash = s.content_hash
"""


def _ingest_rows(cur: duckdb.DuckDBPyConnection, dataset: str, source: str, now: datetime) -> dict[str, int]:
    """Merge the registered ``scan_rows`` into the dataset's paths and images; count what changed.

    Only what changed is written: a rescan of a million unchanged files reads them and writes
    nothing (rewriting every row with INSERT OR REPLACE cost minutes at that size).
    """
    where = {"dataset": dataset, "source": source}
    added, duplicates, unchanged, updated = cur.execute(_COUNT_SQL, where).fetchall()[0]
    # A rescan is the truth about its source: paths that vanished from it leave the dataset.
    removed = cur.execute(
        "DELETE FROM dataset_images di WHERE dataset = $dataset AND source = $source "
        "AND NOT EXISTS (SELECT 1 FROM scan_rows s WHERE s.rel_path = di.rel_path)",
        where,
    ).fetchall()[0][0]
    cur.execute(
        "INSERT INTO images SELECT DISTINCT ON (content_hash) content_hash, width, height, n_bytes, format "
        "FROM scan_rows s WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.content_hash = s.content_hash)"
    )
    # Paths whose content, labels, caption or mtime changed are updated in place (key columns stay).
    cur.execute(
        "UPDATE dataset_images di SET content_hash = s.content_hash, labels = s.labels, caption = s.caption, "
        "mtime = s.mtime, added_at = $now FROM scan_rows s "
        "WHERE di.dataset = $dataset AND di.source = $source AND di.rel_path = s.rel_path "
        "AND (di.content_hash <> s.content_hash OR di.labels IS DISTINCT FROM s.labels "
        "OR di.caption IS DISTINCT FROM s.caption OR di.mtime IS DISTINCT FROM s.mtime)",
        {**where, "now": now},
    )
    cur.execute(
        "INSERT INTO dataset_images SELECT $dataset, $source, rel_path, content_hash, labels, caption, mtime, $now "
        "FROM scan_rows s WHERE NOT EXISTS (SELECT 1 FROM dataset_images di "
        "WHERE di.dataset = $dataset AND di.source = $source AND di.rel_path = s.rel_path)",
        {**where, "now": now},
    )
    return {
        "added": int(added),
        "duplicates": int(duplicates),
        "unchanged": int(unchanged),
        "updated": int(updated),
        "removed": int(removed),
    }
