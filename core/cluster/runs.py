"""Stored clusterings: fit, score and save a run; reopen it; align it with its images and vectors."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from core.cluster.base import clustering_methods, make_clusterer
from core.cluster.metrics import cluster_metrics, folder_truth, stability
from core.errors import InvalidInputError, RepLensError
from core.jsonsafe import jsonable
from core.store import Store


class ClusterRunNotFoundError(RepLensError, KeyError):
    """A cluster run id the store does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class ClusterRun:
    """A stored clustering: ``labels[i]`` is the cluster of image ``hashes[i]``."""

    run_id: str
    dataset: str
    encoder_key: str
    method: str
    params: dict[str, Any]
    hashes: list[str]
    labels: np.ndarray
    metrics: dict[str, Any]
    n_clusters: int
    noise_fraction: float
    parent_run_id: str | None = None
    created_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # run_clustering found this stored run for the same inputs and fitted nothing

    def assignments(self) -> pd.DataFrame:
        return pd.DataFrame({"content_hash": self.hashes, "cluster": self.labels})


@dataclass
class RunData:
    """A run's images (store order), their vectors and cluster labels, row-aligned."""

    images: pd.DataFrame
    vectors: np.ndarray
    labels: np.ndarray


def run_clustering(
    store: Store,
    dataset: str,
    encoder_key: str,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    images: pd.DataFrame | None = None,
    vectors: np.ndarray | None = None,
    stability_seeds: Sequence[int] = (),
    reuse: bool = True,
) -> ClusterRun:
    """Cluster ``dataset``'s vectors under ``encoder_key`` with ``method``, score it and store the run.

    Metrics include the folder-label scores when the dataset has at least two top-level
    folders, and seed stability when ``stability_seeds`` (two or more) are given.
    ``images``/``vectors`` may be passed when the caller has them (store order).

    With ``reuse`` (the default), a stored fit of the same dataset, encoder key, method, parameters
    (after the clusterer's defaults are filled in, seed included) and set of images is returned
    instead of a second identical run, with ``reused=True`` (stability is added to it if asked for
    and missing). ``reuse=False`` always fits and stores a new run.
    """
    clusterer = make_clusterer(method, params)
    if images is None or vectors is None:
        images, vectors = store.load_embeddings(dataset, encoder_key)
    if reuse:
        same = find_same_run(store, dataset, encoder_key, method, clusterer.get_params(), images["content_hash"])
        if same is not None:
            if len(stability_seeds) >= 2 and (same.metrics.get("stability") or {}).get("seeds") != list(
                stability_seeds
            ):
                record_stability(
                    store, same, run_data(store, same, images=images, vectors=vectors).vectors, stability_seeds
                )
            return same
    started = time.perf_counter()
    clusterer.fit(vectors)
    seconds = time.perf_counter() - started
    labels = clusterer.labels_
    metrics = cluster_metrics(vectors, labels, folder_truth(images), random_state=0)
    metrics["seconds"] = round(seconds, 4)
    metrics.update(getattr(clusterer, "extra_", {}))
    if len(stability_seeds) >= 2:
        metrics["stability"] = stability(vectors, method, clusterer.get_params(), stability_seeds)
    return save_run(
        store, dataset, encoder_key, method, clusterer.get_params(), images["content_hash"].tolist(), labels, metrics
    )


def save_run(
    store: Store,
    dataset: str,
    encoder_key: str,
    method: str,
    params: dict[str, Any],
    hashes: list[str],
    labels: np.ndarray,
    metrics: dict[str, Any],
    parent_run_id: str | None = None,
) -> ClusterRun:
    """Store a finished clustering under a new run id (params and metrics made JSON-safe)."""
    run_id = uuid.uuid4().hex[:12]
    params, metrics = jsonable(params), jsonable(metrics)
    labels = np.asarray(labels, dtype=np.int64)
    store.save_cluster_run(
        run_id,
        dataset,
        encoder_key,
        method,
        params,
        hashes,
        labels,
        metrics,
        metrics["n_clusters"],
        metrics["noise_fraction"],
        parent_run_id,
    )
    return ClusterRun(
        run_id,
        dataset,
        encoder_key,
        method,
        params,
        list(hashes),
        labels,
        metrics,
        metrics["n_clusters"],
        metrics["noise_fraction"],
        parent_run_id,
    )


def find_same_run(
    store: Store,
    dataset: str,
    encoder_key: str,
    method: str,
    params: dict[str, Any],
    hashes: Sequence[str] | pd.Series,
) -> ClusterRun | None:
    """The newest stored fit (not a merge or split) of exactly these inputs, marked ``reused``; else None.

    ``params`` are the clusterer's full parameters (``get_params()``), compared as stored (JSON-safe).
    """
    runs = store.list_cluster_runs(dataset)
    if runs.empty:
        return None
    wanted = json.loads(json.dumps(jsonable(params)))  # as the store gives it back
    image_set = set(hashes)
    for row in runs.itertuples(index=False):
        if row.encoder_key != encoder_key or row.method != method or isinstance(row.parent_run_id, str):
            continue
        if json.loads(str(row.params or "{}")) != wanted:
            continue
        run = load_run(store, str(row.run_id))
        if len(run.hashes) == len(image_set) and set(run.hashes) == image_set:
            run.reused = True
            return run
    return None


def load_run(store: Store, run_id: str) -> ClusterRun:
    """A stored run (hashes sorted); ``ClusterRunNotFoundError`` when there is none."""
    found = store.load_cluster_run(run_id)
    if found is None:
        runs = store.list_cluster_runs()
        known = ", ".join(runs["run_id"].head(5)) if len(runs) else "none yet"
        raise ClusterRunNotFoundError(
            f"No cluster run {run_id!r} (recent: {known}). Create one with: "
            "python -m core cluster --dataset NAME --encoder ID --method hdbscan"
        )
    meta, hashes, labels = found
    return ClusterRun(
        meta["run_id"],
        meta["dataset"],
        meta["encoder_key"],
        meta["method"],
        meta["params"],
        hashes,
        labels,
        meta["metrics"],
        int(meta["n_clusters"]),
        float(meta["noise_fraction"]),
        meta["parent_run_id"],
        meta["created_at"],
    )


def list_runs(store: Store, dataset: str | None = None) -> pd.DataFrame:
    """Stored runs, newest first (params/metrics as JSON text)."""
    return store.list_cluster_runs(dataset)


def run_data(
    store: Store, run: ClusterRun, *, images: pd.DataFrame | None = None, vectors: np.ndarray | None = None
) -> RunData:
    """The run's images and vectors (store order) with their labels; images added after the run are left out."""
    if images is None or vectors is None:
        images, vectors = store.load_embeddings(run.dataset, run.encoder_key)
    position = pd.Index(run.hashes).get_indexer(pd.Index(images["content_hash"]))
    keep = position >= 0
    if not keep.any():
        raise InvalidInputError(f"run {run.run_id}: none of its images has a vector under {run.encoder_key} any more")
    images = images.loc[keep].reset_index(drop=True)
    return RunData(images, np.ascontiguousarray(vectors[keep]), run.labels[position[keep]])


def record_stability(
    store: Store, run: ClusterRun, vectors: np.ndarray, seeds: Sequence[int] = (0, 1, 2)
) -> dict[str, Any]:
    """Seed stability of a stored run, saved with its metrics (so it reopens and snapshots carry it).

    ``vectors`` are the run's own, row ``i`` for ``run.hashes[i]``."""
    if run.method not in clustering_methods():
        raise InvalidInputError(
            f"Run {run.run_id} is a {run.method}, an edit rather than a fit: it has no seed to vary."
        )
    result = stability(vectors, run.method, run.params, seeds)
    store.add_cluster_run_metrics(run.run_id, {"stability": result})
    run.metrics["stability"] = result
    return result
