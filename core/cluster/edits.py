"""Edits of a stored run: rename a cluster in place; merge and split make new runs that remember their parent.

Labels of the parent's clusters whose members did not change are carried to the new run,
user renames included.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.cluster.base import NOISE, ClusteringWarning, count_clusters
from core.cluster.browse import cluster_members
from core.cluster.clusterers import HDBSCANClusterer, KMeansClusterer
from core.cluster.kchoice import check_n_clusters
from core.cluster.metrics import cluster_metrics, folder_truth
from core.cluster.runs import ClusterRun, RunData, load_run, run_data, save_run
from core.errors import InvalidInputError
from core.jsonsafe import jsonable
from core.store import Store

SPLIT_METHODS: tuple[str, ...] = ("kmeans", "hdbscan")


def rename_cluster(store: Store, run_id: str, cluster: int, label: str) -> None:
    """Name a cluster (a user edit: it wins over labels computed later)."""
    run = load_run(store, run_id)
    if cluster not in set(run.labels.tolist()):
        raise InvalidInputError(f"run {run_id} has no cluster {cluster}; clusters: {sorted(set(run.labels.tolist()))}")
    store.set_cluster_label(run_id, int(cluster), label)


def merge_clusters(
    store: Store,
    run_id: str,
    clusters: Sequence[int],
    *,
    images: pd.DataFrame | None = None,
    vectors: np.ndarray | None = None,
) -> ClusterRun:
    """A new run (parent ``run_id``) where ``clusters`` become one, numbered as the smallest of them.

    Other clusters keep their ids and labels.
    """
    run = load_run(store, run_id)
    targets = sorted({int(c) for c in clusters})
    present = set(run.labels.tolist())
    missing = [c for c in targets if c not in present or c == NOISE]
    if len(targets) < 2 or missing:
        raise InvalidInputError(
            f"merge needs two or more existing clusters of run {run_id}; got {list(clusters)} "
            f"(clusters: {sorted(present - {NOISE})})"
        )
    data = run_data(store, run, images=images, vectors=vectors)
    labels = data.labels.copy()
    labels[np.isin(labels, targets)] = targets[0]
    params = {"parent_run_id": run_id, "base_method": run.method, "clusters": targets}
    new = _save_edit(store, run, data, labels, "merge", params)
    _carry_labels(store, run, data.labels, new, labels)
    return new


def split_cluster(
    store: Store,
    run_id: str,
    cluster: int,
    *,
    method: str = "kmeans",
    k: int = 2,
    min_cluster_size: int | None = None,
    random_state: Any = 0,
    images: pd.DataFrame | None = None,
    vectors: np.ndarray | None = None,
) -> ClusterRun:
    """A new run (parent ``run_id``) where ``cluster`` is re-clustered with k-means (``k`` parts) or HDBSCAN.

    The largest part keeps the id; the others get new ids after the run's largest. HDBSCAN
    noise inside the cluster becomes noise (-1).
    """
    if method not in SPLIT_METHODS:
        raise InvalidInputError(f"split method={method!r}: choose 'kmeans' or 'hdbscan'")
    run = load_run(store, run_id)
    if cluster == NOISE:
        raise InvalidInputError("noise (-1) is not a cluster; cluster the noise points with a new run instead")
    data = run_data(store, run, images=images, vectors=vectors)
    members = cluster_members(data.labels, cluster)
    sub = _split_labels(data.vectors[members], method, k, min_cluster_size, random_state)
    if count_clusters(sub) < 2:
        raise InvalidInputError(
            f"{method} found no sub-structure in cluster {cluster} ({len(members)} images); "
            "try method='kmeans' or a smaller min_cluster_size."
        )
    labels = data.labels.copy()
    next_id = int(data.labels.max()) + 1
    mapping = {0: cluster, NOISE: NOISE}  # sub ids are size-ordered: part 0 is the largest
    mapping.update({part: next_id + part - 1 for part in range(1, count_clusters(sub))})
    labels[members] = [mapping[int(s)] for s in sub]
    params = {
        "parent_run_id": run_id,
        "base_method": run.method,
        "cluster": int(cluster),
        "method": method,
        "k": int(k) if method == "kmeans" else None,
        "min_cluster_size": min_cluster_size,
        "random_state": jsonable(random_state),
    }
    new = _save_edit(store, run, data, labels, "split", params)
    _carry_labels(store, run, data.labels, new, labels)
    return new


def _split_labels(X: np.ndarray, method: str, k: int, min_cluster_size: int | None, random_state: Any) -> np.ndarray:
    """Size-ordered labels of one cluster's vectors re-clustered with ``method`` (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusteringWarning)
        if method == "kmeans":
            check_n_clusters(k, len(X), "split")
            if k < 2:
                raise InvalidInputError(f"split: k={k} should be >= 2")
            return np.asarray(KMeansClusterer(n_clusters=k, reduce=None, random_state=random_state).fit(X).labels_)
        return np.asarray(
            HDBSCANClusterer(min_cluster_size=min_cluster_size, reduce=None, random_state=random_state).fit(X).labels_
        )


def _save_edit(
    store: Store, run: ClusterRun, data: RunData, labels: np.ndarray, method: str, params: dict[str, Any]
) -> ClusterRun:
    metrics = cluster_metrics(data.vectors, labels, folder_truth(data.images))
    return save_run(
        store,
        run.dataset,
        run.encoder_key,
        method,
        params,
        data.images["content_hash"].tolist(),
        labels,
        metrics,
        parent_run_id=run.run_id,
    )


def _carry_labels(
    store: Store, old: ClusterRun, old_labels: np.ndarray, new: ClusterRun, new_labels: np.ndarray
) -> None:
    """Copy the parent's labels (every label set, user edits included, and which set is shown) to
    clusters whose members did not change."""
    same = [int(c) for c in np.unique(old_labels) if np.array_equal(old_labels == c, new_labels == c)]
    store.copy_cluster_labels(old.run_id, new.run_id, same)
