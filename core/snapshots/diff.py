"""Agreement between two snapshots of the same images: ARI, NMI, confusion, matched clusters, moved images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.snapshots.model import SnapshotError
from core.snapshots.records import load_snapshot
from core.store import Store

_UNMATCHED = -2  # the "partner" of a cluster of A that the matching left without one


@dataclass(frozen=True, eq=False)
class SnapshotDiff:
    """How two partitions of the same images agree.

    ``matching`` pairs clusters of A with clusters of B one-to-one (Hungarian, maximising
    shared images); ``moved`` has one row per shared image with ``moved`` true when its B
    cluster is not the match of its A cluster. Noise (-1) is treated as one more cluster.
    """

    id_a: str
    id_b: str
    n_shared: int
    only_a: int
    only_b: int
    ari: float
    nmi: float
    confusion: pd.DataFrame = field(repr=False)  # rows: clusters of A, columns: clusters of B
    matching: list[tuple[int, int, int]] = field(repr=False)  # (cluster A, cluster B, shared images)
    moved: pd.DataFrame = field(repr=False)  # content_hash, rel_path, cluster_a, cluster_b, matched_b, moved

    @property
    def n_moved(self) -> int:
        return int(self.moved["moved"].sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id_a": self.id_a,
            "id_b": self.id_b,
            "n_shared": self.n_shared,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "ari": self.ari,
            "nmi": self.nmi,
            "n_moved": self.n_moved,
            "confusion": {
                "a": [int(v) for v in self.confusion.index],
                "b": [int(v) for v in self.confusion.columns],
                "counts": self.confusion.to_numpy().astype(int).tolist(),
            },
            "matching": [{"a": a, "b": b, "shared": n} for a, b, n in self.matching],
            "moved": self.moved[self.moved["moved"]].drop(columns="moved").to_dict(orient="records"),
        }


def diff_snapshots(store: Store, id_a: str, id_b: str) -> SnapshotDiff:
    """Compare two snapshots on the images they share (e.g. the same dataset under two encoders).

    ARI and NMI (scikit-learn) measure agreement of the partitions; ``confusion`` is the
    crosstab of cluster A × cluster B; ``matching`` is the one-to-one pairing of clusters that
    maximises shared images (Hungarian); an image "moved" when its B cluster is not the
    partner of its A cluster (or its A cluster has no partner).
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a, b = load_snapshot(store, id_a), load_snapshot(store, id_b)
    points_a, points_b = a.points.set_index("content_hash"), b.points.set_index("content_hash")
    shared = sorted(set(points_a.index) & set(points_b.index))
    if not shared:
        raise SnapshotError(
            f"Snapshots {a.id[:12]} and {b.id[:12]} share no images (by content hash); diff compares two "
            "clusterings of the same images."
        )
    ca = points_a.loc[shared, "cluster"].to_numpy().astype(int)
    cb = points_b.loc[shared, "cluster"].to_numpy().astype(int)
    confusion = pd.crosstab(pd.Series(ca, name="cluster_a"), pd.Series(cb, name="cluster_b"))
    counts = confusion.to_numpy()
    rows, cols = linear_sum_assignment(-counts)
    partner = {int(confusion.index[r]): int(confusion.columns[c]) for r, c in zip(rows, cols)}
    matching = [(int(confusion.index[r]), int(confusion.columns[c]), int(counts[r, c])) for r, c in zip(rows, cols)]
    matched = np.array([partner.get(int(c), _UNMATCHED) for c in ca])
    moved = pd.DataFrame(
        {
            "content_hash": shared,
            "rel_path": points_a.loc[shared, "rel_path"].tolist(),
            "cluster_a": ca,
            "cluster_b": cb,
            "matched_b": [p if p != _UNMATCHED else None for p in matched.tolist()],
            "moved": matched != cb,
        }
    )
    return SnapshotDiff(
        id_a=a.id,
        id_b=b.id,
        n_shared=len(shared),
        only_a=len(points_a) - len(shared),
        only_b=len(points_b) - len(shared),
        ari=float(adjusted_rand_score(ca, cb)),
        nmi=float(normalized_mutual_info_score(ca, cb)),
        confusion=confusion,
        matching=matching,
        moved=moved,
    )
