"""Cluster runs: assignments of images to clusters, their metrics and their labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import InvalidInputError
from core.jsonsafe import loads_or_empty
from core.store.connection import StoreConnection, _json_text, _now, _unregister


class ClustersMixin(StoreConnection):
    """Stored clusterings and cluster names."""

    def save_cluster_run(
        self,
        run_id: str,
        dataset: str,
        encoder_key: str,
        method: str,
        params: dict[str, Any],
        hashes: Sequence[str],
        labels: np.ndarray,
        metrics: dict[str, Any],
        n_clusters: int,
        noise_fraction: float,
        parent_run_id: str | None = None,
    ) -> None:
        """Store one clustering (run row + one assignment per image hash, -1 = noise) in one transaction.

        ``params`` and ``metrics`` must be JSON-serialisable (plain Python values).
        """
        labels = np.asarray(labels)
        if labels.shape != (len(hashes),):
            raise InvalidInputError(f"labels shape {labels.shape} does not match {len(hashes)} hashes")
        if len(set(hashes)) != len(hashes):
            raise InvalidInputError(f"{len(hashes) - len(set(hashes))} duplicate image hashes in a cluster run")
        table = pa.table(
            {"content_hash": pa.array(list(hashes), pa.string()), "cluster": pa.array(labels.astype(np.int32))}
        )
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO cluster_runs (run_id, dataset, encoder_key, method, params, n_clusters, noise_fraction, "
                "metrics, parent_run_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    dataset,
                    encoder_key,
                    method,
                    _json_text(params),
                    int(n_clusters),
                    float(noise_fraction),
                    _json_text(metrics),
                    parent_run_id,
                    _now(),
                ],
            )
            cur.register("assignments", table)
            try:
                cur.execute(
                    "INSERT INTO cluster_assignments SELECT ?, content_hash, cluster FROM assignments", [run_id]
                )
            finally:
                _unregister(cur, "assignments")

    def load_cluster_run(self, run_id: str) -> tuple[dict[str, Any], list[str], np.ndarray] | None:
        """(meta, hashes, labels) of a stored clustering, hashes sorted; None when there is no such run."""
        cur = self._cursor()
        meta = _cluster_run_row(cur, run_id)
        if meta is None:
            return None
        meta["params"], meta["metrics"] = loads_or_empty(meta["params"]), loads_or_empty(meta["metrics"])
        table = cur.sql(
            "SELECT content_hash, cluster FROM cluster_assignments WHERE run_id = ? ORDER BY content_hash",
            params=[run_id],
        ).to_arrow_table()
        labels = table.column("cluster").to_numpy().astype(np.int64)
        return meta, table.column("content_hash").to_pylist(), labels

    def list_cluster_runs(self, dataset: str | None = None) -> pd.DataFrame:
        """Every stored clustering (newest first), optionally of one dataset; params/metrics as JSON text."""
        sql = (
            "SELECT run_id, dataset, encoder_key, method, params, n_clusters, noise_fraction, metrics, "
            "parent_run_id, created_at FROM cluster_runs"
        )
        if dataset is not None:
            return self._cursor().execute(sql + " WHERE dataset = ? ORDER BY created_at DESC", [dataset]).df()
        return self._cursor().execute(sql + " ORDER BY created_at DESC").df()

    def save_cluster_labels(self, run_id: str, rows: Sequence[dict[str, Any]]) -> int:
        """Upsert machine labels (dicts with cluster, label, method, candidates) in one transaction.

        A label a user edited is never overwritten. Returns how many rows were written.
        """
        frame = pd.DataFrame(
            {
                "cluster": [int(r["cluster"]) for r in rows],
                "label": [str(r["label"]) for r in rows],
                "method": [str(r["method"]) for r in rows],
                "candidates": [_json_text(r.get("candidates", [])) for r in rows],
            },
            columns=["cluster", "label", "method", "candidates"],
        ).astype({"cluster": "int64", "label": "object", "method": "object", "candidates": "object"})
        if frame.empty:
            return 0
        with self._transaction() as cur:
            edited = {
                r[0]
                for r in cur.execute(
                    "SELECT cluster FROM cluster_labels WHERE run_id = ? AND edited", [run_id]
                ).fetchall()
            }
            cur.register("label_rows", frame)
            try:
                cur.execute(
                    "INSERT INTO cluster_labels SELECT ?, cluster, label, method, candidates, false, ? FROM label_rows "
                    "ON CONFLICT (run_id, cluster) DO UPDATE SET label = excluded.label, method = excluded.method, "
                    "candidates = excluded.candidates, updated_at = excluded.updated_at "
                    "WHERE NOT cluster_labels.edited",
                    [run_id, _now()],
                )
            finally:
                _unregister(cur, "label_rows")
        return int((~frame["cluster"].isin(edited)).sum())

    def load_cluster_labels(self, run_id: str) -> pd.DataFrame:
        """cluster, label, method, candidates (parsed), edited, updated_at; one row per labelled cluster."""
        frame = (
            self._cursor()
            .execute(
                "SELECT cluster, label, method, candidates, edited, updated_at FROM cluster_labels WHERE run_id = ? "
                "ORDER BY cluster",
                [run_id],
            )
            .df()
        )
        frame["candidates"] = [loads_or_empty(c) for c in frame["candidates"]]
        return frame

    def add_cluster_run_metrics(self, run_id: str, metrics: dict[str, Any]) -> None:
        """Add measurements made after the fit (e.g. seed stability) to a run's metrics.

        Assignments never change; only keys in ``metrics`` are added or replaced."""
        with self._transaction() as cur:
            row = cur.execute("SELECT metrics FROM cluster_runs WHERE run_id = ?", [run_id]).fetchall()
            if not row:
                raise InvalidInputError(f"No cluster run {run_id!r} to add metrics to.")
            merged = {**loads_or_empty(row[0][0]), **metrics}
            cur.execute("UPDATE cluster_runs SET metrics = ? WHERE run_id = ?", [_json_text(merged), run_id])

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


_CLUSTER_RUN_COLUMNS = (
    "run_id",
    "dataset",
    "encoder_key",
    "method",
    "params",
    "n_clusters",
    "noise_fraction",
    "metrics",
    "parent_run_id",
    "created_at",
)


def _cluster_run_row(cur: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any] | None:
    """One cluster_runs row as a dict (JSON columns still text), or None."""
    rows = cur.execute(
        f"SELECT {', '.join(_CLUSTER_RUN_COLUMNS)} FROM cluster_runs WHERE run_id = ?", [run_id]
    ).fetchall()
    return dict(zip(_CLUSTER_RUN_COLUMNS, rows[0])) if rows else None
