"""The cluster browser's helpers (pure numpy: the Clusters page renders what these return).

Centroids are the normalised mean of each cluster's normalised vectors; similarities are cosines.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.cluster.base import NOISE, l2_normalize
from core.errors import InvalidInputError


def centroids(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids, unit-length centroids): the normalised mean of each cluster's normalised vectors."""
    Xn = l2_normalize(vectors, allow_zero=True)
    labels = np.asarray(labels)
    ids = np.unique(labels[labels != NOISE])
    if len(ids) == 0:
        return ids, np.zeros((0, Xn.shape[1]), np.float32)
    C = np.stack([Xn[labels == c].mean(axis=0) for c in ids])
    # Opposite members can cancel to a zero mean: that centroid stays zero (no direction).
    return ids, l2_normalize(C, allow_zero=True)


def cluster_table(vectors: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per cluster (noise last): cluster, size, share, cohesion (mean cosine to centroid)."""
    labels = np.asarray(labels)
    Xn = l2_normalize(vectors, allow_zero=True)
    ids, C = centroids(Xn, labels)
    rows = [
        {
            "cluster": int(c),
            "size": int((labels == c).sum()),
            "share": float((labels == c).mean()),
            "cohesion": float((Xn[labels == c] @ C[i]).mean()),
        }
        for i, c in enumerate(ids)
    ]
    if (labels == NOISE).any():
        rows.append(
            {
                "cluster": NOISE,
                "size": int((labels == NOISE).sum()),
                "share": float((labels == NOISE).mean()),
                "cohesion": float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["cluster", "size", "share", "cohesion"])


def cluster_members(labels: np.ndarray, cluster: int) -> np.ndarray:
    """Row indices of ``cluster``; an error naming the clusters there are when it has none."""
    labels = np.asarray(labels)
    members = np.flatnonzero(labels == cluster)
    if len(members) == 0:
        raise InvalidInputError(f"cluster {cluster} has no members; clusters: {sorted(set(labels.tolist()))}")
    return members


def typical_images(vectors: np.ndarray, labels: np.ndarray, cluster: int, n: int = 12) -> np.ndarray:
    """Row indices of the cluster's ``n`` members nearest its centroid (cosine), most typical first."""
    if cluster == NOISE:
        raise InvalidInputError("noise (-1) has no centroid; use outlier_images for noise points")
    members = cluster_members(labels, cluster)
    ids, C = centroids(vectors, labels)
    sims = l2_normalize(vectors[members], allow_zero=True) @ C[int(np.searchsorted(ids, cluster))]
    return members[np.argsort(-sims, kind="stable")[:n]]


def typicality_order(vectors: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """Order of one cluster's members, most typical first (cosine to their centroid, descending).

    ``vectors`` has a row per member; ``known`` marks the rows that hold a real vector (a snapshot
    imported without the embeddings has none). Members with a vector come first, by typicality;
    the others follow in their given order. Ties keep the given order.
    """
    n = len(vectors)
    known = np.ones(n, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    rows = np.flatnonzero(known)
    rest = np.flatnonzero(~known)
    if len(rows) == 0:
        return rest
    Xn = l2_normalize(vectors[rows], allow_zero=True)
    centre = l2_normalize(Xn.mean(axis=0, keepdims=True), allow_zero=True)[0]
    return np.concatenate([rows[np.argsort(-(Xn @ centre), kind="stable")], rest])


def centroid_margins(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per point: cosine to the nearest centroid minus cosine to the second nearest (NaN with < 2 clusters)."""
    _, C = centroids(vectors, labels)
    if len(C) < 2:
        return np.full(len(vectors), np.nan)
    sims = l2_normalize(vectors, allow_zero=True) @ C.T
    top2 = -np.partition(-sims, 1, axis=1)[:, :2]
    return np.asarray(top2[:, 0] - top2[:, 1])


def borderline_images(
    vectors: np.ndarray, labels: np.ndarray, cluster: int | None = None, n: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, margins) of the ``n`` points closest to a boundary: smallest margin between
    the nearest and second-nearest centroid; among ``cluster``'s members when given."""
    margins = centroid_margins(vectors, labels)
    pool = np.arange(len(vectors)) if cluster is None else cluster_members(labels, cluster)
    pool = pool[np.isfinite(margins[pool])]
    order = pool[np.argsort(margins[pool], kind="stable")[:n]]
    return order, margins[order]


def outlier_images(vectors: np.ndarray, labels: np.ndarray, cluster: int | None = None, n: int = 12) -> np.ndarray:
    """Row indices of outliers, most atypical first.

    ``cluster=None``: noise points, ordered by lowest similarity to any centroid. A cluster
    id: its members least similar to their own centroid.
    """
    labels = np.asarray(labels)
    ids, C = centroids(vectors, labels)
    Xn = l2_normalize(vectors, allow_zero=True)
    if cluster is None or cluster == NOISE:
        pool = np.flatnonzero(labels == NOISE)
        if len(pool) == 0 or len(C) == 0:
            return pool[:n]
        score = (Xn[pool] @ C.T).max(axis=1)
    else:
        pool = cluster_members(labels, cluster)
        score = Xn[pool] @ C[int(np.searchsorted(ids, cluster))]
    return pool[np.argsort(score, kind="stable")[:n]]
