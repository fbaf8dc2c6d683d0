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

import functools
import hashlib
import importlib.util
import inspect
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state

from core.arrays import as_matrix, l2_normalize
from core.errors import EngineUnavailableError, InvalidInputError
from core.registry import Registry
from core.store import Store

# The built-in methods, in the order the Map page offers them; ``reduction_methods()`` adds plug-ins.
# "umap-sampled" (registered after them) is not offered: ``layout_for_size`` picks it for large maps.
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


# Above this many points the Map page lays UMAP out with ``SampledUMAPReducer``. Measured with
# bench/scale_bench.py on clustered 384-d vectors (a mixture of 2,000 centres), 2 CPU cores;
# layouts compared by trustworthiness at k=15 on a fixed 10k subsample (how well the map keeps
# which clusters lie near each other) and by the share of each point's 15 nearest neighbours
# (among all points) kept on the map (local detail):
#   100k, full umap-learn fit                          87 s   0.79   0.35
#   100k, full fit on a precomputed usearch kNN graph  2.5x the full fit   0.76
#   100k, 20k-point fit + umap-learn ``transform``     0.55x the full fit  0.93
#   100k, 20k-point fit + 15-NN soft placement         17 s   0.99   0.27
#   1M,   20k-point fit + 15-NN soft placement         97 s   0.99   0.04
#   100k, 20k-point fit + 5-NN sharp placement (this)  12 s   0.99   0.38
#   1M,   20k-point fit + 5-NN sharp placement (this)  47 s   0.99   0.08
#   1M,   that + 30 umap-learn epochs over a kNN graph of every point (cells of the nearest
#         fitted points; recall 0.67)                  +95 s  0.96   0.04
# (rows 2-3 were timed in another run on a loaded machine, where the full fit took 682 s and
# the 20k-point fit + placement 56 s, hence relative times; the refinement row in a separate
# experiment: it cost time and gained nothing, so it is not offered). A full fit grows faster
# than linearly with n; up to 100k points it takes about 1.5 minutes.
LARGE_MAP_THRESHOLD = 100_000
ProgressReport = Callable[[int, "int | None", "str | None"], None]  # (done, total, message); may raise to stop
SAMPLED_METRICS: dict[str, str] = {"cosine": "cos", "euclidean": "l2sq", "correlation": "pearson"}


@register_reducer
class SampledUMAPReducer(Reducer):
    """UMAP for maps too big to fit whole: fit on a random sample, place every other point.

    umap-learn on 1M points runs for hours on a laptop CPU. Here UMAP (the same parameters as
    the ``umap`` method) lays out ``sample_size`` points drawn at random; every other point is
    then placed at a membership-weighted mean of the layout of its ``placement_neighbors``
    nearest sampled points (found with a usearch HNSW index over the sample, in the same
    metric). Below ``sample_size`` points it is plain UMAP. The layout is reproducible for a
    given ``random_state``.

    Placement uses few neighbours (5) with sharp weights, not umap-learn's ``transform``
    initialisation (all ``n_neighbors``, softer weights): the wider mean pulls every placed
    point toward the middle of its group, so neighbours inside a group no longer sit together.
    On ``bench/scale_bench.py``'s clustered vectors the share of true 15-NN kept on the map
    rose from 0.27 to 0.38 at 100k points (a full UMAP fit: 0.35) and from 0.04 to 0.08 at 1M,
    trustworthiness unchanged (0.988).

    The sample size sets the scale UMAP sees: on a sample, each point's ``n_neighbors``
    reach further into the data, so which groups lie near each other is kept better than by
    a full fit (whose neighbourhoods stay inside one tight group, leaving the groups' places
    arbitrary), while detail inside a group is lost (placed points sit between their sampled
    neighbours). A larger sample keeps more local detail and costs a longer fit.
    """

    method = "umap-sampled"

    def __init__(
        self,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        metric: str = "cosine",
        sample_size: int = 20_000,
        random_state: int | None = 42,
        placement_neighbors: int = 5,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.sample_size = sample_size
        self.random_state = random_state
        self.placement_neighbors = placement_neighbors
        # Not a parameter (it does not change the layout): a job sets it to report progress and stop.
        self.on_progress: ProgressReport | None = None

    def _report(self, done: int, total: int | None, message: str | None = None) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total, message)

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        X = _map_matrix(X, minimum=3)
        umap_part = UMAPReducer(self.n_neighbors, self.min_dist, self.metric, self.random_state)
        umap_part._check_params()
        if self.metric not in SAMPLED_METRICS:
            offered = ", ".join(SAMPLED_METRICS)
            raise InvalidInputError(
                f"The sampled UMAP layout does not offer the {self.metric!r} metric; choose one of {offered}."
            )
        if self.sample_size < 1_000:
            raise InvalidInputError(f"sample_size={self.sample_size}: choose at least 1000 (20000 is a good start).")
        if not 1 <= self.placement_neighbors <= 100:
            raise InvalidInputError(
                f"placement_neighbors={self.placement_neighbors}: choose between 1 and 100 (5 is a good start)."
            )
        n = X.shape[0]
        if n <= self.sample_size:
            return umap_part.fit_transform(X)
        sample = np.sort(check_random_state(self.random_state).choice(n, self.sample_size, replace=False))
        coords = np.empty((n, 2), dtype=np.float32)
        self._report(0, None, f"Fitting UMAP on {self.sample_size:,} randomly drawn points")
        coords[sample] = umap_part.fit_transform(X[sample])
        rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
        # Counted from here only: the rate (and so the ETA) is that of placing points, not of the fit.
        self._report(0, len(rest), f"Placing the other {len(rest):,} points beside their nearest sampled ones")
        neighbours, distances = _nearest_in_sample(X, sample, rest, self.metric, self.placement_neighbors, self._report)
        coords[rest] = _weighted_positions(coords[sample], neighbours, distances)
        return coords


def _nearest_in_sample(
    X: np.ndarray,
    sample: np.ndarray,
    rest: np.ndarray,
    metric: str,
    k: int,
    report: ProgressReport | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``sample``, distances), each (len(rest), k): the nearest sampled points of each other point."""
    from usearch.index import Index

    index = Index(ndim=X.shape[1], metric=SAMPLED_METRICS[metric], dtype="f16", connectivity=16, expansion_add=64)
    # One thread: a multi-threaded build is not reproducible, and the sample is small.
    index.add(np.arange(len(sample), dtype=np.uint64), X[sample], threads=1)
    index.expansion_search = max(64, 2 * k)  # type: ignore[misc]  # usearch's setter reads as read-only
    keys = np.empty((len(rest), k), dtype=np.int64)
    distances = np.empty((len(rest), k), dtype=np.float32)
    for start in range(0, len(rest), _PLACEMENT_CHUNK):
        chunk = rest[start : start + _PLACEMENT_CHUNK]
        found = index.search(X[chunk], k)
        keys[start : start + len(chunk)] = np.asarray(found.keys, dtype=np.int64).reshape(len(chunk), k)
        distances[start : start + len(chunk)] = np.asarray(found.distances, dtype=np.float32).reshape(len(chunk), k)
        if report is not None:
            report(start + len(chunk), len(rest), None)
    # A point with fewer than k reachable neighbours gets its nearest one repeated (weight unchanged in sum).
    missing = (keys < 0) | (keys >= len(sample))
    keys = np.where(missing, keys[:, :1], keys)
    distances = np.where(missing, distances[:, :1], distances)
    if metric == "euclidean":  # usearch gives squared distances; memberships are defined on distances
        distances = np.sqrt(np.maximum(distances, 0.0))
    return keys, distances


_PLACEMENT_CHUNK = 65_536


# sigma as a share of a row's mean excess distance: a quarter keeps a placed point close to its
# nearest sampled point, so points near each other in the data stay near each other on the map.
_PLACEMENT_SHARPNESS = 0.25


def _weighted_positions(sample_coords: np.ndarray, neighbours: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Each point at the mean of its neighbours' coordinates, weighted like UMAP's memberships:
    ``exp(-(d - d_nearest) / sigma)`` with sigma a quarter of the row's mean excess distance."""
    excess = distances - distances[:, :1]
    sigma = np.maximum(_PLACEMENT_SHARPNESS * excess.mean(axis=1, keepdims=True), 1e-6)
    weights = np.exp(-excess / sigma)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, sample_coords[neighbours]).astype(np.float32)


# With cuML and a CUDA GPU, UMAP above this many points runs there as a full fit (seconds at 1M
# points on an H200 by NVIDIA's figures; never measured by this project, which had no GPU).
GPU_UMAP_ABOVE = 20_000


@functools.cache
def gpu_umap_available() -> bool:
    """cuML importable and a CUDA device visible (checked once per process)."""
    if importlib.util.find_spec("cuml") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@register_reducer
class GPUUMAPReducer(UMAPReducer):
    """RAPIDS cuML's UMAP on a CUDA GPU: the whole dataset fitted, no sample.

    Its layout differs from umap-learn's for the same parameters (another kNN graph builder and
    optimiser), so it is its own method and its own cached layout. Cosine and correlation are
    fitted as euclidean on unit (centred, for correlation) vectors, which ranks neighbours the
    same way: cuML's fast graph builder (nn-descent, picked above ~50k points) is euclidean only.
    """

    method = "umap-gpu"  # the parameters (and their checks) are UMAPReducer's

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        X = _map_matrix(X, minimum=3)
        self._check_params()
        umap_class = _cuml_umap()
        X, metric = _as_euclidean(X, self.metric)
        reducer = umap_class(
            n_components=2,
            n_neighbors=min(self.n_neighbors, X.shape[0] - 1),
            min_dist=self.min_dist,
            metric=metric,
            random_state=self.random_state,
            build_algo="auto" if metric == "euclidean" else "brute_force_knn",
            output_type="numpy",
        )
        return np.ascontiguousarray(reducer.fit_transform(X), dtype=np.float32)


def _cuml_umap() -> Any:
    try:
        from cuml.manifold import UMAP
    except ImportError as exc:
        raise EngineUnavailableError(
            "The GPU UMAP layout needs RAPIDS cuML and a CUDA GPU (pip install cuml-cu12 on a GPU machine); "
            f"choose UMAP or UMAP (sampled) here. ({exc})"
        ) from exc
    return UMAP


def _as_euclidean(X: np.ndarray, metric: str) -> tuple[np.ndarray, str]:
    """(vectors, metric) where cosine/correlation become euclidean on unit (centred) rows: the same
    neighbours in the same order, since |a - b|^2 = 2 - 2 cos(a, b) for unit vectors."""
    if metric == "correlation":
        X = X - X.mean(axis=1, keepdims=True)
    if metric in ("cosine", "correlation"):
        return l2_normalize(X, zero_rows="keep", what="vectors"), "euclidean"
    return np.ascontiguousarray(X, dtype=np.float32), metric


@dataclass(frozen=True)
class LayoutChoice:
    """The layout the Map page runs for a dataset of a given size, and what to tell the user."""

    method: str
    params: dict[str, Any]
    note: str | None  # set when the page swapped the method the user chose


def layout_for_size(method: str, params: dict[str, Any], n_points: int) -> LayoutChoice:
    """``method`` as chosen, except UMAP on many points: with cuML and a GPU above
    ``GPU_UMAP_ABOVE`` points, a full fit there; otherwise above ``LARGE_MAP_THRESHOLD`` points
    the sampled UMAP with the same parameters (a full fit on the CPU would run for hours). The
    note says which."""
    if method == "umap" and n_points > GPU_UMAP_ABOVE and gpu_umap_available():
        note = (
            f"{n_points:,} points are laid out with cuML's UMAP on the GPU: a full fit, in seconds. "
            "Its layout differs a little from the CPU UMAP's, so it is kept as a layout of its own."
        )
        return LayoutChoice(GPUUMAPReducer.method, dict(params), note)
    if method != "umap" or n_points <= LARGE_MAP_THRESHOLD:
        return LayoutChoice(method, dict(params), None)
    sampled = {**params, "sample_size": SampledUMAPReducer().sample_size}
    note = (
        f"{n_points:,} points is more than a full UMAP fit handles in reasonable time "
        f"(above {LARGE_MAP_THRESHOLD:,}): UMAP is fitted on {sampled['sample_size']:,} randomly drawn points "
        "and every other point placed beside its nearest fitted neighbours."
    )
    return LayoutChoice(SampledUMAPReducer.method, sampled, note)


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
    progress: ProgressReport | None = None,
) -> Projection:
    """The 2-D layout of ``dataset`` under ``encoder_key``, from the store or computed once.

    ``images``/``vectors`` may be passed when the caller already loaded them (the app caches
    them); otherwise they are read from the store. ``progress`` hears how far a reducer that
    reports progress (the sampled UMAP) has got.
    """
    reducer = make_reducer(method, params)
    if progress is not None and hasattr(reducer, "on_progress"):
        reducer.on_progress = progress
    full_params = reducer.get_params()
    if images is None or vectors is None:
        images, vectors = store.load_embeddings(dataset, encoder_key)
    found = cached_projection(store, encoder_key, method, params, images)
    if found is not None:
        return found
    hashes = images["content_hash"].tolist()
    key = projection_key(hashes, encoder_key, method, full_params)
    started = time.perf_counter()
    coords = reducer.fit_transform(vectors)
    seconds = time.perf_counter() - started
    store.save_projection(key, dataset, encoder_key, method, full_params, hashes, coords, seconds)
    return Projection(key, method, full_params, images, coords, cached=False, seconds=seconds)


def cached_projection(
    store: Store, encoder_key: str, method: str, params: dict[str, Any] | None, images: pd.DataFrame
) -> Projection | None:
    """The stored layout of ``images`` (``load_embeddings`` rows) under ``encoder_key``, or None when
    it has not been computed: lets a page decide how to compute a missing layout (here, or as a job)."""
    full_params = make_reducer(method, params).get_params()
    hashes = images["content_hash"].tolist()
    key = projection_key(hashes, encoder_key, method, full_params)
    stored = store.load_projection(key)
    if stored is None:
        return None
    coords = _align(stored[0], stored[1], hashes)
    if coords is None:
        return None
    return Projection(key, method, full_params, images, coords, cached=True, seconds=0.0)


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
