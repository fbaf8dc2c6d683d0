"""How good is this representation? Label-free and label-based diagnostics, and encoder comparison.

Label-free (any folder):
    ``rankme`` effective rank (Garrido et al., ICML 2023) with ``rankme_isotropic``, its value
    for isotropic Gaussian vectors of the same shape (RankMe cannot exceed min(n − 1, d), so it
    is read against that reference), ``eigenspectrum`` (for a plot of
    dimensional collapse, Jing et al. 2022), ``uniformity`` (Wang & Isola, ICML 2020),
    ``mean_lid`` local intrinsic dimensionality (Levina & Bickel 2004 MLE, as used by LDReg,
    Huang et al. ICLR 2024), ``hubness`` (skewness of the k-occurrence distribution,
    Radovanović et al. 2010).
With folder labels:
    ``knn_accuracy`` (weighted kNN of the DINO protocol, Caron et al. 2021: k=20, T=0.07,
    leave-one-out) and ``linear_probe`` (logistic regression, stratified cross-validation).
Between encoders, on the same images:
    ``linear_cka`` (Kornblith et al., ICML 2019) and ``mutual_knn`` overlap (Huh et al.,
    ICML 2024); ``compare_encoders`` aligns every embedded encoder of a dataset by image hash.

Geometry is cosine throughout: vectors are L2-normalised before neighbourhoods, uniformity
and LID are computed. RankMe and the spectrum take the vectors as stored, centred (the mean
vector subtracted: a common offset is not a dimension in use), both from the same singular
values; CKA centres too.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils import check_random_state

from core.arrays import as_matrix, check_k, l2_normalize
from core.errors import InvalidInputError
from core.store import Store

# Rows of a similarity matrix computed at once (memory: block x n floats).
_BLOCK = 1024


class DiagnosticsWarning(UserWarning):
    """A diagnostic ran on adjusted input (subsampled, classes dropped, k capped)."""


def _matrix(X: np.ndarray, minimum: int, what: str) -> np.ndarray:
    """``X`` as a finite float64 (n, d) matrix with n >= ``minimum``."""
    return as_matrix(X, what=what, minimum=minimum, dtype=np.float64)


def _unit(X: np.ndarray, what: str) -> np.ndarray:
    """Unit rows in float64; a zero vector has no direction, so it is an error here."""
    return l2_normalize(X, zero_rows="raise", what=what, dtype=np.float64)


def _check_k(k: int, n: int, what: str) -> int:
    """``k`` in 1..n-1: a point's neighbours never include the point itself."""
    try:
        return check_k(k, n, what=what, maximum=n - 1)
    except InvalidInputError as exc:
        if isinstance(k, (int, np.integer)) and k > n - 1:  # keep the message that says why n - 1
            raise InvalidInputError(f"{what}: k={k} should be <= n_samples - 1 = {n - 1}") from exc
        raise


# ---------------------------------------------------------------------------------------
# Label-free


def singular_values(X: np.ndarray, *, center: bool = True) -> np.ndarray:
    """Singular values of the embedding matrix, descending; of the centred matrix if ``center``
    (the one matrix both ``eigenspectrum`` and ``rankme`` read)."""
    X = _matrix(X, 2 if center else 1, "singular values")
    if center:
        X = X - X.mean(axis=0)
    s = np.linalg.svd(X, compute_uv=False)
    if s.sum() == 0:
        what = "all vectors are identical" if center else "the embedding matrix is all zeros"
        raise InvalidInputError(f"{what}; there is no spread to measure")
    return s


def eigenspectrum(X: np.ndarray, *, center: bool = True) -> np.ndarray:
    """Singular values of the centred embedding matrix (raw if ``center=False``), descending,
    normalised to sum 1.

    A spectrum that drops to ~0 after a few components is dimensional collapse.
    """
    s = singular_values(X, center=center)
    return s / s.sum()


def rankme_from_singular_values(s: np.ndarray, *, eps: float = 1e-7) -> float:
    """exp of the entropy of p_k = σ_k / ‖σ‖₁ + ε."""
    p = np.asarray(s, dtype=np.float64) / np.sum(s) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def rankme(X: np.ndarray, *, center: bool = True, eps: float = 1e-7) -> float:
    """RankMe: exp of the entropy of p_k = σ_k / ‖σ‖₁ + ε over the singular values σ of X,
    centred like the eigen-spectrum (``center=False``: the raw matrix, as in Garrido et al.).

    It cannot exceed min(n − 1, d) (min(n, d) uncentred); read it against ``rankme_isotropic``.
    """
    return rankme_from_singular_values(singular_values(X, center=center), eps=eps)


def isotropic_singular_values(n: int, d: int, *, random_state: Any = 0) -> np.ndarray:
    """Singular values (descending) of one draw of an n × d matrix of i.i.d. standard normals.

    Exact in distribution without the n × d matrix: Householder bidiagonalisation turns the
    Gaussian matrix (M = max(n, d) by m = min(n, d)) into an m × m upper bidiagonal matrix with
    independent χ_M, χ_{M−1}, …, χ_{M−m+1} on the diagonal and χ_{m−1}, …, χ_1 above it
    (Dumitriu & Edelman 2002), whose singular values are the positive eigenvalues of a 2m × 2m
    symmetric tridiagonal matrix (Golub & Kahan 1965): O(m²) time, O(m) memory.
    """
    from scipy.linalg import eigvalsh_tridiagonal

    if n < 1 or d < 1:
        raise InvalidInputError(f"isotropic reference: needs n >= 1 and d >= 1, got n={n}, d={d}")
    big, m = max(n, d), min(n, d)
    rng = check_random_state(random_state)
    diagonal = np.sqrt(rng.chisquare(big - np.arange(m)))
    above = np.sqrt(rng.chisquare(m - 1 - np.arange(m - 1))) if m > 1 else np.empty(0)
    off = np.empty(2 * m - 1)
    off[0::2], off[1::2] = diagonal, above
    eigenvalues = eigvalsh_tridiagonal(np.zeros(2 * m), off)
    return np.maximum(np.sort(eigenvalues)[::-1][:m], 0.0)  # the eigenvalues are ±σ: keep the m largest


def rankme_isotropic(
    n: int, d: int, *, center: bool = True, eps: float = 1e-7, draws: int | None = None, random_state: Any = 0
) -> float:
    """RankMe of isotropic Gaussian vectors of the same shape: the mean over ``draws`` seeded
    draws of n × d standard normals (centred like ``rankme``: a centred n × d Gaussian matrix has
    the singular values of an uncentred (n − 1) × d one). ``draws`` defaults to 8 for
    min(n, d) ≤ 512, fewer above (one draw's RankMe varies by ~0.3 whatever the size, < 1e-3 of
    it once min(n, d) > 512).

    That is what vectors with no preferred direction score at this n and d (about 695 at
    801 × 1024, not 1024): ``rankme / rankme_isotropic`` near 1 means variance spread like an
    isotropic cloud's, far below 1 means it sits in a few directions (collapse).
    """
    rows = n - 1 if center else n
    if rows < 1 or d < 1:
        raise InvalidInputError(f"rankme_isotropic: needs at least {2 if center else 1} vectors, got {n}")
    if draws is None:
        draws = max(1, min(8, 4096 // min(rows, d)))
    elif draws < 1:
        raise InvalidInputError(f"rankme_isotropic: draws={draws} should be >= 1")
    rng = check_random_state(random_state)
    values = [
        rankme_from_singular_values(isotropic_singular_values(rows, d, random_state=rng), eps=eps) for _ in range(draws)
    ]
    return float(np.mean(values))


def uniformity(X: np.ndarray, *, t: float = 2.0, max_points: int = 5000, random_state: Any = 0) -> float:
    """log mean over pairs i<j of exp(−t‖x_i − x_j‖²) on L2-normalised vectors (lower = more uniform).

    Sets above ``max_points`` are subsampled (seeded).
    """
    from scipy.spatial.distance import pdist
    from scipy.special import logsumexp

    X = _unit(_matrix(X, 2, "uniformity"), "uniformity")
    if len(X) > max_points:
        X = X[np.sort(check_random_state(random_state).choice(len(X), max_points, replace=False))]
    sq = pdist(X, "sqeuclidean")
    return float(logsumexp(-t * sq) - np.log(len(sq)))


def knn_distances(X: np.ndarray, k: int, *, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of each point's k nearest other points (Euclidean; on unit vectors if ``normalize``).

    Distances are recomputed as ‖x_i − x_j‖ for the neighbours found (then sorted): the search's
    ‖x‖² + ‖y‖² − 2x·y form loses ~1e-8 to rounding, so an exact copy would sit at ~3e-8, not 0.
    """
    from sklearn.neighbors import NearestNeighbors

    X = _matrix(X, 2, "knn")
    if normalize:
        X = _unit(X, "knn")
    k = _check_k(k, len(X), "knn")
    # kneighbors() without X leaves each point out of its own neighbour list.
    _, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors()
    dist = np.empty(idx.shape)
    step = max(1, (1 << 22) // max(1, k * X.shape[1]))  # ~32 MB of differences at a time
    for start in range(0, len(X), step):
        rows = slice(start, start + step)
        dist[rows] = np.linalg.norm(X[rows, None, :] - X[idx[rows]], axis=2)
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)


def distinct_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers of the first copy of each distinct row, in order; row → its distinct row's position).

    Rows are the same when every value is exactly equal (content, not a distance tolerance).
    """
    X = np.ascontiguousarray(X)
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse]


def lid_from_distances(distances: np.ndarray) -> np.ndarray:
    """Levina–Bickel MLE per row of sorted neighbour distances r_1 ≤ … ≤ r_k:
    LID = [ (1/(k−1)) Σ_{j<k} log(r_k / r_j) ]⁻¹ (zero distances floored at 1e-12;
    rows whose k distances are all equal give inf)."""
    r = np.maximum(np.asarray(distances, dtype=np.float64), 1e-12)
    if r.ndim != 2 or r.shape[1] < 2:
        raise InvalidInputError(f"LID needs k >= 2 neighbour distances per point, got shape {r.shape}")
    logs = np.log(r[:, -1:] / r[:, :-1]).sum(axis=1) / (r.shape[1] - 1)
    with np.errstate(divide="ignore"):
        return 1.0 / logs


def _distinct_directions(X: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct unit vectors, row → position among them): cosine geometry's points."""
    U = _unit(_matrix(X, 2, what), what)
    first, position = distinct_rows(U)
    return U[first], position


def _lid_of_distinct(U: np.ndarray, k: int) -> np.ndarray:
    """Per-point LID of distinct unit vectors (NaN for all when there are fewer than 3)."""
    if len(U) < 3:
        return np.full(len(U), np.nan)
    dist, _ = knn_distances(U, min(k, len(U) - 1), normalize=False)
    return lid_from_distances(dist)


def local_intrinsic_dimension(X: np.ndarray, k: int = 20) -> np.ndarray:
    """Per-row LID (MLE on the k nearest neighbours, cosine geometry).

    Rows with the same direction (identical after L2 normalisation: exact copies in particular)
    are one point: a copy is not a neighbour at distance 0, and every copy gets that point's
    LID. NaN throughout when there are fewer than 3 distinct points.
    """
    U, position = _distinct_directions(X, "local intrinsic dimension")
    return _lid_of_distinct(U, k)[position]


def mean_lid(X: np.ndarray, k: int = 20) -> float:
    """Mean LID over the distinct points (see ``local_intrinsic_dimension``): exact duplicates
    count once, so they neither add near-zero distances nor weigh more. Non-finite values (a
    point whose k neighbours are all equidistant) are left out; NaN when none is left."""
    U, _ = _distinct_directions(X, "mean LID")
    lids = _lid_of_distinct(U, k)
    finite = lids[np.isfinite(lids)]
    return float(finite.mean()) if len(finite) else float("nan")


def k_occurrence(X: np.ndarray, k: int = 10) -> np.ndarray:
    """N_k(x): how many points have x among their k nearest neighbours (cosine)."""
    _, idx = knn_distances(X, k)
    return np.bincount(idx.ravel(), minlength=len(idx))


def hubness(X: np.ndarray, k: int = 10) -> float:
    """Skewness of the k-occurrence distribution (0 for none; > 1 means strong hubs)."""
    from scipy.stats import skew

    counts = k_occurrence(X, min(k, len(X) - 1)).astype(np.float64)
    if counts.std() == 0:
        return 0.0
    return float(skew(counts))


# ---------------------------------------------------------------------------------------
# With labels


def _labels(labels: Sequence[Any] | np.ndarray, n: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise InvalidInputError(f"{what}: {labels.shape[0] if labels.ndim else 0} labels for {n} vectors")
    if len(np.unique(labels)) < 2:
        raise InvalidInputError(f"{what}: needs at least two classes (folders); got {np.unique(labels).tolist()}")
    return labels


def knn_accuracy(X: np.ndarray, labels: Sequence[Any] | np.ndarray, *, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN accuracy, leave-one-out (DINO): each of a point's k most cosine-similar
    other points votes for its class with weight exp(sim / T); ties go to the first class in
    sorted order."""
    X = _unit(_matrix(X, 2, "knn_accuracy"), "knn_accuracy")
    labels = _labels(labels, len(X), "knn_accuracy")
    k = _check_k(min(k, len(X) - 1), len(X), "knn_accuracy")
    if not temperature > 0:
        raise InvalidInputError(f"temperature={temperature!r} should be > 0")
    classes, y = np.unique(labels, return_inverse=True)
    correct = 0
    for start in range(0, len(X), _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, len(X)))
        sims = X[rows] @ X.T
        sims[np.arange(len(rows)), rows] = -np.inf
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, idx, axis=1)
        votes = np.zeros((len(rows), len(classes)))
        np.add.at(votes, (np.repeat(np.arange(len(rows)), k), y[idx].ravel()), np.exp(top / temperature).ravel())
        correct += int((votes.argmax(axis=1) == y[rows]).sum())
    return correct / len(X)


def linear_probe(
    X: np.ndarray, labels: Sequence[Any] | np.ndarray, *, n_splits: int = 5, C: float = 1.0, random_state: Any = 0
) -> dict[str, Any]:
    """Logistic regression on standardised vectors, stratified k-fold accuracy: {mean, sd, scores, n_splits}.

    Classes with a single image cannot be stratified and are left out (warned); the number
    of folds is capped at the smallest class size.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = _matrix(X, 4, "linear_probe")
    labels = _labels(labels, len(X), "linear_probe")
    classes, counts = np.unique(labels, return_counts=True)
    small = classes[counts < 2]
    if len(small):
        warnings.warn(
            f"linear probe: classes {small.tolist()[:5]} have one image and are left out",
            DiagnosticsWarning,
            stacklevel=2,
        )
        keep = ~np.isin(labels, small)
        X, labels = X[keep], labels[keep]
        labels = _labels(labels, len(X), "linear_probe")
        counts = counts[counts >= 2]
    folds = int(min(n_splits, counts.min()))
    if folds < 2:
        raise InvalidInputError(f"linear_probe: n_splits={n_splits} should be >= 2")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=check_random_state(random_state).randint(2**31 - 1))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence notices on near-separable folds
        scores = cross_val_score(model, X, labels, cv=cv, n_jobs=1)
    return {
        "mean": float(scores.mean()),
        "sd": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
        "scores": [float(s) for s in scores],
        "n_splits": folds,
    }


# ---------------------------------------------------------------------------------------
# Comparing encoders


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n images: ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F), columns centred."""
    X, Y = _matrix(X, 2, "linear_cka"), _matrix(Y, 2, "linear_cka")
    if len(X) != len(Y):
        raise InvalidInputError(f"linear_cka: X has {len(X)} rows but Y has {len(Y)}; align them by image first")
    X, Y = X - X.mean(axis=0), Y - Y.mean(axis=0)
    if len(X) < max(X.shape[1], Y.shape[1]):
        # Same value through n x n Gram matrices, cheaper when there are fewer images than dimensions.
        K, L = X @ X.T, Y @ Y.T
        num, den = (K * L).sum(), np.linalg.norm(K) * np.linalg.norm(L)
    else:
        num = np.linalg.norm(Y.T @ X) ** 2
        den = np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)
    if den == 0:
        raise InvalidInputError("linear_cka: one representation is constant across images")
    return float(num / den)


def mutual_knn(X: np.ndarray, Y: np.ndarray, k: int = 10) -> float:
    """Mean over images of |kNN_X(i) ∩ kNN_Y(i)| / k (cosine neighbours, self excluded)."""
    if len(X) != len(Y):
        raise InvalidInputError(f"mutual_knn: X has {len(X)} rows but Y has {len(Y)}; align them by image first")
    k = min(k, len(X) - 1)
    _, a = knn_distances(X, k)
    _, b = knn_distances(Y, k)
    return float(np.mean([len(np.intersect1d(a[i], b[i], assume_unique=True)) / k for i in range(len(a))]))


def aligned_embeddings(store: Store, dataset: str, keys: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """(hashes, key → vectors) restricted to images embedded under every key, rows in one order."""
    loaded = {key: store.load_embeddings(dataset, key) for key in keys}
    common = None
    for images, _ in loaded.values():
        hashes = set(images["content_hash"])
        common = hashes if common is None else common & hashes
    order = sorted(common or ())
    out = {}
    for key, (images, vectors) in loaded.items():
        position = pd.Index(images["content_hash"]).get_indexer(order)
        out[key] = vectors[position]
    return order, out


def compare_encoders(
    store: Store,
    dataset: str,
    keys: Sequence[str] | None = None,
    *,
    k: int = 10,
    max_points: int = 10_000,
    random_state: Any = 0,
) -> pd.DataFrame:
    """One row per pair of encoders embedded for ``dataset``: a, b, n_images, cka, mutual_knn.

    Rows are aligned by image hash (only images embedded under both count); above
    ``max_points`` common images a seeded sample is used.
    """
    keys = list(keys) if keys is not None else store.embedded_keys(dataset)
    columns = ["a", "b", "n_images", "cka", "mutual_knn"]
    if len(keys) < 2:
        return pd.DataFrame(columns=columns)
    hashes, vectors = aligned_embeddings(store, dataset, keys)
    if len(hashes) < 3:
        raise InvalidInputError(f"only {len(hashes)} images of {dataset!r} are embedded under all of {keys}")
    nonzero = np.all([np.linalg.norm(v, axis=1) > 0 for v in vectors.values()], axis=0)
    if not nonzero.all():
        warnings.warn(
            f"{int((~nonzero).sum())} image(s) with a zero vector under some encoder are left out of the "
            "comparison (no direction for cosine neighbours)",
            DiagnosticsWarning,
            stacklevel=2,
        )
    rows = np.flatnonzero(nonzero)
    if len(rows) > max_points:
        rows = np.sort(check_random_state(random_state).choice(rows, max_points, replace=False))
    out = []
    for a, b in combinations(keys, 2):
        Xa, Xb = vectors[a][rows], vectors[b][rows]
        out.append(
            {"a": a, "b": b, "n_images": len(rows), "cka": linear_cka(Xa, Xb), "mutual_knn": mutual_knn(Xa, Xb, k)}
        )
    return pd.DataFrame(out, columns=columns)


# ---------------------------------------------------------------------------------------
# Everything at once


def diagnose(
    X: np.ndarray,
    labels: Sequence[Any] | np.ndarray | None = None,
    *,
    k_lid: int = 20,
    k_hub: int = 10,
    k_knn: int = 20,
    temperature: float = 0.07,
    n_splits: int = 5,
    include_spectrum: bool = False,
    random_state: Any = 0,
) -> dict[str, Any]:
    """Every diagnostic of one representation as a JSON-safe dict (label-based ones when
    ``labels`` has two or more classes). ``rankme_ratio`` is ``rankme / rankme_isotropic``, both
    on the centred matrix whose normalised singular values are ``spectrum``."""
    X = _matrix(X, 3, "diagnose")
    started = time.perf_counter()
    # All-zero vectors have no direction: they stay in RankMe and the spectrum but leave the
    # cosine metrics (and the probe, for one population throughout), with a warning.
    zero = np.linalg.norm(X, axis=1) == 0
    if zero.any():
        warnings.warn(
            f"{int(zero.sum())} zero vector(s) (rows {np.flatnonzero(zero)[:5].tolist()}) are left out of "
            "the cosine metrics, kNN accuracy and linear probe",
            DiagnosticsWarning,
            stacklevel=2,
        )
    Xg = _matrix(X[~zero], 3, "diagnose (non-zero vectors)")
    out: dict[str, Any] = {
        "n_images": int(X.shape[0]),
        "dim": int(X.shape[1]),
        "n_zero_vectors": int(zero.sum()),
    }
    # RankMe and the spectrum from the same singular values of the same centred matrix.
    sv = singular_values(X, center=True)
    out["rankme"] = rankme_from_singular_values(sv)
    out["rankme_isotropic"] = rankme_isotropic(*X.shape, center=True, random_state=random_state)
    out["rankme_ratio"] = out["rankme"] / out["rankme_isotropic"]
    out["uniformity"] = uniformity(Xg, random_state=random_state)
    out["mean_lid"] = mean_lid(Xg, k_lid)
    out["hubness"] = hubness(Xg, k_hub)
    if include_spectrum:
        out["spectrum"] = [float(v) for v in sv / sv.sum()]
    if labels is not None and len(np.unique(np.asarray(labels)[~zero])) >= 2:
        labels = np.asarray(labels)[~zero]
        out["knn_accuracy"] = knn_accuracy(Xg, labels, k=k_knn, temperature=temperature)
        probe = linear_probe(Xg, labels, n_splits=n_splits, random_state=random_state)
        out["linear_probe_mean"], out["linear_probe_sd"], out["linear_probe_folds"] = (
            probe["mean"],
            probe["sd"],
            probe["n_splits"],
        )
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def dataset_diagnostics(store: Store, dataset: str, keys: Sequence[str] | None = None, **options: Any) -> pd.DataFrame:
    """``diagnose`` for every encoder embedded for ``dataset`` (folder labels when there are two or more)."""
    from core.cluster import folder_truth

    rows = []
    for key in keys if keys is not None else store.embedded_keys(dataset):
        images, vectors = store.load_embeddings(dataset, key)
        rows.append({"encoder": key, **diagnose(vectors, folder_truth(images), **options)})
    return pd.DataFrame(rows)
