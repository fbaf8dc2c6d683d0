"""2-D layouts of embeddings (PCA, UMAP, t-SNE), cached in the store.

Reducers are scikit-learn estimators: every parameter is set in ``__init__`` and
``fit_transform(X)`` returns an ``(n, 2)`` float32 array. Built-ins register with
``@register_reducer`` exactly as a plug-in does (plug-ins are found through the
``replens.reducers`` entry points); ``reduction_methods()`` lists them all, ``METHODS`` the
built-ins. ``project`` is the one entry the
app uses: it looks the layout up in DuckDB under a key that hashes *what* was projected
(the sorted image hashes, the encoder key, the method and its parameters), so reopening a
map is a read, not a recomputation.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from core.arrays import as_matrix, l2_normalize
from core.errors import InvalidInputError
from core.registry import Registry
from core.store import Store

# The built-in methods, in the order the Map page offers them; ``reduction_methods()`` adds plug-ins.
METHODS: tuple[str, ...] = ("umap", "pca", "tsne")
UMAP_METRICS: tuple[str, ...] = ("cosine", "euclidean", "correlation", "manhattan")
# Bumped when a reducer's output changes for the same parameters, so stale layouts miss.
ALGORITHM_VERSION = 1


class Reducer(BaseEstimator):
    """Base class: a scikit-learn estimator whose ``fit_transform(X)`` returns ``(n, 2)`` float32 coordinates.

    ``__init__`` only stores its keyword arguments (``get_params`` comes from ``BaseEstimator``
    and is part of the layout's cache key); ``method`` is the name it registers under.
    """

    method: str = ""

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        raise NotImplementedError  # each reducer implements fit_transform


REDUCERS: Registry[type[Reducer]] = Registry("reducer")


def register_reducer(cls: type[Reducer]) -> type[Reducer]:
    """Class decorator: make ``cls`` available under ``cls.method`` (a second registration warns).

    Plug-ins register the same way, from a module named in the ``replens.reducers`` entry points.
    """
    if not cls.method:
        raise InvalidInputError(f"{cls.__name__} needs a non-empty `method` name to be registered")
    return REDUCERS.add(cls.method, cls)


def reduction_methods() -> list[str]:
    """Names of every registered reducer (built-ins, then plug-ins), in registration order."""
    return REDUCERS.names()


@register_reducer
class UMAPReducer(Reducer):
    """umap-learn's UMAP; with a ``random_state`` the layout is reproducible (single-threaded)."""

    method = "umap"

    def __init__(
        self, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine", random_state: int | None = 42
    ) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.random_state = random_state

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        X = _map_matrix(X, minimum=3)
        self._check_params()
        import umap

        # UMAP refuses n_neighbors >= n; a small dataset still deserves a map.
        n_neighbors = min(self.n_neighbors, X.shape[0] - 1)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=n_neighbors,
            min_dist=self.min_dist,
            metric=self.metric,
            random_state=self.random_state,
            n_jobs=1 if self.random_state is not None else -1,
            init="spectral" if X.shape[0] > 10 else "random",
        )
        with warnings.catch_warnings():
            # Spectral-init fallbacks and numba notices are not the user's business.
            warnings.simplefilter("ignore")
            coords = reducer.fit_transform(X)
        return np.asarray(coords, dtype=np.float32)

    def _check_params(self) -> None:
        if self.metric not in UMAP_METRICS:
            offered = ", ".join(UMAP_METRICS)
            raise InvalidInputError(f"UMAP metric {self.metric!r} is not offered; choose one of {offered}.")
        if not 2 <= self.n_neighbors <= 200:
            raise InvalidInputError(f"n_neighbors={self.n_neighbors}: choose 2..200 (15 is a good start).")
        if not 0.0 <= self.min_dist <= 1.0:
            raise InvalidInputError(f"min_dist={self.min_dist}: choose a value between 0 and 1.")


@register_reducer
class PCAReducer(Reducer):
    """Principal components 1 and 2 (sklearn ``PCA``) of the L2-normalised vectors by default.

    ``normalize=True`` (the default) scales every vector to unit length first, so PCA sees the
    same directions that UMAP (cosine), neighbours, clusters and concepts compare: with raw
    vectors whose norms vary, the first components follow the norms instead and the map
    disagrees with every cosine view. ``normalize=False`` projects the raw vectors. An all-zero
    vector stays at zero (it has no direction).

    Tall matrices use the covariance eigensolver: the same components as a full SVD to
    float32 precision, ~10x faster at 100k x 384 (1.5 s instead of 17 s).
    """

    method = "pca"

    def __init__(self, normalize: bool = True, random_state: int | None = 0) -> None:
        self.normalize = normalize
        self.random_state = random_state

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        from sklearn.decomposition import PCA

        X = _map_matrix(X, minimum=2)
        if self.normalize:
            X = l2_normalize(X, zero_rows="keep", what="map")
        n_components = min(2, X.shape[1])
        solver = "covariance_eigh" if X.shape[0] >= 10 * X.shape[1] else "full"
        coords = PCA(n_components=n_components, svd_solver=solver, random_state=self.random_state).fit_transform(X)
        return _pad_to_2d(coords)


@register_reducer
class TSNEReducer(Reducer):
    """sklearn's t-SNE (Barnes-Hut); slow above ~20k points, offered for comparison."""

    method = "tsne"

    def __init__(self, perplexity: float = 30.0, metric: str = "cosine", random_state: int | None = 42) -> None:
        self.perplexity = perplexity
        self.metric = metric
        self.random_state = random_state

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        from sklearn.manifold import TSNE

        X = _map_matrix(X, minimum=3)
        # sklearn requires perplexity < n_samples.
        perplexity = min(float(self.perplexity), max(1.0, (X.shape[0] - 1) / 3))
        tsne = TSNE(
            n_components=2, perplexity=perplexity, metric=self.metric, init="pca", random_state=self.random_state
        )
        return np.asarray(tsne.fit_transform(X), dtype=np.float32)


def make_reducer(method: str, params: dict[str, Any] | None = None) -> Reducer:
    """A reducer for ``method`` (see ``reduction_methods()``: "umap", "pca", "tsne" and plug-ins) from ``params``."""
    cls = REDUCERS.get(method)
    if cls is None:
        raise InvalidInputError(
            f"Unknown projection method {method!r}; choose one of {', '.join(reduction_methods())}."
        )
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        raise InvalidInputError(f"{method}: {exc}. Parameters it takes: {_param_names(cls)}.") from exc


def _param_names(cls: type[Reducer]) -> str:
    return ", ".join(p for p in inspect.signature(cls.__init__).parameters if p != "self")


def _map_matrix(X: np.ndarray, minimum: int) -> np.ndarray:
    """``X`` checked by ``core.arrays.as_matrix``, too few rows told in the Map page's words."""
    X = np.asarray(X, dtype=np.float32)
    n = X.shape[0] if X.ndim == 2 else 0
    if n < minimum:
        raise InvalidInputError(
            f"A map needs at least {minimum} embedded images, got {n}. "
            "Add images to the dataset or extract embeddings first."
        )
    return as_matrix(X, what="map")


def _pad_to_2d(coords: np.ndarray) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float32)
    if coords.shape[1] == 2:
        return coords
    return np.column_stack([coords, np.zeros(len(coords), np.float32)])  # 1-d embeddings: a line


# ---------------------------------------------------------------------------------------
# Cached layouts


def projection_key(hashes: Sequence[str], encoder_key: str, method: str, params: dict[str, Any]) -> str:
    """Identity of a layout: same images (in any order), encoder, method and params -> same key."""
    payload = json.dumps(
        {
            "hashes": sorted(hashes),
            "encoder": encoder_key,
            "method": method,
            "params": params,
            "version": ALGORITHM_VERSION,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


@dataclass
class Projection:
    """A layout aligned row for row with ``images`` (the store's ``load_embeddings`` order)."""

    key: str
    method: str
    params: dict[str, Any]
    images: pd.DataFrame
    coords: np.ndarray
    cached: bool
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def project(
    store: Store,
    dataset: str,
    encoder_key: str,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    images: pd.DataFrame | None = None,
    vectors: np.ndarray | None = None,
) -> Projection:
    """The 2-D layout of ``dataset`` under ``encoder_key``, from the store or computed once.

    ``images``/``vectors`` may be passed when the caller already loaded them (the app caches
    them); otherwise they are read from the store.
    """
    reducer = make_reducer(method, params)
    full_params = reducer.get_params()
    if images is None or vectors is None:
        images, vectors = store.load_embeddings(dataset, encoder_key)
    hashes = images["content_hash"].tolist()
    key = projection_key(hashes, encoder_key, method, full_params)
    stored = store.load_projection(key)
    if stored is not None:
        coords = _align(stored[0], stored[1], hashes)
        if coords is not None:
            return Projection(key, method, full_params, images, coords, cached=True, seconds=0.0)
    started = time.perf_counter()
    coords = reducer.fit_transform(vectors)
    seconds = time.perf_counter() - started
    store.save_projection(key, dataset, encoder_key, method, full_params, hashes, coords, seconds)
    return Projection(key, method, full_params, images, coords, cached=False, seconds=seconds)


def _align(stored_hashes: list[str], stored_coords: np.ndarray, hashes: list[str]) -> np.ndarray | None:
    """Reorder stored coords to ``hashes``; None if the stored set differs (treated as a miss)."""
    if len(stored_hashes) != len(hashes):
        return None
    position = pd.Index(stored_hashes).get_indexer(pd.Index(hashes))
    if (position < 0).any():
        return None
    return np.ascontiguousarray(stored_coords[position], dtype=np.float32)


# ---------------------------------------------------------------------------------------
# Display helpers (pure numpy; the Map page renders what these return)


def stratified_sample(groups: Sequence[Any] | np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of ``limit`` rows, each group keeping its share and at least one row.

    Used to draw huge maps: a uniform sample would erase small folders, this keeps them.
    (With more groups than ``limit``, every group still keeps one row, so more come back.)
    """
    groups = np.asarray(groups)
    n = len(groups)
    if n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    quota = np.maximum(1, np.floor(counts * (limit / n)).astype(int))
    # Hand leftover slots (from flooring) to the biggest groups so the total is exactly limit.
    shortfall = limit - quota.sum()
    if shortfall > 0:
        for g in np.argsort(-counts)[:shortfall]:
            quota[g] += 1
    order = rng.permutation(n)
    rank_in_group = np.empty(n, dtype=np.int64)
    sorted_groups = inverse[order]
    # Rank of each (shuffled) row inside its group: a stable sort keeps the shuffle order.
    by_group = np.argsort(sorted_groups, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_group[order[by_group]] = np.arange(n) - np.repeat(starts, counts)
    keep = rank_in_group < quota[inverse]
    return np.flatnonzero(keep)
