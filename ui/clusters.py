"""Stored cluster runs as pages show them: cluster names and one-line run descriptions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.mapfigure import cluster_names
from core.store import Store

if TYPE_CHECKING:  # core.cluster imports scikit-learn (~0.9 s): only pages that cluster pay for it
    from core.cluster import ClusterRun


def run_cluster_names(store: Store, run: ClusterRun) -> dict[int, str]:
    """Names of every cluster of a stored run, from the label set the run shows (edits included)."""
    stored = store.load_cluster_labels(run.run_id)
    return cluster_names(
        np.unique(run.labels).tolist(), {int(c): str(name) for c, name in zip(stored["cluster"], stored["label"])}
    )


def run_description(row: pd.Series) -> str:
    """A stored run in a picker: "Mar 03 14:05 · kmeans · 8 clusters · a1b2c3"."""
    created = pd.Timestamp(row["created_at"]).strftime("%b %d %H:%M")
    parent = row.get("parent_run_id")
    what = f"{row['method']} of {str(parent)[:6]}" if isinstance(parent, str) and parent else str(row["method"])
    return f"{created} · {what} · {int(row['n_clusters'])} clusters · {row['run_id'][:6]}"
