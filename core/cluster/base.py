"""The clusterer base class, the clusterer registry and the small pieces every clusterer shares.

Clusterers follow scikit-learn manners (they *are* scikit-learn estimators): ``__init__``
only stores its keyword arguments, ``fit(X)`` validates, returns ``self`` and leaves learned
state in attributes ending in ``_``. ``get_params``/``set_params``/``clone`` come from
``BaseEstimator``. Built-ins register with ``@register_clusterer`` exactly as a plug-in does;
other distributions are found through the ``replens.clusterers`` entry-point group.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

from core import arrays
from core.errors import InvalidInputError
from core.registry import Registry

NOISE = -1
_MAX_SEED = np.iinfo(np.int32).max
# Below this many matrix entries, BLAS/OpenMP threads cost more than they save (and on a busy
# machine thread contention made a k sweep ~30x slower); one thread is used.
_SMALL_PROBLEM = 5_000_000


class ClusteringWarning(UserWarning):
    """A clustering ran, but its result or its parameters deserve a second look."""


class Clusterer(ClusterMixin, BaseEstimator):
    """Base class: validation of ``X``, zero rows as noise, size-ordered labels; ``fit_predict``.

    Subclasses set ``method`` and implement ``_fit(Xn) -> labels`` on L2-normalised rows
    (labels renumbered by size, -1 noise); they may set ``extra_``, a JSON-safe dict stored
    with the run's metrics. ``fit`` validates ``X``, marks all-zero rows (no direction) as
    noise with a ``ClusteringWarning``, and sets ``labels_``, ``n_clusters_``,
    ``noise_fraction_`` and ``valid_mask_`` (rows that took part; ``embedding_`` rows are
    those rows). A plug-in may also override ``fit`` entirely.
    """

    method: str = ""
    _min_samples: int = 2

    def set_params(self, **params: Any) -> Clusterer:
        """As scikit-learn's, but an unknown name is the user's error and the message lists the valid ones."""
        valid = self.get_params(deep=False)
        for name in params:
            if name not in valid:
                raise InvalidInputError(f"{self.method}: no parameter {name!r}; it takes {', '.join(valid)}.")
        super().set_params(**params)
        return self

    def fit(self, X: np.ndarray, y: Any = None) -> Clusterer:
        """Cluster the rows of ``X`` (``y`` is ignored, as scikit-learn clusterers do)."""
        X = arrays.as_matrix(X, what=self.method, minimum=self._min_samples)
        valid = _has_direction(X)
        n_valid = int(valid.sum())
        if n_valid < self._min_samples:
            raise InvalidInputError(
                f"{self.method}: only {n_valid} of {len(X)} vectors are non-zero; "
                f"need >= {self._min_samples}. Re-extract the embeddings."
            )
        if not valid.all():
            zero = np.flatnonzero(~valid)
            warnings.warn(
                f"{len(zero)} zero vector(s) (rows {zero[:5].tolist()}) have no direction; they are marked noise (-1).",
                ClusteringWarning,
                stacklevel=2,
            )
        with thread_limit(n_valid, X.shape[1]):
            labels = self._fit(arrays.l2_normalize(X[valid], what=self.method))
        full = np.full(len(X), NOISE, dtype=np.int64)
        full[valid] = labels
        self.labels_ = full
        self.valid_mask_ = valid
        self.n_clusters_ = count_clusters(full)
        self.noise_fraction_ = float(np.mean(full == NOISE))
        self._check_result()
        return self

    def _fit(self, Xn: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # each clusterer implements _fit (or overrides fit)

    def _check_result(self) -> None:
        """Hook for warnings about the finished result (see HDBSCAN, Leiden)."""


def _has_direction(X: np.ndarray) -> np.ndarray:
    """Rows that are not all zero (tested on the largest component, so tiny vectors still count)."""
    if X.shape[1] == 0:
        return np.zeros(len(X), dtype=bool)
    return np.asarray(np.abs(X).max(axis=1) > 0)


def thread_limit(n: int, d: int) -> AbstractContextManager[Any]:
    """One BLAS/OpenMP thread for small problems, the library defaults otherwise."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1) if n * d <= _SMALL_PROBLEM else nullcontext()


# ---------------------------------------------------------------------------------------
# Registry

CLUSTERERS: Registry[type[Clusterer]] = Registry("clusterer", warning=ClusteringWarning)
# The registry's own dict under its old name, so code (and tests) written against the old
# module that drop a plug-in with ``_CLUSTERERS.pop(name, None)`` keep working; new code calls
# ``CLUSTERERS.remove(name)``.
_CLUSTERERS: dict[str, type[Clusterer]] = CLUSTERERS._items


def register_clusterer(cls: type[Clusterer]) -> type[Clusterer]:
    """Class decorator: make ``cls`` available under ``cls.method`` (a second registration warns)."""
    if not cls.method:
        raise InvalidInputError(f"{cls.__name__} needs a non-empty `method` name to be registered")
    return CLUSTERERS.add(cls.method, cls)


def clustering_methods() -> list[str]:
    """Names of every registered clusterer (built-ins, then plug-ins), in registration order."""
    return CLUSTERERS.names()


def make_clusterer(method: str, params: dict[str, Any] | None = None) -> Clusterer:
    """A clusterer for ``method`` built from ``params`` (its ``__init__`` keywords).

    Example: ``make_clusterer("kmeans", {"n_clusters": 8, "random_state": 0}).fit(X).labels_``
    """
    cls = CLUSTERERS.get(method)
    if cls is None:
        raise InvalidInputError(
            f"Unknown clustering method {method!r}; choose one of {', '.join(clustering_methods())}."
        )
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise InvalidInputError(f"{method}: {exc}. Parameters it takes: {', '.join(names)}.") from exc


# ---------------------------------------------------------------------------------------
# Shared helpers


def l2_normalize(X: np.ndarray, *, allow_zero: bool = False) -> np.ndarray:
    """Rows scaled to unit length (float32), by ``core.arrays.l2_normalize``.

    An all-zero row has no direction: an error, or left at zero with ``allow_zero``.
    """
    return arrays.l2_normalize(X, zero_rows="keep" if allow_zero else "raise", what="clustering")


def seed_from(rng: np.random.RandomState) -> int:
    """A fresh int seed drawn from ``rng`` (for libraries that take an int, not a RandomState)."""
    return int(rng.randint(_MAX_SEED))


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


def count_clusters(labels: np.ndarray) -> int:
    """Number of clusters in ``labels``, noise not counted."""
    return int(len(np.unique(labels[labels != NOISE])))
