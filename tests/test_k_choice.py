"""Automatic k (core.cluster.kchoice): the rule on blobs with a known number of clusters, the curve a
stored run keeps (silhouette and eigengap) and the refit with a k picked from it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_score

from core import cluster
from core.cluster import AgglomerativeClusterer, KMeansClusterer
from core.images import ImageRecord
from core.store import Store


def gaussian_blobs(k: int, seed: int, n: int = 240, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``k`` isotropic Gaussian blobs (scikit-learn's generator: the truth is independent of RepLens)."""
    X, y = make_blobs(n_samples=n, centers=k, n_features=dim, cluster_std=1.0, center_box=(-10, 10), random_state=seed)
    return X.astype(np.float32), y


@pytest.mark.parametrize("k,seed", [(3, 0), (7, 1), (12, 2)])
def test_silhouette_finds_the_number_of_gaussian_blobs_with_the_default_k_range(k: int, seed: int) -> None:
    X, y = gaussian_blobs(k, seed)
    est = KMeansClusterer(random_state=0).fit(X)  # defaults: PCA to 50, k in 2..30
    assert est.n_clusters_ == k
    assert adjusted_rand_score(y, est.labels_) == pytest.approx(1.0)
    assert sorted(est.k_scores_) == list(range(2, 31))
    # The rule is the maximum of the curve: no k scores higher than the chosen one.
    assert max(est.k_scores_.values()) == est.k_scores_[k]
    assert est.extra_["k_chosen"] == k


def test_the_silhouette_curve_is_each_ks_kmeans_silhouette_in_the_clustered_space() -> None:
    X, _ = gaussian_blobs(5, 3, n=150, dim=80)
    est = KMeansClusterer(k_max=9, random_state=4).fit(X)
    # Independently: normalise, PCA to 50 (exact), k-means with the seed fit() derives after PCA's.
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    rng = np.random.RandomState(4)
    pca_seed = rng.randint(np.iinfo(np.int32).max)
    Z = PCA(50, svd_solver="covariance_eigh", random_state=pca_seed).fit_transform(Xn)
    seed = rng.randint(np.iinfo(np.int32).max)
    for k in (2, 5, 9):
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(Z)
        assert est.k_scores_[k] == pytest.approx(silhouette_score(Z, labels), abs=1e-4)
    curve = cluster.k_curve(est.extra_, est.get_params())
    assert curve is not None and curve.selection == "silhouette"
    assert curve.ks == list(range(2, 10)) and curve.chosen == 5 == est.n_clusters_
    assert curve.scores == pytest.approx([est.k_scores_[k] for k in curve.ks], abs=1e-6)
    assert not curve.at_largest_k


def test_eigengap_curve_is_the_gaps_of_the_stored_spectrum() -> None:
    X, _ = gaussian_blobs(4, 5, n=120, dim=20)
    est = AgglomerativeClusterer(k_selection="eigengap", k_min=2, k_max=8, reduce=None).fit(X)
    values = np.asarray(est.extra_["eigenvalues"])
    assert len(values) == 9  # λ_1 … λ_{k_max+1}
    curve = cluster.k_curve(est.extra_, est.get_params())
    assert curve is not None and curve.selection == "eigengap" and curve.ks == list(range(2, 9))
    np.testing.assert_allclose(curve.scores, [values[k] - values[k - 1] for k in range(2, 9)])
    assert curve.chosen == est.n_clusters_ == 4 == curve.ks[int(np.argmax(curve.scores))]


def test_a_choice_at_the_largest_k_tried_is_flagged() -> None:
    metrics = {"k_selection": "silhouette", "k_scores": {"2": 0.1, "3": 0.2, "4": 0.3}, "k_chosen": 4, "n_clusters": 4}
    assert cluster.k_curve(metrics, {"k_max": 4}).at_largest_k
    # Capped by the number of images rather than k_max: raising k_max would not help.
    assert not cluster.k_curve(metrics, {"k_max": 30}).at_largest_k


def test_no_curve_for_a_given_k_or_an_old_run_without_k_chosen() -> None:
    assert cluster.k_curve({"k_selection": "given", "n_clusters": 3}, {"n_clusters": 3}) is None
    assert cluster.k_curve({"n_clusters": 3}, {}) is None  # a merge or split
    old = cluster.k_curve({"k_selection": "silhouette", "k_scores": {"3": 0.5, "2": 0.4}, "n_clusters": 3}, {})
    assert old is not None and old.ks == [2, 3] and old.scores == [0.4, 0.5] and old.chosen == 3


def test_fixed_k_params_drop_only_what_chooses_k() -> None:
    params = KMeansClusterer(k_max=12, reduce="pca", random_state=7).get_params()
    fixed = cluster.fixed_k_params(params, 6)
    assert fixed == {k: v for k, v in params.items() if k not in ("k_selection", "k_min", "k_max")} | {"n_clusters": 6}
    assert params["n_clusters"] is None  # the input is not changed


def add_dataset(store: Store, X: np.ndarray, folders: list[str]) -> str:
    key = "enc@v/l/p"
    records = [
        ImageRecord(f"{i:032x}", f"{f}/img_{i:04d}.png", (f,), 8, 8, 100 + i, "PNG", 0.0, None)
        for i, f in enumerate(folders)
    ]
    store.ingest("d", "/src", records, [])
    store.register_encoder(key, "enc", "v", "l", "p", X.shape[1], {"id": "enc"})
    store.write_embeddings(key, [r.content_hash for r in records], X)
    return key


def test_a_stored_run_keeps_its_curve_and_a_refit_at_a_picked_k_has_exactly_that_k(store: Store) -> None:
    X, y = gaussian_blobs(4, 6, n=100, dim=24)
    key = add_dataset(store, X, [f"f{c}" for c in y])
    run = cluster.run_clustering(store, "d", key, "kmeans", {"k_max": 10, "random_state": 1})
    again = cluster.load_run(store, run.run_id)
    curve = cluster.k_curve(again.metrics, again.params)
    assert curve is not None and curve.chosen == run.n_clusters == 4 and curve.ks == list(range(2, 11))
    assert again.metrics["k_chosen"] == 4

    picked = 7
    refit = cluster.run_clustering(store, "d", key, "kmeans", cluster.fixed_k_params(again.params, picked))
    assert refit.n_clusters == picked and len(np.unique(refit.labels)) == picked
    assert refit.params["n_clusters"] == picked and refit.metrics["k_selection"] == "given"
    assert cluster.k_curve(refit.metrics, refit.params) is None
    # The refit is the sweep's own k-means at k=7: its silhouette in the clustered space is the stored score.
    data = cluster.run_data(store, refit)  # the vectors in the order the run was fitted on
    est = cluster.make_clusterer("kmeans", refit.params).fit(data.vectors)
    assert adjusted_rand_score(est.labels_, data.labels) == 1.0
    stored_score = curve.scores[curve.ks.index(picked)]
    assert silhouette_score(est.embedding_, est.labels_) == pytest.approx(stored_score, abs=1e-5)
    # A "Fixed k" run with the same settings is the same run.
    same = cluster.run_clustering(store, "d", key, "kmeans", {"n_clusters": picked, "random_state": 1})
    assert same.reused and same.run_id == refit.run_id
