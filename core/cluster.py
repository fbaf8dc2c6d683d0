"""Clusters of stored embeddings: clusterers, metrics, stored runs and the cluster browser's helpers.

Clusterers follow scikit-learn manners: ``__init__`` only stores its keyword arguments,
``fit(X)`` validates, returns ``self`` and leaves learned state in attributes ending in ``_``
(``labels_``, ``n_clusters_``, ``embedding_`` …); ``random_state`` is resolved with
``check_random_state``. They wrap hdbscan, umap-learn, scikit-learn, scipy and leidenalg
rather than reimplementing them. Every clusterer works on L2-normalised vectors (cosine
geometry), optionally reduced first (PCA, or UMAP with ``n_neighbors=30, min_dist=0`` — the
recipe that works for clustering self-supervised features). Cluster ids are renumbered by
size (0 = largest); ``-1`` is noise.

Built-in clusterers are registered with ``@register_clusterer`` exactly as a plug-in would
be. The app's entry points::

    run = run_clustering(store, "demo", encoder_key, "hdbscan")      # fit, score, store
    run = load_run(store, run.run_id)                                 # reopen instantly
    data = run_data(store, run)                                       # images/vectors/labels aligned
    typical_images(data.vectors, data.labels, cluster=0)              # browser helpers
    merge_clusters(store, run.run_id, [2, 5])                         # edits make new runs
"""
from __future__ import annotations

import inspect
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils import check_random_state

from core.errors import InvalidInputError, RepLensError
from core.store import Store

NOISE = -1
REDUCERS: tuple[str, ...] = ("pca", "umap")
K_SELECTIONS: tuple[str, ...] = ("silhouette", "eigengap")
# Above this many points silhouettes are computed on a seeded sample (the exact score is O(n^2)).
SILHOUETTE_SAMPLE = 5000
_MAX_SEED = np.iinfo(np.int32).max
UMAP_MIN_SAMPLES = 16


class ClusteringWarning(UserWarning):
    """A clustering ran, but its result or its parameters deserve a second look."""


class ClusterRunNotFoundError(RepLensError, KeyError):
    """A cluster run id the store does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------
# Registry


class Clusterer:
    """Base class: parameters from ``__init__``'s signature, validation, ``fit_predict``.

    Subclasses set ``method`` and implement ``_fit(Xn) -> labels`` on L2-normalised rows
    (labels renumbered by size, -1 noise); they may set ``extra_``, a JSON-safe dict stored
    with the run's metrics. ``fit`` validates ``X``, marks all-zero rows (no direction) as
    noise with a ``ClusteringWarning``, and sets ``labels_``, ``n_clusters_``,
    ``noise_fraction_`` and ``valid_mask_`` (rows that took part; ``embedding_`` rows are
    those rows). A plug-in may also override ``fit`` entirely.
    """

    method: str = ""
    _min_samples: int = 2

    def get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> Clusterer:
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise InvalidInputError(f"{self.method}: no parameter {name!r}; it takes {', '.join(valid)}.")
            setattr(self, name, value)
        return self

    def fit(self, X: np.ndarray) -> Clusterer:
        X = _check_matrix(X, self._min_samples, self.method)
        norms = np.linalg.norm(X, axis=1)
        valid = norms > 0
        if valid.sum() < self._min_samples:
            raise InvalidInputError(f"{self.method}: only {int(valid.sum())} of {len(X)} vectors are non-zero; "
                                    f"need >= {self._min_samples}. Re-extract the embeddings.")
        if not valid.all():
            zero = np.flatnonzero(~valid)
            warnings.warn(f"{len(zero)} zero vector(s) (rows {zero[:5].tolist()}) have no direction; they are "
                          "marked noise (-1).", ClusteringWarning, stacklevel=2)
        with _thread_limit(int(valid.sum()), X.shape[1]):
            labels = self._fit(np.ascontiguousarray(X[valid] / norms[valid, None]))
        full = np.full(len(X), NOISE, dtype=np.int64)
        full[valid] = labels
        self.labels_ = full
        self.valid_mask_ = valid
        self.n_clusters_ = _n_clusters(full)
        self.noise_fraction_ = float(np.mean(full == NOISE))
        self._check_result()
        return self

    def _fit(self, Xn: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # each clusterer implements _fit (or overrides fit)

    def _check_result(self) -> None:
        """Hook for warnings about the finished result (see HDBSCAN, Leiden)."""

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).labels_


# Below this many matrix entries, BLAS/OpenMP threads cost more than they save (and on a busy
# machine thread contention made a k sweep ~30x slower); one thread is used.
_SMALL_PROBLEM = 5_000_000


def _thread_limit(n: int, d: int) -> Any:
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1) if n * d <= _SMALL_PROBLEM else nullcontext()


_CLUSTERERS: dict[str, type[Clusterer]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_clusterer(cls: type[Clusterer]) -> type[Clusterer]:
    """Class decorator: make ``cls`` available under ``cls.method`` (a second registration warns)."""
    if not cls.method:
        raise InvalidInputError(f"{cls.__name__} needs a non-empty `method` name to be registered")
    with _REGISTRY_LOCK:
        if cls.method in _CLUSTERERS:
            warnings.warn(f"clusterer {cls.method!r} registered twice; keeping the later one", ClusteringWarning,
                          stacklevel=2)
        _CLUSTERERS[cls.method] = cls
    return cls


def clustering_methods() -> list[str]:
    """Names of every registered clusterer, in registration order."""
    return list(_CLUSTERERS)


def make_clusterer(method: str, params: dict[str, Any] | None = None) -> Clusterer:
    """A clusterer for ``method`` built from ``params`` (its ``__init__`` keywords).

    Example: ``make_clusterer("kmeans", {"n_clusters": 8, "random_state": 0}).fit(X).labels_``
    """
    cls = _CLUSTERERS.get(method)
    if cls is None:
        raise InvalidInputError(f"Unknown clustering method {method!r}; choose one of {', '.join(_CLUSTERERS)}.")
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise InvalidInputError(f"{method}: {exc}. Parameters it takes: {', '.join(names)}.") from exc


# ---------------------------------------------------------------------------------------
# Shared preparation


def l2_normalize(X: np.ndarray, *, allow_zero: bool = False) -> np.ndarray:
    """Rows scaled to unit length (float32). An all-zero row has no direction: an error, or
    left at zero with ``allow_zero``."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if allow_zero:
        return np.ascontiguousarray(X / np.where(norms > 0, norms, 1.0))
    if len(zero):
        raise InvalidInputError(f"{len(zero)} zero vector(s) (rows {zero[:5].tolist()}) have no direction to "
                                "cluster; re-extract those embeddings or drop them.")
    return np.ascontiguousarray(X / norms)


def _check_matrix(X: np.ndarray, minimum: int, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise InvalidInputError(f"{what}: expected an (n_samples, n_features) matrix, got shape {X.shape}")
    if X.shape[0] < minimum:
        raise InvalidInputError(f"{what}: n_samples={X.shape[0]} should be >= {minimum}; embed more images first.")
    if not np.isfinite(X).all():
        raise InvalidInputError(f"{what}: some embeddings contain NaN or infinite values; re-extract them.")
    return X


def _seed(rng: np.random.RandomState) -> int:
    return int(rng.randint(_MAX_SEED))


def reduce_vectors(Xn: np.ndarray, reduce: str | None, n_components: int, *, n_neighbors: int = 30,
                   min_dist: float = 0.0, random_state: Any = None) -> np.ndarray:
    """L2-normalised vectors → the space a clusterer works in (``reduce`` None, "pca" or "umap").

    UMAP uses the cosine metric; PCA keeps ``n_components`` principal components. A request
    for at least as many components as the data has dimensions returns ``Xn`` unchanged.
    """
    if reduce in (None, "none"):
        return Xn
    if reduce not in REDUCERS:
        raise InvalidInputError(f"reduce={reduce!r} is not offered; choose None, {', '.join(REDUCERS)}.")
    n, d = Xn.shape
    if not isinstance(n_components, (int, np.integer)) or n_components < 2:
        raise InvalidInputError(f"n_components={n_components!r} should be an integer >= 2")
    rng = check_random_state(random_state)
    if reduce == "pca":
        from sklearn.decomposition import PCA

        k = min(int(n_components), n - 1)
        if k >= d or k < 2:
            return Xn
        # Exact and deterministic through the d x d covariance (cheap for embedding sizes);
        # randomized SVD only for very wide vectors.
        solver = "covariance_eigh" if d <= 4096 else "randomized"
        pca = PCA(n_components=k, svd_solver=solver, random_state=_seed(rng))
        return np.ascontiguousarray(pca.fit_transform(Xn), dtype=np.float32)
    if n < UMAP_MIN_SAMPLES:
        warnings.warn(f"n_samples={n} is too few for UMAP (needs >= {UMAP_MIN_SAMPLES}); clustering the normalised "
                      "vectors directly.", ClusteringWarning, stacklevel=3)
        return Xn
    import umap

    k = min(int(n_components), max(2, n - 2))
    neighbours = max(2, min(int(n_neighbors), n - 1))
    seeded = random_state is not None
    model = umap.UMAP(n_components=k, n_neighbors=neighbours, min_dist=float(min_dist), metric="cosine",
                      random_state=_seed(rng) if seeded else None, n_jobs=1 if seeded else -1,
                      init="spectral" if n > 4 * k else "random")
    with warnings.catch_warnings():
        # umap's notices (n_jobs overridden by random_state, spectral fallbacks) are not the user's business.
        warnings.simplefilter("ignore")
        return np.ascontiguousarray(model.fit_transform(Xn), dtype=np.float32)


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..k-1 by decreasing size (ties: first appearance); noise stays -1."""
    labels = np.asarray(labels, dtype=np.int64)
    ids, first, counts = np.unique(labels[labels != NOISE], return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = {int(ids[o]): new for new, o in enumerate(order)}
    out = np.full(labels.shape, NOISE, dtype=np.int64)
    for old, new in mapping.items():
        out[labels == old] = new
    return out


def _n_clusters(labels: np.ndarray) -> int:
    return int(len(np.unique(labels[labels != NOISE])))


# ---------------------------------------------------------------------------------------
# Choosing k


def silhouette_sweep(Z: np.ndarray, fit_k: Callable[[int], np.ndarray], ks: Sequence[int], *,
                     metric: str = "euclidean", random_state: Any = 0) -> tuple[int, dict[int, float]]:
    """The k in ``ks`` whose labels ``fit_k(k)`` have the best silhouette, and every score.

    Scores use a seeded sample of ``SILHOUETTE_SAMPLE`` points on large sets.
    """
    from sklearn.metrics import silhouette_score

    rng = check_random_state(random_state)
    sample = min(len(Z), SILHOUETTE_SAMPLE)
    scores: dict[int, float] = {}
    for k in ks:
        labels = fit_k(int(k))
        if len(np.unique(labels)) < 2:
            continue
        scores[int(k)] = float(silhouette_score(Z, labels, metric=metric, sample_size=sample if sample < len(Z) else None,
                                                random_state=_seed(rng)))
    if not scores:
        raise InvalidInputError(f"no k in {list(ks)} gave two or more clusters; the vectors may be identical")
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def knn_graph(Z: np.ndarray, n_neighbors: int, metric: str = "cosine") -> Any:
    """Symmetric sparse kNN graph (CSR) weighted by similarity (1 − cosine distance, floored at 1e-6)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(Z)
    k = max(1, min(int(n_neighbors), n - 1))
    dist = NearestNeighbors(n_neighbors=k, metric=metric).fit(Z).kneighbors_graph(mode="distance")
    if metric == "cosine":
        dist.data = np.maximum(1.0 - dist.data, 1e-6)
    else:
        dist.data = np.exp(-(dist.data ** 2) / max(np.median(dist.data) ** 2, 1e-12))
    return dist.maximum(dist.T).tocsr()


def eigengap_k(Z: np.ndarray, k_min: int, k_max: int, *, n_neighbors: int = 15,
               metric: str = "cosine") -> tuple[int, np.ndarray]:
    """Number of clusters from the largest gap in the normalized-Laplacian spectrum of a kNN graph.

    Returns (k, eigenvalues λ_1 ≤ … ≤ λ_{k_max+1}); k maximises λ_{k+1} − λ_k over
    k_min ≤ k ≤ k_max (von Luxburg 2007, "A tutorial on spectral clustering", §8.3).
    """
    from scipy.sparse import csgraph, identity
    from scipy.sparse.linalg import eigsh

    n = len(Z)
    k_max = min(int(k_max), n - 2)
    if k_max < k_min:
        raise InvalidInputError(f"eigengap needs n_samples={n} >= k_min + 2 = {k_min + 2}")
    W = knn_graph(Z, n_neighbors, metric)
    L = csgraph.laplacian(W, normed=True)
    m = k_max + 1
    if n <= 2000:
        from scipy.linalg import eigh

        values = eigh(L.toarray(), eigvals_only=True, subset_by_index=[0, m - 1])
    else:
        # Largest eigenvalues of I − L converge far better in ARPACK than the smallest of L.
        values = np.sort(1.0 - eigsh(identity(n, format="csr") - L, k=m, which="LA", return_eigenvectors=False))
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    gaps = np.diff(values)  # gaps[i] = λ_{i+2} − λ_{i+1} (1-based eigenvalues): the gap after i+1 clusters
    ks = np.arange(k_min, k_max + 1)
    best = int(ks[np.argmax(gaps[ks - 1])])
    return best, values


def _k_range(k_min: int, k_max: int, n: int, what: str) -> list[int]:
    if k_min < 2:
        raise InvalidInputError(f"{what}: k_min={k_min} should be >= 2")
    hi = min(int(k_max), n - 1)
    if hi < k_min:
        raise InvalidInputError(f"{what}: n_samples={n} is too few to choose k in {k_min}..{k_max}")
    return list(range(int(k_min), hi + 1))


def _check_k(k: int, n: int, what: str) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"{what}: n_clusters={k!r} should be a positive integer")
    if k > n:
        raise InvalidInputError(f"{what}: n_samples={n} should be >= n_clusters={k}")
    return int(k)


# ---------------------------------------------------------------------------------------
# Clusterers


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

    def __init__(self, min_cluster_size: int | None = None, min_samples: int | None = None,
                 cluster_selection_method: str = "eom", reduce: str | None = "umap", n_components: int = 10,
                 n_neighbors: int = 30, min_dist: float = 0.0, random_state: Any = 0) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_method = cluster_selection_method
        self.reduce = reduce
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.random_state = random_state

    _min_samples = 3

    def _fit(self, Xn: np.ndarray) -> np.ndarray:
        import hdbscan

        n = len(Xn)
        if self.cluster_selection_method not in ("eom", "leaf"):
            raise InvalidInputError(f"cluster_selection_method={self.cluster_selection_method!r}: use 'eom' or 'leaf'")
        size = self.min_cluster_size
        if size is None:
            size = max(2, min(max(5, round(n / 100)), n // 2))
        elif not isinstance(size, (int, np.integer)) or size < 2:
            raise InvalidInputError(f"min_cluster_size={size!r} should be an integer >= 2")
        elif size > n:
            raise InvalidInputError(f"min_cluster_size={size} should be <= n_samples={n}")
        if self.min_samples is not None and (not isinstance(self.min_samples, (int, np.integer)) or self.min_samples < 1):
            raise InvalidInputError(f"min_samples={self.min_samples!r} should be a positive integer or None")
        rng = check_random_state(self.random_state)
        Z = reduce_vectors(Xn, self.reduce, self.n_components, n_neighbors=self.n_neighbors, min_dist=self.min_dist,
                           random_state=rng if self.random_state is not None else None)
        model = hdbscan.HDBSCAN(min_cluster_size=int(size), min_samples=self.min_samples,
                                cluster_selection_method=self.cluster_selection_method, core_dist_n_jobs=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            model.fit(Z.astype(np.float64))
        self.embedding_ = Z
        self.probabilities_ = np.asarray(model.probabilities_, dtype=np.float64)
        self.min_cluster_size_ = int(size)
        self.extra_ = {"min_cluster_size": int(size)}
        return relabel_by_size(model.labels_)

    def _check_result(self) -> None:
        n, size = len(self.labels_), self.min_cluster_size_
        if self.n_clusters_ == 0:
            warnings.warn(f"HDBSCAN called all n_samples={n} points noise with min_cluster_size={size}; "
                          "lower min_cluster_size or try reduce='umap'.", ClusteringWarning, stacklevel=3)
        elif self.noise_fraction_ > 0.5:
            warnings.warn(f"HDBSCAN left {self.noise_fraction_:.0%} of points as noise (min_cluster_size={size}); "
                          "lower min_cluster_size or min_samples for fewer noise points.", ClusteringWarning,
                          stacklevel=3)


@register_clusterer
class KMeansClusterer(Clusterer):
    """k-means (scikit-learn) on L2-normalised vectors, k given or chosen automatically.

    Args:
        n_clusters: k; None chooses it with ``k_selection`` over ``k_min..k_max``.
        k_selection: "silhouette" (best silhouette of k-means in the clustered space) or
            "eigengap" (largest gap of the kNN-graph normalized Laplacian spectrum).
        reduce, n_components: the space clustered (default PCA to 50 dims).
        n_neighbors: kNN graph size for the eigengap; also UMAP's neighbours when reduce="umap".
        n_init: k-means restarts per fit.

    Learned: ``labels_``, ``n_clusters_``, ``cluster_centers_`` (in the clustered space),
    ``embedding_``, ``k_scores_`` (k → silhouette, or the eigenvalues for "eigengap").
    """

    method = "kmeans"

    def __init__(self, n_clusters: int | None = None, k_selection: str = "silhouette", k_min: int = 2,
                 k_max: int = 30, reduce: str | None = "pca", n_components: int = 50, n_neighbors: int = 15,
                 n_init: int = 4, random_state: Any = 0) -> None:
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

        n = len(Xn)
        rng = check_random_state(self.random_state)
        Z = reduce_vectors(Xn, self.reduce, self.n_components, n_neighbors=30 if self.reduce == "umap" else 15,
                           random_state=rng)
        seed = _seed(rng)

        def fit_k(k: int) -> np.ndarray:
            return KMeans(n_clusters=k, n_init=self.n_init, random_state=seed).fit_predict(Z)

        k, self.k_scores_, self.extra_ = _choose_k(self, Z, n, fit_k)
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

    def __init__(self, n_clusters: int | None = None, k_selection: str = "silhouette", k_min: int = 2,
                 k_max: int = 30, reduce: str | None = "pca", n_components: int = 50, n_neighbors: int = 15,
                 max_samples: int = 30_000, random_state: Any = 0) -> None:
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
            raise InvalidInputError(f"agglomerative: n_samples={n} exceeds max_samples={self.max_samples} (Ward needs "
                                    "O(n^2) memory); use method='kmeans' or raise max_samples.")
        rng = check_random_state(self.random_state)
        Z = reduce_vectors(Xn, self.reduce, self.n_components, n_neighbors=30, random_state=rng)
        tree = linkage(Z.astype(np.float64), method="ward")

        def fit_k(k: int) -> np.ndarray:
            return cut_tree(tree, n_clusters=k)[:, 0]

        k, self.k_scores_, self.extra_ = _choose_k(self, Z, n, fit_k)
        self.embedding_ = Z
        self.linkage_ = tree
        return relabel_by_size(fit_k(k))


def _choose_k(est: Any, Z: np.ndarray, n: int, fit_k: Callable[[int], np.ndarray]) -> tuple[int, Any, dict[str, Any]]:
    """(k, scores, extra) for k-means/agglomerative: given k, or the silhouette/eigengap choice."""
    if est.n_clusters is not None:
        return _check_k(est.n_clusters, n, est.method), {}, {"k_selection": "given"}
    if est.k_selection not in K_SELECTIONS:
        raise InvalidInputError(f"k_selection={est.k_selection!r}: choose one of {', '.join(K_SELECTIONS)}")
    ks = _k_range(est.k_min, est.k_max, n, est.method)
    if est.k_selection == "silhouette":
        metric = "cosine" if est.reduce in (None, "none") else "euclidean"
        k, scores = silhouette_sweep(Z, fit_k, ks, metric=metric, random_state=est.random_state)
        return k, scores, {"k_selection": "silhouette", "k_scores": {str(key): round(v, 6) for key, v in scores.items()}}
    metric = "cosine" if est.reduce in (None, "none") else "euclidean"
    k, values = eigengap_k(Z, ks[0], ks[-1], n_neighbors=est.n_neighbors, metric=metric)
    return k, values, {"k_selection": "eigengap", "eigenvalues": [round(float(v), 6) for v in values]}


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

    def __init__(self, n_neighbors: int = 15, resolution: float = 1.0, reduce: str | None = None,
                 n_components: int = 50, min_cluster_size: int = 1, random_state: Any = 0) -> None:
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
        if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 1:
            raise InvalidInputError(f"n_neighbors={self.n_neighbors!r} should be a positive integer")
        rng = check_random_state(self.random_state)
        Z = reduce_vectors(Xn, self.reduce, self.n_components, n_neighbors=30, random_state=rng)
        W = knn_graph(Z, self.n_neighbors, "cosine" if self.reduce in (None, "none") else "euclidean")
        upper = triu(W, k=1).tocoo()
        graph = igraph.Graph(n=len(Z), edges=np.column_stack([upper.row, upper.col]).tolist(),
                             edge_attrs={"weight": upper.data.tolist()})
        partition = leidenalg.find_partition(graph, leidenalg.RBConfigurationVertexPartition, weights="weight",
                                             resolution_parameter=float(self.resolution), seed=_seed(rng),
                                             n_iterations=-1)
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
            warnings.warn(f"Leiden found one community at resolution={self.resolution}; raise the resolution.",
                          ClusteringWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------
# Metrics


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
    return float(silhouette_score(Xk, labels[keep], metric="cosine", sample_size=sample,
                                  random_state=_seed(check_random_state(random_state))))


def cluster_metrics(X: np.ndarray, labels: np.ndarray, truth: Sequence[Any] | np.ndarray | None = None, *,
                    random_state: Any = 0) -> dict[str, Any]:
    """JSON-safe quality numbers of one clustering.

    Always: n_clusters, noise_fraction, sizes (str(cluster) → n, noise under "-1"),
    silhouette (cosine, non-noise points; None below 2 clusters). With ``truth`` (e.g. folder
    labels): ari and nmi (sklearn; noise counted as one more group) and hungarian_accuracy
    (noise counted wrong), n_classes.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    out: dict[str, Any] = {
        "n_clusters": _n_clusters(labels),
        "noise_fraction": float(np.mean(labels == NOISE)),
        "sizes": {str(k): v for k, v in cluster_sizes(labels).items()},
        "silhouette": silhouette(X, labels, random_state=random_state),
    }
    if truth is not None:
        truth = np.asarray(truth)
        if truth.shape != labels.shape:
            raise InvalidInputError(f"truth has {truth.shape[0]} labels for {labels.shape[0]} points")
        out.update(ari=float(adjusted_rand_score(truth, labels)), nmi=float(normalized_mutual_info_score(truth, labels)),
                   hungarian_accuracy=hungarian_accuracy(truth, labels), n_classes=int(len(np.unique(truth))))
    return out


def folder_truth(images: pd.DataFrame) -> np.ndarray | None:
    """Top-level folder of each image (store ``label`` column), or None when there are < 2 folders."""
    if "label" not in images.columns or images.empty:
        return None
    truth = images["label"].fillna("").astype(str).to_numpy()
    return truth if len(np.unique(truth)) >= 2 else None


def stability(X: np.ndarray, method: str, params: dict[str, Any] | None = None,
              seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Any]:
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
    return {"seeds": [int(s) for s in seeds], "mean_ari": float(np.mean(aris)), "min_ari": float(np.min(aris)),
            "pairs": pairs}


def record_stability(store: Store, run: ClusterRun, vectors: np.ndarray,
                     seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Any]:
    """Seed stability of a stored run, saved with its metrics (so it reopens and snapshots carry it).

    ``vectors`` are the run's own, row ``i`` for ``run.hashes[i]``."""
    if run.method not in clustering_methods():
        raise InvalidInputError(f"Run {run.run_id} is a {run.method}, an edit rather than a fit: it has no seed "
                                "to vary.")
    result = stability(vectors, run.method, run.params, seeds)
    store.add_cluster_run_metrics(run.run_id, {"stability": result})
    run.metrics["stability"] = result
    return result


# ---------------------------------------------------------------------------------------
# Stored runs


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

    def assignments(self) -> pd.DataFrame:
        return pd.DataFrame({"content_hash": self.hashes, "cluster": self.labels})


@dataclass
class RunData:
    """A run's images (store order), their vectors and cluster labels, row-aligned."""

    images: pd.DataFrame
    vectors: np.ndarray
    labels: np.ndarray


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return repr(value)  # a RandomState or similar: recorded, not reproducible from the record


def run_clustering(store: Store, dataset: str, encoder_key: str, method: str, params: dict[str, Any] | None = None,
                   *, images: pd.DataFrame | None = None, vectors: np.ndarray | None = None,
                   stability_seeds: Sequence[int] = ()) -> ClusterRun:
    """Cluster ``dataset``'s vectors under ``encoder_key`` with ``method``, score it and store the run.

    Metrics include the folder-label scores when the dataset has at least two top-level
    folders, and seed stability when ``stability_seeds`` (two or more) are given.
    ``images``/``vectors`` may be passed when the caller has them (store order).
    """
    clusterer = make_clusterer(method, params)
    if images is None or vectors is None:
        images, vectors = store.load_embeddings(dataset, encoder_key)
    started = time.perf_counter()
    clusterer.fit(vectors)
    seconds = time.perf_counter() - started
    labels = clusterer.labels_
    metrics = cluster_metrics(vectors, labels, folder_truth(images), random_state=0)
    metrics["seconds"] = round(seconds, 4)
    metrics.update(getattr(clusterer, "extra_", {}))
    if len(stability_seeds) >= 2:
        metrics["stability"] = stability(vectors, method, clusterer.get_params(), stability_seeds)
    return _save(store, dataset, encoder_key, method, clusterer.get_params(), images["content_hash"].tolist(), labels,
                 metrics)


def _save(store: Store, dataset: str, encoder_key: str, method: str, params: dict[str, Any], hashes: list[str],
          labels: np.ndarray, metrics: dict[str, Any], parent_run_id: str | None = None) -> ClusterRun:
    run_id = uuid.uuid4().hex[:12]
    params, metrics = _json_safe(params), _json_safe(metrics)
    labels = np.asarray(labels, dtype=np.int64)
    store.save_cluster_run(run_id, dataset, encoder_key, method, params, hashes, labels, metrics,
                           metrics["n_clusters"], metrics["noise_fraction"], parent_run_id)
    return ClusterRun(run_id, dataset, encoder_key, method, params, list(hashes), labels, metrics,
                      metrics["n_clusters"], metrics["noise_fraction"], parent_run_id)


def load_run(store: Store, run_id: str) -> ClusterRun:
    """A stored run (hashes sorted); ``ClusterRunNotFoundError`` when there is none."""
    found = store.load_cluster_run(run_id)
    if found is None:
        runs = store.list_cluster_runs()
        known = ", ".join(runs["run_id"].head(5)) if len(runs) else "none yet"
        raise ClusterRunNotFoundError(f"No cluster run {run_id!r} (recent: {known}). Create one with: "
                                      "python -m core cluster --dataset NAME --encoder ID --method hdbscan")
    meta, hashes, labels = found
    return ClusterRun(meta["run_id"], meta["dataset"], meta["encoder_key"], meta["method"], meta["params"], hashes,
                      labels, meta["metrics"], int(meta["n_clusters"]), float(meta["noise_fraction"]),
                      meta["parent_run_id"], meta["created_at"])


def list_runs(store: Store, dataset: str | None = None) -> pd.DataFrame:
    """Stored runs, newest first (params/metrics as JSON text)."""
    return store.list_cluster_runs(dataset)


def run_data(store: Store, run: ClusterRun, *, images: pd.DataFrame | None = None,
             vectors: np.ndarray | None = None) -> RunData:
    """The run's images and vectors (store order) with their labels; images added after the run are left out."""
    if images is None or vectors is None:
        images, vectors = store.load_embeddings(run.dataset, run.encoder_key)
    position = pd.Index(run.hashes).get_indexer(images["content_hash"])
    keep = position >= 0
    if not keep.any():
        raise InvalidInputError(f"run {run.run_id}: none of its images has a vector under {run.encoder_key} any more")
    images = images.loc[keep].reset_index(drop=True)
    return RunData(images, np.ascontiguousarray(vectors[keep]), run.labels[position[keep]])


# ---------------------------------------------------------------------------------------
# Cluster browser helpers (pure numpy: the Clusters page renders what these return)


def centroids(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids, unit-length centroids): the normalised mean of each cluster's normalised vectors."""
    Xn = l2_normalize(vectors, allow_zero=True)
    labels = np.asarray(labels)
    ids = np.unique(labels[labels != NOISE])
    if len(ids) == 0:
        return ids, np.zeros((0, Xn.shape[1]), np.float32)
    C = np.stack([Xn[labels == c].mean(axis=0) for c in ids])
    C /= np.linalg.norm(C, axis=1, keepdims=True).clip(min=1e-12)
    return ids, C.astype(np.float32)


def cluster_table(vectors: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per cluster (noise last): cluster, size, share, cohesion (mean cosine to centroid)."""
    labels = np.asarray(labels)
    Xn = l2_normalize(vectors, allow_zero=True)
    ids, C = centroids(Xn, labels)
    rows = [{"cluster": int(c), "size": int((labels == c).sum()), "share": float((labels == c).mean()),
             "cohesion": float((Xn[labels == c] @ C[i]).mean())} for i, c in enumerate(ids)]
    if (labels == NOISE).any():
        rows.append({"cluster": NOISE, "size": int((labels == NOISE).sum()), "share": float((labels == NOISE).mean()),
                     "cohesion": float("nan")})
    return pd.DataFrame(rows, columns=["cluster", "size", "share", "cohesion"])


def _members(labels: np.ndarray, cluster: int) -> np.ndarray:
    members = np.flatnonzero(np.asarray(labels) == cluster)
    if len(members) == 0:
        raise InvalidInputError(f"cluster {cluster} has no members; clusters: {sorted(set(np.asarray(labels).tolist()))}")
    return members


def typical_images(vectors: np.ndarray, labels: np.ndarray, cluster: int, n: int = 12) -> np.ndarray:
    """Row indices of the cluster's ``n`` members nearest its centroid (cosine), most typical first."""
    if cluster == NOISE:
        raise InvalidInputError("noise (-1) has no centroid; use outlier_images for noise points")
    members = _members(labels, cluster)
    ids, C = centroids(vectors, labels)
    sims = l2_normalize(vectors[members], allow_zero=True) @ C[int(np.searchsorted(ids, cluster))]
    return members[np.argsort(-sims, kind="stable")[:n]]


def centroid_margins(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per point: cosine to the nearest centroid minus cosine to the second nearest (NaN with < 2 clusters)."""
    _, C = centroids(vectors, labels)
    if len(C) < 2:
        return np.full(len(vectors), np.nan)
    sims = l2_normalize(vectors, allow_zero=True) @ C.T
    top2 = -np.partition(-sims, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def borderline_images(vectors: np.ndarray, labels: np.ndarray, cluster: int | None = None,
                      n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, margins) of the ``n`` points closest to a boundary: smallest margin between
    the nearest and second-nearest centroid; among ``cluster``'s members when given."""
    margins = centroid_margins(vectors, labels)
    pool = np.arange(len(vectors)) if cluster is None else _members(labels, cluster)
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
        pool = _members(labels, cluster)
        score = Xn[pool] @ C[int(np.searchsorted(ids, cluster))]
    return pool[np.argsort(score, kind="stable")[:n]]


# ---------------------------------------------------------------------------------------
# Edits: rename in place; merge and split make new runs that remember their parent.


def rename_cluster(store: Store, run_id: str, cluster: int, label: str) -> None:
    """Name a cluster (a user edit: it wins over labels computed later)."""
    run = load_run(store, run_id)
    if cluster not in set(run.labels.tolist()):
        raise InvalidInputError(f"run {run_id} has no cluster {cluster}; clusters: {sorted(set(run.labels.tolist()))}")
    store.set_cluster_label(run_id, int(cluster), label)


def merge_clusters(store: Store, run_id: str, clusters: Sequence[int], *, images: pd.DataFrame | None = None,
                   vectors: np.ndarray | None = None) -> ClusterRun:
    """A new run (parent ``run_id``) where ``clusters`` become one, numbered as the smallest of them.

    Other clusters keep their ids and labels.
    """
    run = load_run(store, run_id)
    targets = sorted({int(c) for c in clusters})
    present = set(run.labels.tolist())
    missing = [c for c in targets if c not in present or c == NOISE]
    if len(targets) < 2 or missing:
        raise InvalidInputError(f"merge needs two or more existing clusters of run {run_id}; got {list(clusters)} "
                                f"(clusters: {sorted(present - {NOISE})})")
    data = run_data(store, run, images=images, vectors=vectors)
    labels = data.labels.copy()
    labels[np.isin(labels, targets)] = targets[0]
    params = {"parent_run_id": run_id, "base_method": run.method, "clusters": targets}
    new = _save_edit(store, run, data, labels, "merge", params)
    _carry_labels(store, run, data.labels, new, labels)
    return new


def split_cluster(store: Store, run_id: str, cluster: int, *, method: str = "kmeans", k: int = 2,
                  min_cluster_size: int | None = None, random_state: Any = 0, images: pd.DataFrame | None = None,
                  vectors: np.ndarray | None = None) -> ClusterRun:
    """A new run (parent ``run_id``) where ``cluster`` is re-clustered with k-means (``k`` parts) or HDBSCAN.

    The largest part keeps the id; the others get new ids after the run's largest. HDBSCAN
    noise inside the cluster becomes noise (-1).
    """
    if method not in ("kmeans", "hdbscan"):
        raise InvalidInputError(f"split method={method!r}: choose 'kmeans' or 'hdbscan'")
    run = load_run(store, run_id)
    if cluster == NOISE:
        raise InvalidInputError("noise (-1) is not a cluster; cluster the noise points with a new run instead")
    data = run_data(store, run, images=images, vectors=vectors)
    members = _members(data.labels, cluster)
    sub_x = data.vectors[members]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusteringWarning)
        if method == "kmeans":
            _check_k(k, len(members), "split")
            if k < 2:
                raise InvalidInputError(f"split: k={k} should be >= 2")
            sub = KMeansClusterer(n_clusters=k, reduce=None, random_state=random_state).fit(sub_x).labels_
        else:
            sub = HDBSCANClusterer(min_cluster_size=min_cluster_size, reduce=None,
                                   random_state=random_state).fit(sub_x).labels_
    if _n_clusters(sub) < 2:
        raise InvalidInputError(f"{method} found no sub-structure in cluster {cluster} ({len(members)} images); "
                                "try method='kmeans' or a smaller min_cluster_size.")
    labels = data.labels.copy()
    next_id = int(data.labels.max()) + 1
    mapping = {0: cluster, NOISE: NOISE}  # sub ids are size-ordered: part 0 is the largest
    mapping.update({part: next_id + part - 1 for part in range(1, _n_clusters(sub))})
    labels[members] = [mapping[int(s)] for s in sub]
    params = {"parent_run_id": run_id, "base_method": run.method, "cluster": int(cluster), "method": method,
              "k": int(k) if method == "kmeans" else None, "min_cluster_size": min_cluster_size,
              "random_state": _json_safe(random_state)}
    new = _save_edit(store, run, data, labels, "split", params)
    _carry_labels(store, run, data.labels, new, labels)
    return new


def _save_edit(store: Store, run: ClusterRun, data: RunData, labels: np.ndarray, method: str,
               params: dict[str, Any]) -> ClusterRun:
    metrics = cluster_metrics(data.vectors, labels, folder_truth(data.images))
    return _save(store, run.dataset, run.encoder_key, method, params, data.images["content_hash"].tolist(), labels,
                 metrics, parent_run_id=run.run_id)


def _carry_labels(store: Store, old: ClusterRun, old_labels: np.ndarray, new: ClusterRun,
                  new_labels: np.ndarray) -> None:
    """Copy the parent's labels (user edits included) to clusters whose members did not change."""
    stored = store.load_cluster_labels(old.run_id)
    if stored.empty:
        return
    same = [c for c in stored["cluster"] if np.array_equal(old_labels == c, new_labels == c)]
    rows = stored[stored["cluster"].isin(same)]
    store.save_cluster_labels(new.run_id, rows[["cluster", "label", "method", "candidates"]].to_dict("records"))
    for row in rows[rows["edited"]].itertuples(index=False):
        store.set_cluster_label(new.run_id, int(row.cluster), row.label)
