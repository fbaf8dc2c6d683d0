"""The built-in clusterers: HDBSCAN, k-means, Ward agglomerative and Leiden.

Each wraps its library (hdbscan, scikit-learn, scipy, leidenalg) rather than reimplementing
it, works on L2-normalised vectors (cosine geometry), optionally reduced first (PCA, or UMAP
with ``n_neighbors=30, min_dist=0`` — the recipe that works for clustering self-supervised
features), and renumbers clusters by size (0 = largest; -1 is noise).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from core.cluster.base import NOISE, Clusterer, ClusteringWarning, register_clusterer, relabel_by_size, seed_from
from core.cluster.kchoice import choose_k
from core.cluster.space import knn_graph, reduce_vectors
from core.errors import InvalidInputError


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer))


@register_clusterer
class HDBSCANClusterer(Clusterer):
    """HDBSCAN (``hdbscan`` package) on L2-normalised vectors, by default after UMAP to 10 dims.

    Args:
        min_cluster_size: smallest group HDBSCAN calls a cluster (None: max(5, n/100), capped at n/2).
        min_samples: density smoothing (None: equal to min_cluster_size, hdbscan's default).
        cluster_selection_method: "eom" (default) or "leaf" (more, smaller clusters).
        reduce: "umap" (default), "pca" or None (cluster the normalised vectors directly).
        n_components, n_neighbors, min_dist: the reduction (UMAP: 10, 30, 0.0).
        random_state: seeds UMAP (HDBSCAN itself is deterministic).

    Learned: ``labels_`` (-1 noise), ``n_clusters_``, ``probabilities_``, ``embedding_`` (the
    space clustered), ``noise_fraction_``.
    """

    method = "hdbscan"
    _min_samples = 3

    def __init__(
        self,
        min_cluster_size: int | None = None,
        min_samples: int | None = None,
        cluster_selection_method: str = "eom",
        reduce: str | None = "umap",
        n_components: int = 10,
        n_neighbors: int = 30,
        min_dist: float = 0.0,
        random_state: Any = 0,
    ) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_method = cluster_selection_method
        self.reduce = reduce
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.random_state = random_state

    def _fit(self, Xn: np.ndarray) -> np.ndarray:
        import hdbscan

        size = self._check_params(len(Xn))
        rng = check_random_state(self.random_state)
        Z = reduce_vectors(
            Xn,
            self.reduce,
            self.n_components,
            n_neighbors=self.n_neighbors,
            min_dist=self.min_dist,
            random_state=rng if self.random_state is not None else None,
        )
        model = hdbscan.HDBSCAN(
            min_cluster_size=size,
            min_samples=self.min_samples,
            cluster_selection_method=self.cluster_selection_method,
            core_dist_n_jobs=1,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            model.fit(Z.astype(np.float64))
        self.embedding_ = Z
        self.probabilities_ = np.asarray(model.probabilities_, dtype=np.float64)
        self.min_cluster_size_ = size
        self.extra_ = {"min_cluster_size": size}
        return relabel_by_size(model.labels_)

    def _check_params(self, n: int) -> int:
        """Validate the parameters for ``n`` points; returns the min_cluster_size to use."""
        if self.cluster_selection_method not in ("eom", "leaf"):
            raise InvalidInputError(f"cluster_selection_method={self.cluster_selection_method!r}: use 'eom' or 'leaf'")
        size = self.min_cluster_size
        if size is None:
            size = max(2, min(max(5, round(n / 100)), n // 2))
        elif not _is_int(size) or size < 2:
            raise InvalidInputError(f"min_cluster_size={size!r} should be an integer >= 2")
        elif size > n:
            raise InvalidInputError(f"min_cluster_size={size} should be <= n_samples={n}")
        if self.min_samples is not None and (not _is_int(self.min_samples) or self.min_samples < 1):
            raise InvalidInputError(f"min_samples={self.min_samples!r} should be a positive integer or None")
        return int(size)

    def _check_result(self) -> None:
        n, size = len(self.labels_), self.min_cluster_size_
        if self.n_clusters_ == 0:
            warnings.warn(
                f"HDBSCAN called all n_samples={n} points noise with min_cluster_size={size}; "
                "lower min_cluster_size or try reduce='umap'.",
                ClusteringWarning,
                stacklevel=3,
            )
        elif self.noise_fraction_ > 0.5:
            warnings.warn(
                f"HDBSCAN left {self.noise_fraction_:.0%} of points as noise (min_cluster_size={size}); "
                "lower min_cluster_size or min_samples for fewer noise points.",
                ClusteringWarning,
                stacklevel=3,
            )


@register_clusterer
class KMeansClusterer(Clusterer):
    """k-means (scikit-learn) on L2-normalised vectors, k given or chosen automatically.

    Args:
        n_clusters: k; None chooses it with ``k_selection`` over ``k_min..k_max``.
        k_selection: "silhouette" (best silhouette of k-means in the clustered space; why the
            maximum and not a one-SE rule: ``kchoice.silhouette_sweep``) or "eigengap" (largest
            gap of the kNN-graph normalized Laplacian spectrum). The run stores the curve
            (``k_scores`` or ``eigenvalues``) and ``k_chosen`` in its metrics (``kchoice.k_curve``).
        reduce, n_components: the space clustered (default PCA to 50 dims).
        n_neighbors: kNN graph size for the eigengap; also UMAP's neighbours when reduce="umap".
        n_init: k-means restarts per fit.

    Learned: ``labels_``, ``n_clusters_``, ``cluster_centers_`` (in the clustered space),
    ``embedding_``, ``k_scores_`` (k → silhouette, or the eigenvalues for "eigengap").
    """

    method = "kmeans"

    def __init__(
        self,
        n_clusters: int | None = None,
        k_selection: str = "silhouette",
        k_min: int = 2,
        k_max: int = 30,
        reduce: str | None = "pca",
        n_components: int = 50,
        n_neighbors: int = 15,
        n_init: int = 4,
        random_state: Any = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.k_selection = k_selection
        self.k_min = k_min
        self.k_max = k_max
        self.reduce = reduce
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.n_init = n_init
        self.random_state = random_state

    def _fit(self, Xn: np.ndarray) -> np.ndarray:
        from sklearn.cluster import KMeans

        rng = check_random_state(self.random_state)
        Z = reduce_vectors(
            Xn, self.reduce, self.n_components, n_neighbors=30 if self.reduce == "umap" else 15, random_state=rng
        )
        seed = seed_from(rng)

        def fit_k(k: int) -> np.ndarray:
            return np.asarray(KMeans(n_clusters=k, n_init=self.n_init, random_state=seed).fit_predict(Z))

        k, self.k_scores_, self.extra_ = choose_k(self, Z, len(Xn), fit_k)
        model = KMeans(n_clusters=k, n_init=self.n_init, random_state=seed).fit(Z)
        self.embedding_ = Z
        order = relabel_by_size(model.labels_)
        # Centres follow the renumbering so cluster_centers_[c] belongs to labels_ == c.
        old_for_new = [int(np.flatnonzero(order == c)[0]) for c in range(k) if np.any(order == c)]
        self.cluster_centers_ = model.cluster_centers_[[model.labels_[i] for i in old_for_new]]
        self.inertia_ = float(model.inertia_)
        return order


@register_clusterer
class AgglomerativeClusterer(Clusterer):
    """Agglomerative clustering with Ward linkage (one scipy tree, cut at every candidate k).

    Args mirror :class:`KMeansClusterer` (``n_clusters`` None = automatic k by silhouette or
    eigengap). Ward needs O(n²) memory: above ``max_samples`` points use k-means.

    Learned: ``labels_``, ``n_clusters_``, ``embedding_``, ``linkage_`` (scipy format), ``k_scores_``.
    """

    method = "agglomerative"

    def __init__(
        self,
        n_clusters: int | None = None,
        k_selection: str = "silhouette",
        k_min: int = 2,
        k_max: int = 30,
        reduce: str | None = "pca",
        n_components: int = 50,
        n_neighbors: int = 15,
        max_samples: int = 30_000,
        random_state: Any = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.k_selection = k_selection
        self.k_min = k_min
        self.k_max = k_max
        self.reduce = reduce
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.max_samples = max_samples
        self.random_state = random_state

    def _fit(self, Xn: np.ndarray) -> np.ndarray:
        from scipy.cluster.hierarchy import cut_tree, linkage

        n = len(Xn)
        if n > self.max_samples:
            raise InvalidInputError(
                f"agglomerative: n_samples={n} exceeds max_samples={self.max_samples} (Ward needs "
                "O(n^2) memory); use method='kmeans' or raise max_samples."
            )
        rng = check_random_state(self.random_state)
        Z = reduce_vectors(Xn, self.reduce, self.n_components, n_neighbors=30, random_state=rng)
        tree = linkage(Z.astype(np.float64), method="ward")

        def fit_k(k: int) -> np.ndarray:
            return np.asarray(cut_tree(tree, n_clusters=k)[:, 0])

        k, self.k_scores_, self.extra_ = choose_k(self, Z, n, fit_k)
        self.embedding_ = Z
        self.linkage_ = tree
        return relabel_by_size(fit_k(k))


@register_clusterer
class LeidenClusterer(Clusterer):
    """Leiden community detection (``leidenalg`` on an ``igraph`` graph) on the cosine kNN graph.

    Args:
        n_neighbors: neighbours per point in the graph (edges weighted by cosine similarity).
        resolution: RB-configuration resolution; higher gives more, smaller clusters.
        reduce, n_components: optional reduction before building the graph (default none).
        min_cluster_size: communities smaller than this become noise (default 1: none do).
        random_state: seeds Leiden.

    Learned: ``labels_``, ``n_clusters_``, ``quality_`` (the partition's objective), ``graph_``.
    """

    method = "leiden"

    def __init__(
        self,
        n_neighbors: int = 15,
        resolution: float = 1.0,
        reduce: str | None = None,
        n_components: int = 50,
        min_cluster_size: int = 1,
        random_state: Any = 0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.resolution = resolution
        self.reduce = reduce
        self.n_components = n_components
        self.min_cluster_size = min_cluster_size
        self.random_state = random_state

    def _fit(self, Xn: np.ndarray) -> np.ndarray:
        import igraph
        import leidenalg
        from scipy.sparse import triu

        if not (isinstance(self.resolution, (int, float)) and self.resolution > 0):
            raise InvalidInputError(f"resolution={self.resolution!r} should be a number > 0 (1.0 is the default)")
        if not _is_int(self.n_neighbors) or self.n_neighbors < 1:
            raise InvalidInputError(f"n_neighbors={self.n_neighbors!r} should be a positive integer")
        rng = check_random_state(self.random_state)
        Z = reduce_vectors(Xn, self.reduce, self.n_components, n_neighbors=30, random_state=rng)
        W = knn_graph(Z, self.n_neighbors, "cosine" if self.reduce in (None, "none") else "euclidean")
        upper = triu(W, k=1).tocoo()
        graph = igraph.Graph(
            n=len(Z), edges=np.column_stack([upper.row, upper.col]).tolist(), edge_attrs={"weight": upper.data.tolist()}
        )
        partition = leidenalg.find_partition(
            graph,
            leidenalg.RBConfigurationVertexPartition,
            weights="weight",
            resolution_parameter=float(self.resolution),
            seed=seed_from(rng),
            n_iterations=-1,
        )
        labels = np.asarray(partition.membership, dtype=np.int64)
        if self.min_cluster_size > 1:
            ids, counts = np.unique(labels, return_counts=True)
            labels[np.isin(labels, ids[counts < self.min_cluster_size])] = NOISE
        self.embedding_ = Z
        self.graph_ = W
        self.quality_ = float(partition.quality())
        self.extra_ = {"quality": round(self.quality_, 6)}
        return relabel_by_size(labels)

    def _check_result(self) -> None:
        if self.n_clusters_ == 1:
            warnings.warn(
                f"Leiden found one community at resolution={self.resolution}; raise the resolution.",
                ClusteringWarning,
                stacklevel=3,
            )
