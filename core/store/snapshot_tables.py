"""Snapshot rows. Snapshots copy what they show (see m004); core.snapshots builds, checks and hashes
them. These methods only move rows; points and clusters travel as Arrow tables.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from core.store.clusters import _cluster_run_row
from core.store.connection import StoreConnection, _unregister


class SnapshotTablesMixin(StoreConnection):
    """Immutable snapshots and the cluster runs they are made from."""

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
        run["labels"] = self.cluster_label_rows(run_id)  # type: ignore[attr-defined]  # the shown set
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
                [
                    snapshot_id,
                    row["title"],
                    row["notes"],
                    row["dataset"],
                    row["encoder_key"],
                    row["cluster_run_id"],
                    row["manifest"],
                    row["origin"],
                    row["created_at"],
                ],
            )
            cur.register("snap_points", points)
            cur.register("snap_clusters", clusters)
            try:
                cur.execute(
                    "INSERT INTO snapshot_points "
                    "SELECT ?, content_hash, rel_path, labels, x, y, cluster FROM snap_points",
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
        names = (
            "snapshot_id",
            "title",
            "notes",
            "dataset",
            "encoder_key",
            "cluster_run_id",
            "manifest",
            "origin",
            "created_at",
        )
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
        return [
            r[0]
            for r in self._cursor()
            .execute(
                "SELECT snapshot_id FROM snapshots WHERE starts_with(snapshot_id, ?) ORDER BY snapshot_id", [prefix]
            )
            .fetchall()
        ]

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
        return {
            t: int(cur.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0])
            for t in ("snapshots", "snapshot_points", "snapshot_clusters")
        }
