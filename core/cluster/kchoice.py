"""Choosing the number of clusters: a silhouette sweep, the spectral eigengap, and k validation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from core.arrays import check_k
from core.cluster.base import seed_from
from core.cluster.space import knn_graph
from core.errors import InvalidInputError

K_SELECTIONS: tuple[str, ...] = ("silhouette", "eigengap")
# Parameters that only choose k: they have no effect once n_clusters is given.
K_CHOICE_PARAMS: tuple[str, ...] = ("k_selection", "k_min", "k_max")
# Above this many points silhouettes are computed on a seeded sample (the exact score is O(n^2)).
SILHOUETTE_SAMPLE = 5000


def silhouette_sweep(
    Z: np.ndarray,
    fit_k: Callable[[int], np.ndarray],
    ks: Sequence[int],
    *,
    metric: str = "euclidean",
    random_state: Any = 0,
) -> tuple[int, dict[int, float]]:
    """The k in ``ks`` whose labels ``fit_k(k)`` have the best silhouette, and every score.

    The rule is the plain maximum (ties: the smallest k). Scores use a seeded sample of
    ``SILHOUETTE_SAMPLE`` points on large sets.

    Why not "the smallest k within one standard error of the best" (the one-SE rule of CART
    and the gap statistic, SE = sd of the per-image silhouettes / sqrt(n))? Measured on 30
    random Gaussian-blob sets with a known number of clusters (3-17 blobs, 16-256 dims,
    150-600 points, PCA to 50, k in 2..30): the maximum found the true k in 73% of sets and
    never overshot it; one SE found it in 63%, two SE in 50%, a fixed tolerance of 0.02 in 40%,
    each only by undershooting more. The maximum goes past a folder count when folders hold
    visually distinct sub-groups (then it finds the sub-groups; one SE did not change that
    in 6 such sets with 17 folders of 1-3 sub-groups each), so the app shows this curve and
    lets the user pick k from it.
    """
    from sklearn.metrics import silhouette_score

    rng = check_random_state(random_state)
    sample = SILHOUETTE_SAMPLE if len(Z) > SILHOUETTE_SAMPLE else None
    scores: dict[int, float] = {}
    for k in ks:
        labels = fit_k(int(k))
        if len(np.unique(labels)) < 2:
            continue
        scores[int(k)] = float(
            silhouette_score(Z, labels, metric=metric, sample_size=sample, random_state=seed_from(rng))
        )
    if not scores:
        raise InvalidInputError(f"no k in {list(ks)} gave two or more clusters; the vectors may be identical")
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def eigengap_k(
    Z: np.ndarray, k_min: int, k_max: int, *, n_neighbors: int = 15, metric: str = "cosine"
) -> tuple[int, np.ndarray]:
    """Number of clusters from the largest gap in the normalized-Laplacian spectrum of a kNN graph.

    Returns (k, eigenvalues λ_1 ≤ … ≤ λ_{k_max+1}); k maximises λ_{k+1} − λ_k over
    k_min ≤ k ≤ k_max (von Luxburg 2007, "A tutorial on spectral clustering", §8.3).
    """
    from scipy.sparse import csgraph

    n = len(Z)
    k_max = min(int(k_max), n - 2)
    if k_max < k_min:
        raise InvalidInputError(f"eigengap needs n_samples={n} >= k_min + 2 = {k_min + 2}")
    L = csgraph.laplacian(knn_graph(Z, n_neighbors, metric), normed=True)
    values = np.clip(_smallest_eigenvalues(L, k_max + 1), 0.0, None)
    gaps = np.diff(values)  # gaps[i] = λ_{i+2} − λ_{i+1} (1-based eigenvalues): the gap after i+1 clusters
    ks = np.arange(k_min, k_max + 1)
    best = int(ks[np.argmax(gaps[ks - 1])])
    return best, values


def _smallest_eigenvalues(L: Any, m: int) -> np.ndarray:
    """The ``m`` smallest eigenvalues of the sparse symmetric ``L``, ascending (float64)."""
    n = L.shape[0]
    if n <= 2000:
        from scipy.linalg import eigh

        return np.asarray(eigh(L.toarray(), eigvals_only=True, subset_by_index=[0, m - 1]), dtype=np.float64)
    from scipy.sparse import identity
    from scipy.sparse.linalg import eigsh

    # Largest eigenvalues of I − L converge far better in ARPACK than the smallest of L.
    top = eigsh(identity(n, format="csr") - L, k=m, which="LA", return_eigenvectors=False)
    return np.sort(1.0 - np.asarray(top, dtype=np.float64))


def k_range(k_min: int, k_max: int, n: int, what: str) -> list[int]:
    """Candidate ks ``k_min..k_max``, capped at ``n - 1``; an error when none is left."""
    if k_min < 2:
        raise InvalidInputError(f"{what}: k_min={k_min} should be >= 2")
    hi = min(int(k_max), n - 1)
    if hi < k_min:
        raise InvalidInputError(f"{what}: n_samples={n} is too few to choose k in {k_min}..{k_max}")
    return list(range(int(k_min), hi + 1))


def check_n_clusters(k: int, n: int, what: str) -> int:
    """``core.arrays.check_k`` for a cluster count, the bound phrased as "n_samples=n should be >= n_clusters=k"."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > n:
        raise InvalidInputError(f"{what}: n_samples={n} should be >= n_clusters={k}")
    return check_k(k, n, what=what, name="n_clusters")


def choose_k(est: Any, Z: np.ndarray, n: int, fit_k: Callable[[int], np.ndarray]) -> tuple[int, Any, dict[str, Any]]:
    """(k, scores, extra) for k-means/agglomerative: given k, or the silhouette/eigengap choice.

    ``est`` carries ``n_clusters``, ``k_selection``, ``k_min``, ``k_max``, ``reduce``,
    ``n_neighbors``, ``random_state`` and ``method``.
    """
    if est.n_clusters is not None:
        return check_n_clusters(est.n_clusters, n, est.method), {}, {"k_selection": "given"}
    if est.k_selection not in K_SELECTIONS:
        raise InvalidInputError(f"k_selection={est.k_selection!r}: choose one of {', '.join(K_SELECTIONS)}")
    ks = k_range(est.k_min, est.k_max, n, est.method)
    # Without a reduction the clustered space is the unit sphere: cosine is its natural metric.
    metric = "cosine" if est.reduce in (None, "none") else "euclidean"
    if est.k_selection == "silhouette":
        k, scores = silhouette_sweep(Z, fit_k, ks, metric=metric, random_state=est.random_state)
        rounded = {str(key): round(v, 6) for key, v in scores.items()}
        return k, scores, {"k_selection": "silhouette", "k_scores": rounded, "k_chosen": k}
    k, values = eigengap_k(Z, ks[0], ks[-1], n_neighbors=est.n_neighbors, metric=metric)
    eigenvalues = [round(float(v), 6) for v in values]
    return k, values, {"k_selection": "eigengap", "eigenvalues": eigenvalues, "k_chosen": k}


@dataclass(frozen=True)
class KCurve:
    """The curve a run chose its k from: ``scores[i]`` belongs to ``ks[i]`` (ascending).

    ``selection`` is "silhouette" (scores are silhouettes) or "eigengap" (scores are the gaps
    λ_{k+1} − λ_k of the normalized-Laplacian spectrum); ``chosen`` is the k the run used;
    ``k_max`` the largest k it was allowed to try (None when unknown).
    """

    selection: str
    ks: list[int]
    scores: list[float]
    chosen: int
    k_max: int | None = None

    @property
    def score_name(self) -> str:
        return "silhouette" if self.selection == "silhouette" else "eigengap λ(k+1) − λ(k)"

    @property
    def at_largest_k(self) -> bool:
        """The choice is the largest k tried and that was the k_max cap: the curve may rise further."""
        return self.chosen == self.ks[-1] and self.k_max is not None and self.ks[-1] >= self.k_max


def k_curve(metrics: Mapping[str, Any], params: Mapping[str, Any]) -> KCurve | None:
    """The k-choice curve a stored run kept in its metrics, or None when k was given (or it is an edit).

    Silhouette runs store ``k_scores`` (str(k) → score); eigengap runs store the ``eigenvalues``
    λ_1 … λ_{m}, from which the gap for k (k_min ≤ k < m) is λ_{k+1} − λ_k. ``chosen`` is the
    stored ``k_chosen`` (runs stored before it existed: ``n_clusters``).
    """
    selection = metrics.get("k_selection")
    pairs: list[tuple[int, float]] = []
    if selection == "silhouette" and metrics.get("k_scores"):
        pairs = sorted((int(k), float(v)) for k, v in dict(metrics["k_scores"]).items())
    elif selection == "eigengap" and metrics.get("eigenvalues"):
        values = [float(v) for v in metrics["eigenvalues"]]
        k_min = int(params.get("k_min") or 2)
        pairs = [(k, values[k] - values[k - 1]) for k in range(k_min, len(values))]
    if not pairs:
        return None
    k_max = params.get("k_max")
    return KCurve(
        str(selection),
        [k for k, _ in pairs],
        [v for _, v in pairs],
        int(metrics["k_chosen"] if "k_chosen" in metrics else metrics["n_clusters"]),
        int(k_max) if isinstance(k_max, (int, np.integer)) and not isinstance(k_max, bool) else None,
    )


def fixed_k_params(params: Mapping[str, Any], k: int) -> dict[str, Any]:
    """A run's parameters with k fixed to ``k`` and the k-choice parameters (no effect then) left at their defaults.

    With the same seed and space, k-means and Ward refit with these give the very labels the
    sweep scored at ``k``; the result equals a "Fixed k" run with the same settings (so one is
    reused for the other).
    """
    out = {name: value for name, value in params.items() if name not in K_CHOICE_PARAMS}
    out["n_clusters"] = int(k)
    return out
