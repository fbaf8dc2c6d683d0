"""How good is this representation? Label-free and label-based diagnostics, and encoder comparison.

Label-free (any folder):
    ``rankme`` effective rank (Garrido et al., ICML 2023), ``eigenspectrum`` (for a plot of
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
and LID are computed (RankMe, the spectrum and CKA take the vectors as stored).
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


def eigenspectrum(X: np.ndarray, *, center: bool = True) -> np.ndarray:
    """Singular values of the (centred) embedding matrix, descending, normalised to sum 1.

    A spectrum that drops to ~0 after a few components is dimensional collapse.
    """
    X = _matrix(X, 2, "eigenspectrum")
    if center:
        X = X - X.mean(axis=0)
    s = np.linalg.svd(X, compute_uv=False)
    if s.sum() == 0:
        raise InvalidInputError("eigenspectrum: all vectors are identical; there is no spread to measure")
    return s / s.sum()


def rankme(X: np.ndarray, *, eps: float = 1e-7) -> float:
    """RankMe: exp of the entropy of p_k = σ_k / ‖σ‖₁ + ε over the singular values σ of X (not centred)."""
    X = _matrix(X, 1, "rankme")
    s = np.linalg.svd(X, compute_uv=False)
    if s.sum() == 0:
        raise InvalidInputError("rankme: the embedding matrix is all zeros")
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


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
    """(distances, indices) of each point's k nearest other points (Euclidean; on unit vectors if ``normalize``)."""
    from sklearn.neighbors import NearestNeighbors

    X = _matrix(X, 2, "knn")
    if normalize:
        X = _unit(X, "knn")
    k = _check_k(k, len(X), "knn")
    # kneighbors() without X leaves each point out of its own neighbour list.
    dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors()
    return dist, idx


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


def local_intrinsic_dimension(X: np.ndarray, k: int = 20) -> np.ndarray:
    """Per-point LID (MLE on the k nearest neighbours, cosine geometry)."""
    k = min(k, len(X) - 1)
    dist, _ = knn_distances(X, k)
    return lid_from_distances(dist)


def mean_lid(X: np.ndarray, k: int = 20) -> float:
    """Mean of the per-point LIDs (finite ones: exact duplicates are left out)."""
    lids = local_intrinsic_dimension(X, k)
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
    ``labels`` has two or more classes)."""
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
        "rankme": rankme(X),
        "uniformity": uniformity(Xg, random_state=random_state),
        "mean_lid": mean_lid(Xg, k_lid),
        "hubness": hubness(Xg, k_hub),
    }
    if include_spectrum:
        out["spectrum"] = [float(v) for v in eigenspectrum(X)]
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
