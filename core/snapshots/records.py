"""Snapshots in the store: save (freeze a cluster run), list, resolve an id, load, delete."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

import core
from core.errors import InvalidInputError
from core.jsonsafe import jsonable, loads_or_empty
from core.snapshots.content import FORMAT, FORMAT_VERSION, build_manifest, clusters_table, content_id, points_table
from core.snapshots.model import MAX_NOTES_CHARS, MAX_TITLE_CHARS, Snapshot, SnapshotError, SnapshotNotFoundError
from core.store import Store


def save_snapshot(store: Store, run_id: str, *, title: str, notes: str = "", projection_key: str | None = None) -> str:
    """Freeze cluster run ``run_id`` as a snapshot and return its id (a sha256 hex digest).

    Coordinates come from ``projection_key``, else from the newest stored projection of the
    run's dataset and encoder that covers every clustered image, else from a PCA of the
    stored embeddings (so a snapshot always has a map). Labels are the label set the run
    shows (``Store.shown_label_set``); clusters without a label there are called "cluster N"
    (and -1 "noise") with method "default". Saving identical content again returns the same
    id and stores nothing new.

    Example::

        sid = save_snapshot(store, "a1b2c3", title="DINO k=8", notes="cats split by pose")
    """
    title = _check_text(title, "title", MAX_TITLE_CHARS, required=True)
    notes = _check_text(notes, "notes", MAX_NOTES_CHARS)
    run = store.snapshot_source_run(run_id)
    if run is None:
        raise SnapshotError(
            f"No cluster run {run_id!r} in {store.path}. Run a clustering first (Clusters page or "
            "`python -m core cluster …`) and pass its run id.",
            page_message=f"No cluster run {run_id!r}: run a clustering on the Clusters page, then save it.",
        )
    assignments: pa.Table = run["assignments"]
    if assignments.num_rows == 0:
        raise SnapshotError(f"Cluster run {run_id!r} has no assignments; rerun the clustering before saving it.")
    hashes = assignments.column("content_hash").to_pylist()
    cluster_ids = assignments.column("cluster").to_numpy().astype(np.int32)
    dataset, encoder_key = run["dataset"], run["encoder_key"]

    # Images the dataset no longer holds keep their cluster, with an empty path and no folders.
    known = store.dataset_images(dataset).set_index("content_hash").reindex(hashes)
    present = known["rel_path"].notna().to_numpy()
    rel_paths = [str(p) if ok else "" for p, ok in zip(known["rel_path"], present)]
    folder_labels = [[str(v) for v in labs] if ok else [] for labs, ok in zip(known["labels"], present)]
    coords, projection = _coordinates(store, dataset, encoder_key, hashes, projection_key)

    points = points_table(hashes, rel_paths, folder_labels, coords[:, 0], coords[:, 1], cluster_ids)
    clusters = _clusters_for_run(cluster_ids, store.cluster_label_rows(run_id))  # the set the run shows
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "title": title,
        "notes": notes,
        "dataset": {"name": dataset},
        "encoder": {"key": encoder_key, "spec": jsonable(store.encoder_spec(encoder_key))},
        "projection": projection,
        "clustering": {
            "run_id": run_id,
            "method": run["method"],
            "params": jsonable(loads_or_empty(run["params"])),
            "metrics": jsonable(loads_or_empty(run["metrics"])),
            "n_clusters": int(run["n_clusters"]),
            "noise_fraction": jsonable(float(run["noise_fraction"])),
        },
    }
    snapshot_id = content_id(header, points, clusters)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = build_manifest(snapshot_id, created, core.__version__, header, points.num_rows, clusters.num_rows)
    insert_snapshot(store, manifest, points, clusters, origin="local", run_id=run_id)
    return snapshot_id


def list_snapshots(store: Store, query: str | None = None) -> pd.DataFrame:
    """Stored snapshots, newest first; ``query`` searches title, notes and dataset name.

    Columns: snapshot_id, title, notes, dataset, encoder_key, cluster_run_id, origin,
    created_at, n_points, n_clusters.
    """
    return store.list_snapshots(query.strip() if query else None)


def resolve_snapshot_id(store: Store, id_or_prefix: str) -> str:
    """The full id of a stored snapshot named by its id or a unique prefix (at least 4 characters)."""
    key = (id_or_prefix or "").strip().lower()
    if len(key) < 4 or not re.fullmatch(r"[0-9a-f]+", key):
        raise SnapshotNotFoundError(
            f"{id_or_prefix!r} is not a snapshot id; give the id or at least its first 4 hex characters "
            "(see `python -m core snapshot list`).",
            page_message=f"{id_or_prefix!r} is not a snapshot id. Open a snapshot from the list on the Snapshots page.",
        )
    found = store.snapshot_ids_starting(key)
    if len(found) == 1:
        return found[0]
    if not found:
        raise SnapshotNotFoundError(
            f"No snapshot {id_or_prefix!r} in {store.path}. List them with `python -m core snapshot list`, or "
            "import a .replens file with `python -m core snapshot import FILE`.",
            page_message=f"No snapshot {id_or_prefix!r} here. Pick one from the list on the Snapshots page, or "
            "import the .replens file someone shared with you there.",
        )
    raise SnapshotNotFoundError(f"{id_or_prefix!r} matches {len(found)} snapshots; give more of the id.")


def load_snapshot(store: Store, snapshot_id: str) -> Snapshot:
    """The snapshot with this id (or unique id prefix)."""
    snapshot_id = resolve_snapshot_id(store, snapshot_id)
    found = store.snapshot_rows(snapshot_id)
    if found is None:  # deleted between resolving and reading
        raise SnapshotNotFoundError(
            f"Snapshot {snapshot_id} was deleted; list them with `python -m core snapshot list`.",
            page_message=f"Snapshot {snapshot_id[:12]} was deleted; pick another from the list on the Snapshots page.",
        )
    row, points, clusters = found
    manifest = json.loads(row["manifest"])
    return Snapshot(
        id=row["snapshot_id"],
        title=row["title"],
        notes=row["notes"],
        created=manifest["created"],
        replens_version=manifest["replens_version"],
        format_version=int(manifest["format_version"]),
        origin=row["origin"],
        dataset=manifest["dataset"],
        encoder=manifest["encoder"],
        projection=manifest["projection"],
        clustering=manifest["clustering"],
        points=_point_frame(points),
        clusters=_cluster_frame(clusters),
    )


def delete_snapshot(store: Store, snapshot_id: str) -> None:
    """Remove a snapshot (thumbnails stay in the cache: images may share them)."""
    if not store.delete_snapshot(resolve_snapshot_id(store, snapshot_id)):
        raise SnapshotNotFoundError(f"Snapshot {snapshot_id!r} was already deleted.")


def insert_snapshot(
    store: Store, manifest: dict[str, Any], points: pa.Table, clusters: pa.Table, *, origin: str, run_id: str | None
) -> bool:
    """Store a checked snapshot (a no-op when its id is already stored); True when it was new."""
    row = {
        "snapshot_id": manifest["id"],
        "title": manifest["title"],
        "notes": manifest["notes"],
        "dataset": manifest["dataset"]["name"],
        "encoder_key": manifest["encoder"]["key"],
        "cluster_run_id": run_id,
        "manifest": json.dumps(manifest, ensure_ascii=False, sort_keys=True),
        "origin": origin,
        "created_at": _utc(manifest["created"]),
    }
    return store.insert_snapshot(row, points, clusters)


def _point_frame(points: pa.Table) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "content_hash": points.column("content_hash").to_pylist(),
            "rel_path": points.column("rel_path").to_pylist(),
            "labels": [list(v) for v in points.column("labels").to_pylist()],
            "x": points.column("x").to_numpy().astype(np.float32),
            "y": points.column("y").to_numpy().astype(np.float32),
            "cluster": points.column("cluster").to_numpy().astype(np.int32),
        }
    )


def _cluster_frame(clusters: pa.Table) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cluster": clusters.column("cluster").to_numpy().astype(np.int32),
            "label": clusters.column("label").to_pylist(),
            "method": clusters.column("method").to_pylist(),
            "candidates": [json.loads(v) for v in clusters.column("candidates").to_pylist()],
            "edited": clusters.column("edited").to_numpy(zero_copy_only=False).astype(bool),
            "size": clusters.column("size").to_numpy().astype(np.int64),
        }
    )


def _utc(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _clusters_for_run(cluster_ids: np.ndarray, labels: pa.Table) -> pa.Table:
    """One row per cluster of the run: its stored label, or a default name ("cluster N", "noise")."""
    numbers, sizes = np.unique(cluster_ids, return_counts=True)
    stored = {int(r["cluster"]): r for r in labels.to_pylist()}
    rows = []
    for c, size in zip(numbers.tolist(), sizes.tolist()):
        r = stored.get(c)
        if r is None:
            rows.append(
                {
                    "cluster": c,
                    "label": "noise" if c < 0 else f"cluster {c}",
                    "method": "default",
                    "candidates": [],
                    "edited": False,
                    "size": size,
                }
            )
        else:
            rows.append(
                {
                    "cluster": c,
                    "label": r["label"],
                    "method": r["method"],
                    "candidates": loads_or_empty(r["candidates"]),
                    "edited": bool(r["edited"]),
                    "size": size,
                }
            )
    return clusters_table(pd.DataFrame(rows, columns=["cluster", "label", "method", "candidates", "edited", "size"]))


def _coordinates(
    store: Store, dataset: str, encoder_key: str, hashes: list[str], projection_key: str | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The map of the clustered images: the named projection, the newest covering one, or a PCA."""
    projections = store.list_projections(dataset)
    if projection_key is not None:
        rows = projections[projections["projection_key"] == projection_key]
        loaded = store.load_projection(projection_key) if len(rows) else None
        if loaded is None:
            raise SnapshotError(
                f"No projection {projection_key!r} for dataset {dataset!r}; compute the map first "
                "or leave the projection out to use the newest one."
            )
        coords = _align(loaded, hashes)
        if coords is None:
            raise SnapshotError(
                f"Projection {projection_key!r} does not place every clustered image; recompute the "
                "map on the current images or leave the projection out."
            )
        return coords, _projection_meta(rows.iloc[0])
    for _, row in projections[projections["encoder_key"] == encoder_key].iterrows():  # newest first
        loaded = store.load_projection(row["projection_key"])
        coords = _align(loaded, hashes) if loaded is not None else None
        if coords is not None:
            return coords, _projection_meta(row)
    return _pca_coordinates(store, dataset, encoder_key, hashes), {
        "key": None,
        "method": "pca",
        "params": {"n_components": 2, "svd_solver": "full", "computed_for": "snapshot"},
    }


def _projection_meta(row: pd.Series) -> dict[str, Any]:
    return {
        "key": str(row["projection_key"]),
        "method": str(row["method"]),
        "params": jsonable(loads_or_empty(row["params"])),
    }


def _align(loaded: tuple[list[str], np.ndarray], hashes: list[str]) -> np.ndarray | None:
    """Stored coordinates in ``hashes`` order, or None when one is missing or not finite."""
    stored_hashes, coords = loaded
    position = {h: i for i, h in enumerate(stored_hashes)}
    idx = [position.get(h, -1) for h in hashes]
    if min(idx, default=0) < 0:
        return None
    out = np.asarray(coords, dtype=np.float32)[idx]
    return out if np.isfinite(out).all() else None


def _pca_coordinates(store: Store, dataset: str, encoder_key: str, hashes: list[str]) -> np.ndarray:
    from sklearn.decomposition import PCA

    frame, matrix = store.load_embeddings(dataset, encoder_key)
    position = {h: i for i, h in enumerate(frame["content_hash"])}
    missing = [h for h in hashes if h not in position]
    if missing:
        raise SnapshotError(
            f"{len(missing)} clustered images have no stored {encoder_key} embedding, so no map can "
            "be computed; compute a projection for the run's images first."
        )
    x = matrix[[position[h] for h in hashes]].astype(np.float64)
    out = np.zeros((len(hashes), 2), dtype=np.float32)
    k = min(2, x.shape[0], x.shape[1])
    if k >= 1 and x.shape[0] >= 2:
        out[:, :k] = PCA(n_components=k, svd_solver="full").fit_transform(x).astype(np.float32)
    return out


def _check_text(value: Any, name: str, max_chars: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"Snapshot {name} must be text, got {type(value).__name__}.")
    if required and not value.strip():
        raise InvalidInputError(f"Give the snapshot a {name} (1-{max_chars} characters).")
    if len(value) > max_chars:
        raise InvalidInputError(f"Snapshot {name} has {len(value)} characters; the most is {max_chars}.")
    return value.strip() if name == "title" else value
