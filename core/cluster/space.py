"""The space a clusterer works in: optional PCA/UMAP reduction of normalised vectors, and the kNN graph."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from core.cluster.base import ClusteringWarning, seed_from
from core.errors import InvalidInputError

REDUCERS: tuple[str, ...] = ("pca", "umap")
UMAP_MIN_SAMPLES = 16


def reduce_vectors(
    Xn: np.ndarray,
    reduce: str | None,
    n_components: int,
    *,
    n_neighbors: int = 30,
    min_dist: float = 0.0,
    random_state: Any = None,
) -> np.ndarray:
    """L2-normalised vectors → the space a clusterer works in (``reduce`` None, "pca" or "umap").

    UMAP uses the cosine metric; PCA keeps ``n_components`` principal components. A request
    for at least as many components as the data has dimensions returns ``Xn`` unchanged.
    """
    if reduce in (None, "none"):
        return Xn
    if reduce not in REDUCERS:
        raise InvalidInputError(f"reduce={reduce!r} is not offered; choose None, {', '.join(REDUCERS)}.")
    if not isinstance(n_components, (int, np.integer)) or n_components < 2:
        raise InvalidInputError(f"n_components={n_components!r} should be an integer >= 2")
    if reduce == "pca":
        return _pca(Xn, int(n_components), check_random_state(random_state))
    return _umap(Xn, int(n_components), n_neighbors, min_dist, random_state)


def _pca(Xn: np.ndarray, n_components: int, rng: np.random.RandomState) -> np.ndarray:
    from sklearn.decomposition import PCA

    n, d = Xn.shape
    k = min(n_components, n - 1)
    if k >= d or k < 2:
        return Xn
    # Exact and deterministic through the d x d covariance (cheap for embedding sizes);
    # randomized SVD only for very wide vectors.
    solver = "covariance_eigh" if d <= 4096 else "randomized"
    pca = PCA(n_components=k, svd_solver=solver, random_state=seed_from(rng))
    return np.ascontiguousarray(pca.fit_transform(Xn), dtype=np.float32)


def _umap(Xn: np.ndarray, n_components: int, n_neighbors: int, min_dist: float, random_state: Any) -> np.ndarray:
    n = len(Xn)
    if n < UMAP_MIN_SAMPLES:
        # stacklevel 5: the line that called fit (_umap ← reduce_vectors ← _fit ← fit ← caller).
        warnings.warn(
            f"n_samples={n} is too few for UMAP (needs >= {UMAP_MIN_SAMPLES}); clustering the normalised "
            "vectors directly.",
            ClusteringWarning,
            stacklevel=5,
        )
        return Xn
    import umap

    rng = check_random_state(random_state)
    k = min(n_components, max(2, n - 2))
    neighbours = max(2, min(int(n_neighbors), n - 1))
    seeded = random_state is not None
    model = umap.UMAP(
        n_components=k,
        n_neighbors=neighbours,
        min_dist=float(min_dist),
        metric="cosine",
        random_state=seed_from(rng) if seeded else None,
        n_jobs=1 if seeded else -1,
        init="spectral" if n > 4 * k else "random",
    )
    with warnings.catch_warnings():
        # umap's notices (n_jobs overridden by random_state, spectral fallbacks) are not the user's business.
        warnings.simplefilter("ignore")
        return np.ascontiguousarray(model.fit_transform(Xn), dtype=np.float32)


def knn_graph(Z: np.ndarray, n_neighbors: int, metric: str = "cosine") -> Any:
    """Symmetric sparse kNN graph (CSR) weighted by similarity (1 − cosine distance, floored at 1e-6)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(Z)
    k = max(1, min(int(n_neighbors), n - 1))
    dist = NearestNeighbors(n_neighbors=k, metric=metric).fit(Z).kneighbors_graph(mode="distance")
    if metric == "cosine":
        dist.data = np.maximum(1.0 - dist.data, 1e-6)
    else:
        dist.data = np.exp(-(dist.data**2) / max(np.median(dist.data) ** 2, 1e-12))
    return dist.maximum(dist.T).tocsr()
