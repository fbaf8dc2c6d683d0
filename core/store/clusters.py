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

    def save_cluster_labels(
        self, run_id: str, rows: Sequence[dict[str, Any]], label_set: str | None = None, *, show: bool = False
    ) -> int:
        """Upsert computed labels into one label set of a run, in one transaction.

        ``rows`` are dicts with cluster, label, method, candidates and optionally
        ``computed_label`` (the labeller's own label when ``label`` was changed to make it unique;
        default ``label``). ``label_set`` defaults to the rows' method (they must share one, apart
        from rows of method 'user'; all 'user' rows go into the 'user' set). Other
        sets are never touched, and a label a user edited in this set is never overwritten. The set
        becomes the run's shown set when ``show`` is true or the run shows none yet.
        Returns how many rows were written.
        """
        frame = pd.DataFrame(
            {
                "cluster": [int(r["cluster"]) for r in rows],
                "label": [str(r["label"]) for r in rows],
                "method": [str(r["method"]) for r in rows],
                "candidates": [_json_text(r.get("candidates", [])) for r in rows],
                "computed_label": [str(r.get("computed_label") or r["label"]) for r in rows],
            },
            columns=["cluster", "label", "method", "candidates", "computed_label"],
        ).astype(
            {
                "cluster": "int64",
                "label": "object",
                "method": "object",
                "candidates": "object",
                "computed_label": "object",
            }
        )
        if frame.empty:
            return 0
        if label_set is None:
            methods = sorted(set(frame["method"]) - {USER_LABEL_SET}) or [USER_LABEL_SET]
            if len(methods) != 1:
                raise InvalidInputError(f"labels of several methods ({', '.join(methods)}) need a label_set to go into")
            label_set = methods[0]
        label_set = _check_set_name(label_set)
        with self._transaction() as cur:
            edited = {
                r[0]
                for r in cur.execute(
                    "SELECT cluster FROM cluster_labels WHERE run_id = ? AND label_set = ? AND edited",
                    [run_id, label_set],
                ).fetchall()
            }
            cur.register("label_rows", frame)
            try:
                cur.execute(
                    "INSERT INTO cluster_labels SELECT ?, ?, cluster, label, method, candidates, false, "
                    "computed_label, ? FROM label_rows ON CONFLICT (run_id, label_set, cluster) DO UPDATE SET "
                    "label = excluded.label, method = excluded.method, candidates = excluded.candidates, "
                    "computed_label = excluded.computed_label, updated_at = excluded.updated_at "
                    "WHERE NOT cluster_labels.edited",
                    [run_id, label_set, _now()],
                )
            finally:
                _unregister(cur, "label_rows")
            _show_set(cur, run_id, label_set, only_if_unset=not show)
        return int((~frame["cluster"].isin(edited)).sum())

    def load_cluster_labels(self, run_id: str, label_set: str | None = None) -> pd.DataFrame:
        """One row per labelled cluster of one label set (default: the set the run shows).

        Columns: cluster, label, method, candidates (parsed), edited, updated_at, label_set,
        computed_label. Empty (same columns) when the run has no labels or no such set.
        """
        cur = self._cursor()
        name = label_set if label_set is not None else _shown_set(cur, run_id)
        frame = cur.execute(
            "SELECT cluster, label, method, candidates, edited, updated_at, label_set, computed_label "
            "FROM cluster_labels WHERE run_id = ? AND label_set = ? ORDER BY cluster",
            [run_id, name or ""],
        ).df()
        frame["candidates"] = [loads_or_empty(c) for c in frame["candidates"]]
        return frame

    def cluster_label_rows(self, run_id: str, label_set: str | None = None) -> pa.Table:
        """The labels of one set (default: the shown one) as a snapshot copies them: an Arrow table
        of cluster, label, method, candidates (JSON text), edited, ordered by cluster."""
        cur = self._cursor()
        name = label_set if label_set is not None else _shown_set(cur, run_id)
        return cur.sql(
            "SELECT cluster, label, method, candidates::VARCHAR AS candidates, edited FROM cluster_labels "
            "WHERE run_id = ? AND label_set = ? ORDER BY cluster",
            params=[run_id, name or ""],
        ).to_arrow_table()

    def list_label_sets(self, run_id: str) -> pd.DataFrame:
        """A run's label sets by name: label_set, n_labels, n_edited, updated_at, shown (exactly one
        row is shown when the run has any labels)."""
        cur = self._cursor()
        frame = cur.execute(
            "SELECT label_set, count(*) AS n_labels, count(*) FILTER (WHERE edited) AS n_edited, "
            "max(updated_at) AS updated_at FROM cluster_labels WHERE run_id = ? GROUP BY label_set ORDER BY label_set",
            [run_id],
        ).df()
        frame["shown"] = frame["label_set"] == _shown_set(cur, run_id)
        return frame.astype({"n_labels": "int64", "n_edited": "int64", "shown": "bool"})

    def shown_label_set(self, run_id: str) -> str | None:
        """The label set a run shows (its names on the map, in pickers, in snapshots); None if it
        has no labels."""
        return _shown_set(self._cursor(), run_id)

    def set_shown_label_set(self, run_id: str, label_set: str) -> None:
        """Show ``label_set`` for this run from now on (it must hold labels of the run)."""
        with self._transaction() as cur:
            if not cur.execute(
                "SELECT 1 FROM cluster_labels WHERE run_id = ? AND label_set = ? LIMIT 1", [run_id, label_set]
            ).fetchall():
                sets = [r[0] for r in _set_names(cur, run_id)]
                raise InvalidInputError(
                    f"Run {run_id} has no label set {label_set!r}; "
                    + (f"its sets are {', '.join(sets)}." if sets else "label its clusters first.")
                )
            _show_set(cur, run_id, label_set, only_if_unset=False)

    def set_cluster_label(self, run_id: str, cluster: int, label: str, label_set: str | None = None) -> str:
        """A user's name for a cluster in one label set (default: the shown set, else a new 'user'
        set that becomes shown); it wins over any later recomputation of that set.

        Method becomes 'user'; the labeller's candidates and label stay as provenance. Names are
        unique within a set: a name another cluster of the set has (ignoring case) raises
        :class:`LabelTakenError`. Returns the set the name went into.
        """
        if not label or not label.strip():
            raise InvalidInputError(f"label {label!r} is empty; type a name for cluster {cluster}")
        label = label.strip()
        with self._transaction() as cur:
            name = label_set if label_set is not None else _shown_set(cur, run_id) or USER_LABEL_SET
            name = _check_set_name(name)
            for other, other_label in cur.execute(
                "SELECT cluster, label FROM cluster_labels WHERE run_id = ? AND label_set = ? AND cluster <> ?",
                [run_id, name, int(cluster)],
            ).fetchall():
                if str(other_label).strip().casefold() == label.casefold():
                    raise LabelTakenError(label, int(cluster), int(other), name)
            cur.execute(
                "INSERT INTO cluster_labels VALUES (?, ?, ?, ?, 'user', '[]', true, NULL, ?) "
                "ON CONFLICT (run_id, label_set, cluster) DO UPDATE SET label = excluded.label, method = 'user', "
                "edited = true, updated_at = excluded.updated_at",
                [run_id, name, int(cluster), label, _now()],
            )
            _show_set(cur, run_id, name, only_if_unset=True)
        return name

    def copy_cluster_labels(self, from_run: str, to_run: str, clusters: Sequence[int]) -> int:
        """Copy every label set's rows of ``clusters`` (edits included) from one run to another,
        and which set is shown. Returns how many rows were copied."""
        keep = pd.DataFrame({"cluster": pd.array([int(c) for c in clusters], dtype="int64")})
        with self._transaction() as cur:
            cur.register("kept_clusters", keep)
            try:
                copied = cur.execute(
                    "INSERT INTO cluster_labels SELECT ?, label_set, cluster, label, method, candidates, edited, "
                    "computed_label, updated_at FROM cluster_labels WHERE run_id = ? "
                    "AND cluster IN (SELECT cluster FROM kept_clusters) "
                    "ON CONFLICT DO NOTHING RETURNING 1",
                    [to_run, from_run],
                ).fetchall()
            finally:
                _unregister(cur, "kept_clusters")
            shown = _shown_set(cur, from_run)
            present = {str(r[0]) for r in _set_names(cur, to_run)}
            if shown is not None and shown in present:
                _show_set(cur, to_run, shown, only_if_unset=False)
            elif present:
                _show_set(cur, to_run, sorted(present)[0], only_if_unset=True)
        return len(copied)

    def add_cluster_run_metrics(self, run_id: str, metrics: dict[str, Any]) -> None:
        """Add measurements made after the fit (e.g. seed stability) to a run's metrics.

        Assignments never change; only keys in ``metrics`` are added or replaced."""
        with self._transaction() as cur:
            row = cur.execute("SELECT metrics FROM cluster_runs WHERE run_id = ?", [run_id]).fetchall()
            if not row:
                raise InvalidInputError(f"No cluster run {run_id!r} to add metrics to.")
            merged = {**loads_or_empty(row[0][0]), **metrics}
            cur.execute("UPDATE cluster_runs SET metrics = ? WHERE run_id = ?", [_json_text(merged), run_id])


USER_LABEL_SET = "user"
MAX_SET_NAME = 64


class LabelTakenError(InvalidInputError):
    """A user's name for a cluster is already another cluster's name in the same label set."""

    def __init__(self, label: str, cluster: int, other: int, label_set: str) -> None:
        self.label, self.cluster, self.other, self.label_set = label, cluster, other, label_set
        super().__init__(
            f"Cluster {other} is already called “{label}” in the {label_set} labels; names are unique within "
            f"a label set. Pick another name for cluster {cluster} (or rename cluster {other} first)."
        )


def _check_set_name(name: str) -> str:
    name = str(name).strip()
    if not name or len(name) > MAX_SET_NAME:
        raise InvalidInputError(f"label set name {name!r} should be 1 to {MAX_SET_NAME} characters")
    return name


def _set_names(cur: duckdb.DuckDBPyConnection, run_id: str) -> list[tuple[Any, ...]]:
    """(label_set, newest update) of a run's sets, by name."""
    return cur.execute(
        "SELECT label_set, max(updated_at) FROM cluster_labels WHERE run_id = ? GROUP BY label_set ORDER BY label_set",
        [run_id],
    ).fetchall()


def _shown_set(cur: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    """The set a run shows: the one recorded, while it holds labels; else its first set by name."""
    recorded = cur.execute("SELECT label_set FROM cluster_runs WHERE run_id = ?", [run_id]).fetchall()
    sets = [str(r[0]) for r in _set_names(cur, run_id)]
    if recorded and recorded[0][0] in sets:
        return str(recorded[0][0])
    return sets[0] if sets else None


def _show_set(cur: duckdb.DuckDBPyConnection, run_id: str, label_set: str, *, only_if_unset: bool) -> None:
    """Record ``label_set`` as the run's shown set (``only_if_unset``: only when none is recorded)."""
    sql = "UPDATE cluster_runs SET label_set = ? WHERE run_id = ?"
    if only_if_unset:
        sql += (
            " AND (label_set IS NULL OR NOT EXISTS (SELECT 1 FROM cluster_labels l "
            "WHERE l.run_id = cluster_runs.run_id AND l.label_set = cluster_runs.label_set))"
        )
    cur.execute(sql, [label_set, run_id])


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
