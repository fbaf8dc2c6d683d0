"""Quality numbers of a clustering: matching accuracy, sizes, silhouette, label agreement, seed stability."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils import check_random_state

from core.cluster.base import NOISE, ClusteringWarning, count_clusters, make_clusterer, seed_from
from core.cluster.kchoice import SILHOUETTE_SAMPLE
from core.errors import InvalidInputError


def hungarian_accuracy(truth: Sequence[Any] | np.ndarray, pred: Sequence[int] | np.ndarray) -> float:
    """Best one-to-one matching of clusters to classes (``scipy.optimize.linear_sum_assignment``).

    The fraction of points whose cluster is matched to their class; noise points (-1) and
    points of clusters left unmatched (more clusters than classes) count as wrong.
    """
    from scipy.optimize import linear_sum_assignment

    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape or truth.ndim != 1:
        raise InvalidInputError(f"truth shape {truth.shape} and prediction shape {pred.shape} should be equal 1-d")
    if len(truth) == 0:
        raise InvalidInputError("hungarian_accuracy of zero points is undefined")
    keep = pred != NOISE
    if not keep.any():
        return 0.0
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred[keep], return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t[keep]), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(truth))


def cluster_sizes(labels: np.ndarray) -> dict[int, int]:
    """cluster id → size, ids ascending (noise included as -1 when present)."""
    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


def silhouette(X: np.ndarray, labels: np.ndarray, *, random_state: Any = 0) -> float | None:
    """Cosine silhouette over non-noise points; None when fewer than 2 clusters (or too few points)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    keep = labels != NOISE
    k = len(np.unique(labels[keep]))
    if k < 2 or keep.sum() <= k:
        return None
    Xk = np.asarray(X, dtype=np.float32)[keep]
    sample = SILHOUETTE_SAMPLE if keep.sum() > SILHOUETTE_SAMPLE else None
    return float(
        silhouette_score(
            Xk,
            labels[keep],
            metric="cosine",
            sample_size=sample,
            random_state=seed_from(check_random_state(random_state)),
        )
    )


def cluster_metrics(
    X: np.ndarray, labels: np.ndarray, truth: Sequence[Any] | np.ndarray | None = None, *, random_state: Any = 0
) -> dict[str, Any]:
    """JSON-safe quality numbers of one clustering.

    Always: n_clusters, noise_fraction, sizes (str(cluster) → n, noise under "-1"),
    silhouette (cosine, non-noise points; None below 2 clusters). With ``truth`` (e.g. folder
    labels): ari and nmi (sklearn; noise counted as one more group) and hungarian_accuracy
    (noise counted wrong), n_classes.
    """
    labels = np.asarray(labels)
    out: dict[str, Any] = {
        "n_clusters": count_clusters(labels),
        "noise_fraction": float(np.mean(labels == NOISE)),
        "sizes": {str(k): v for k, v in cluster_sizes(labels).items()},
        "silhouette": silhouette(X, labels, random_state=random_state),
    }
    if truth is not None:
        out.update(_agreement(np.asarray(truth), labels))
    return out


def _agreement(truth: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """ARI, NMI, Hungarian accuracy and the class count of ``labels`` against ``truth``."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if truth.shape != labels.shape:
        raise InvalidInputError(f"truth has {truth.shape[0]} labels for {labels.shape[0]} points")
    return {
        "ari": float(adjusted_rand_score(truth, labels)),
        "nmi": float(normalized_mutual_info_score(truth, labels)),
        "hungarian_accuracy": hungarian_accuracy(truth, labels),
        "n_classes": int(len(np.unique(truth))),
    }


def folder_truth(images: pd.DataFrame) -> np.ndarray | None:
    """Top-level folder of each image (store ``label`` column), or None when there are < 2 folders."""
    if "label" not in images.columns or images.empty:
        return None
    truth = images["label"].fillna("").astype(str).to_numpy()
    return truth if len(np.unique(truth)) >= 2 else None


def stability(
    X: np.ndarray, method: str, params: dict[str, Any] | None = None, seeds: Sequence[int] = (0, 1, 2)
) -> dict[str, Any]:
    """Seed stability: ARI between the labelings of every pair of ``seeds`` (noise as one group).

    Returns ``{"seeds", "mean_ari", "min_ari", "pairs": [{"a", "b", "ari"}]}``.
    """
    from sklearn.metrics import adjusted_rand_score

    if len(seeds) < 2:
        raise InvalidInputError(f"stability needs >= 2 seeds, got {list(seeds)}")
    params = {k: v for k, v in (params or {}).items() if k != "random_state"}
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusteringWarning)
        for s in seeds:
            runs[int(s)] = make_clusterer(method, {**params, "random_state": int(s)}).fit_predict(X)
    pairs = [{"a": a, "b": b, "ari": float(adjusted_rand_score(runs[a], runs[b]))} for a, b in combinations(runs, 2)]
    aris = [p["ari"] for p in pairs]
    return {
        "seeds": [int(s) for s in seeds],
        "mean_ari": float(np.mean(aris)),
        "min_ari": float(np.min(aris)),
        "pairs": pairs,
    }
