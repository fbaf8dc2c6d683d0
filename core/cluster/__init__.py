"""Clusters of stored embeddings: clusterers, metrics, stored runs and the cluster browser's helpers.

Clusterers are scikit-learn estimators (``base``): ``__init__`` only stores its keyword
arguments, ``fit(X)`` validates, returns ``self`` and leaves learned state in attributes
ending in ``_``. They work on L2-normalised vectors, optionally reduced first (``space``),
choose k by silhouette or eigengap (``kchoice``), and renumber clusters by size (0 =
largest; ``-1`` is noise). Built-ins (``clusterers``) register with ``@register_clusterer``
exactly as a plug-in does; plug-ins are found through the ``replens.clusterers`` entry points.
The app's entry points::

    run = run_clustering(store, "demo", encoder_key, "hdbscan")      # fit, score, store (runs)
    run = load_run(store, run.run_id)                                 # reopen instantly
    data = run_data(store, run)                                       # images/vectors/labels aligned
    typical_images(data.vectors, data.labels, cluster=0)              # browser helpers (browse)
    merge_clusters(store, run.run_id, [2, 5])                         # edits make new runs (edits)
"""

from __future__ import annotations

from core.cluster.base import (
    _CLUSTERERS,
    CLUSTERERS,
    NOISE,
    Clusterer,
    ClusteringWarning,
    clustering_methods,
    count_clusters,
    l2_normalize,
    make_clusterer,
    register_clusterer,
    relabel_by_size,
)
from core.cluster.browse import (
    borderline_images,
    centroid_margins,
    centroids,
    cluster_members,
    cluster_table,
    outlier_images,
    typical_images,
    typicality_order,
)
from core.cluster.clusterers import AgglomerativeClusterer, HDBSCANClusterer, KMeansClusterer, LeidenClusterer
from core.cluster.edits import merge_clusters, rename_cluster, split_cluster
from core.cluster.kchoice import (
    K_CHOICE_PARAMS,
    K_SELECTIONS,
    SILHOUETTE_SAMPLE,
    KCurve,
    eigengap_k,
    fixed_k_params,
    k_curve,
    silhouette_sweep,
)
from core.cluster.metrics import cluster_metrics, cluster_sizes, folder_truth, hungarian_accuracy, silhouette, stability
from core.cluster.runs import (
    ClusterRun,
    ClusterRunNotFoundError,
    RunData,
    find_same_run,
    list_runs,
    load_run,
    record_stability,
    run_clustering,
    run_data,
)
from core.cluster.space import REDUCERS, UMAP_MIN_SAMPLES, knn_graph, reduce_vectors

__all__ = [
    "CLUSTERERS",
    "K_CHOICE_PARAMS",
    "K_SELECTIONS",
    "NOISE",
    "REDUCERS",
    "SILHOUETTE_SAMPLE",
    "UMAP_MIN_SAMPLES",
    "_CLUSTERERS",
    "AgglomerativeClusterer",
    "ClusterRun",
    "ClusterRunNotFoundError",
    "Clusterer",
    "ClusteringWarning",
    "HDBSCANClusterer",
    "KCurve",
    "KMeansClusterer",
    "LeidenClusterer",
    "RunData",
    "borderline_images",
    "centroid_margins",
    "centroids",
    "cluster_members",
    "cluster_metrics",
    "cluster_sizes",
    "cluster_table",
    "clustering_methods",
    "count_clusters",
    "eigengap_k",
    "folder_truth",
    "hungarian_accuracy",
    "knn_graph",
    "l2_normalize",
    "list_runs",
    "find_same_run",
    "fixed_k_params",
    "k_curve",
    "load_run",
    "make_clusterer",
    "merge_clusters",
    "outlier_images",
    "record_stability",
    "reduce_vectors",
    "register_clusterer",
    "relabel_by_size",
    "rename_cluster",
    "run_clustering",
    "run_data",
    "silhouette",
    "silhouette_sweep",
    "split_cluster",
    "stability",
    "typical_images",
    "typicality_order",
]
