"""Tests for core.cluster: clusterers, automatic k, metrics (vs independent computations),
stored runs, the cluster browser's helpers and merge/split edits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.sparse import csgraph
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from core import cluster
from core.cluster import (
    NOISE,
    AgglomerativeClusterer,
    ClusteringWarning,
    ClusterRunNotFoundError,
    HDBSCANClusterer,
    KMeansClusterer,
    LeidenClusterer,
    make_clusterer,
)
from core.errors import InvalidInputError
from core.images import ImageRecord
from core.store import Store


def blobs(
    k: int = 4, per: int = 30, dim: int = 16, spread: float = 0.08, seed: int = 0, sizes: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated directions on the sphere: k random unit centres plus small noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = sizes or [per] * k
    X = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    y = np.repeat(np.arange(k), sizes)
    return X.astype(np.float32), y


def add_dataset(store: Store, X: np.ndarray, folders: list[str], dataset: str = "d", key: str = "enc@v/l/p") -> str:
    records = [
        ImageRecord(
            content_hash=f"{i:032x}",
            rel_path=f"{f}/img_{i:04d}.png",
            labels=(f,),
            width=8,
            height=8,
            n_bytes=100 + i,
            format="PNG",
            mtime=0.0,
            caption=None,
        )
        for i, f in enumerate(folders)
    ]
    store.ingest(dataset, "/src", records, [])
    store.register_encoder(key, key.split("@")[0], "v", "l", "p", X.shape[1], {"id": key.split("@")[0]})
    store.write_embeddings(key, [r.content_hash for r in records], X)
    return key


def ingest_rows(data: cluster.RunData) -> np.ndarray:
    """Row of ``add_dataset``'s input behind each row of a run's data (the store orders by path)."""
    return np.array([int(h, 16) for h in data.images["content_hash"]])


# --------------------------------------------------------------------------- metrics


def brute_force_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Best accuracy over every injective map from clusters to classes (noise never right)."""
    clusters = sorted(set(pred.tolist()) - {NOISE})
    classes = sorted(set(truth.tolist()))
    best = 0
    # Pad with None so clusters may stay unmatched when there are more clusters than classes.
    targets = classes + [None] * max(0, len(clusters) - len(classes))
    for perm in itertools.permutations(targets, len(clusters)):
        mapping = dict(zip(clusters, perm))
        best = max(best, sum(1 for t, p in zip(truth, pred) if p != NOISE and mapping[p] == t))
    return best / len(truth)


@pytest.mark.parametrize("seed", range(6))
def test_hungarian_accuracy_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, 20)
    pred = rng.integers(-1, 3 + seed % 3, 20)  # noise, and sometimes more clusters than classes
    assert cluster.hungarian_accuracy(truth, pred) == pytest.approx(brute_force_accuracy(truth, pred))


def test_hungarian_accuracy_hand_case() -> None:
    truth = np.array(["a", "a", "a", "b", "b", "c"])
    pred = np.array([1, 1, 0, 0, 0, 2])  # best map: 1→a, 0→b, 2→c → 5/6
    assert cluster.hungarian_accuracy(truth, pred) == pytest.approx(5 / 6)
    assert cluster.hungarian_accuracy(truth, np.full(6, NOISE)) == 0.0


def test_cluster_metrics_agree_with_sklearn() -> None:
    X, y = blobs(3, 20)
    rng = np.random.default_rng(1)
    labels = y.copy()
    labels[:3] = 2  # a few mistakes
    labels[3 + rng.choice(len(y) - 3, 8, replace=False)] = NOISE
    m = cluster.cluster_metrics(X, labels, y)
    keep = labels != NOISE
    assert m["silhouette"] == pytest.approx(silhouette_score(X[keep], labels[keep], metric="cosine"), abs=1e-6)
    assert m["ari"] == pytest.approx(adjusted_rand_score(y, labels))
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y, labels))
    assert m["hungarian_accuracy"] == pytest.approx(brute_force_accuracy(y, labels))
    assert m["noise_fraction"] == pytest.approx(8 / 60)
    assert m["n_clusters"] == 3 and m["n_classes"] == 3
    assert sum(m["sizes"].values()) == 60 and m["sizes"]["-1"] == 8
    assert cluster.cluster_metrics(X, np.zeros(60, int))["silhouette"] is None


def test_relabel_by_size_orders_clusters_and_keeps_noise() -> None:
    out = cluster.relabel_by_size(np.array([5, 5, 9, 9, 9, -1, 2]))
    assert out.tolist() == [1, 1, 0, 0, 0, -1, 2]


# --------------------------------------------------------------------------- clusterers


@pytest.mark.parametrize(
    "method,params",
    [
        ("kmeans", {}),
        ("kmeans", {"k_selection": "eigengap"}),
        ("kmeans", {"n_clusters": 4, "reduce": None}),
        ("agglomerative", {}),
        ("agglomerative", {"k_selection": "eigengap", "reduce": None}),
        ("leiden", {}),
        ("hdbscan", {"reduce": None}),
    ],
)
def test_every_method_recovers_separated_blobs(method: str, params: dict) -> None:
    X, y = blobs(4, 30, sizes=[40, 30, 25, 20])
    est = make_clusterer(method, params)
    assert est.get_params() == {**type(est)().get_params(), **params}  # __init__ only stores
    assert est.fit(X) is est
    assert est.n_clusters_ == 4
    assert adjusted_rand_score(y, est.labels_) == pytest.approx(1.0)
    # Renumbered by size: cluster 0 is the largest.
    assert np.bincount(est.labels_[est.labels_ >= 0]).tolist() == [40, 30, 25, 20]
    assert not hasattr(type(est)(), "labels_")


def test_silhouette_sweep_scores_match_sklearn_on_each_k() -> None:
    from sklearn.cluster import KMeans

    X, _ = blobs(5, 20, dim=16)
    est = KMeansClusterer(k_min=2, k_max=8, reduce=None, random_state=3).fit(X)
    assert est.n_clusters_ == 5
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    seed = np.random.RandomState(3).randint(np.iinfo(np.int32).max)  # the seed fit() derives first
    for k in (2, 5, 8):
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(Xn)
        assert est.k_scores_[k] == pytest.approx(silhouette_score(Xn, labels, metric="cosine"), abs=1e-6)
    assert max(est.k_scores_, key=est.k_scores_.get) == 5


def test_eigengap_matches_a_dense_laplacian_computed_by_hand() -> None:
    X, _ = blobs(3, 25, dim=10, spread=0.15)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    k, values = cluster.eigengap_k(Xn, 2, 8, n_neighbors=10)
    W = cluster.knn_graph(Xn, 10).toarray()
    assert np.allclose(W, W.T)
    d = W.sum(axis=1)
    L = np.eye(len(W)) - W / np.sqrt(np.outer(d, d))
    expected = np.linalg.eigvalsh(L)[:9]
    np.testing.assert_allclose(values, np.clip(expected, 0, None), atol=1e-6)  # float32 input
    np.testing.assert_allclose(csgraph.laplacian(W, normed=True), L, atol=1e-6)
    gaps = np.diff(expected)
    assert k == 2 + int(np.argmax(gaps[1:8])) == 3


def test_hdbscan_after_umap_finds_clusters_and_noise() -> None:
    X, y = blobs(3, 40, dim=24)
    rng = np.random.default_rng(9)
    outliers = rng.normal(size=(6, 24)).astype(np.float32) * 3
    est = HDBSCANClusterer(min_cluster_size=10, random_state=0).fit(np.concatenate([X, outliers]))
    assert est.embedding_.shape == (126, 10)
    assert est.n_clusters_ == 3
    assert adjusted_rand_score(y, est.labels_[:120]) > 0.95
    # (One UMAP fit only: numba compiles UMAP on first use, which dominates this file's time.)


def test_hdbscan_warns_with_its_class_when_everything_is_noise() -> None:
    X = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    with pytest.warns(ClusteringWarning, match="noise"):
        est = HDBSCANClusterer(min_cluster_size=25, reduce=None).fit(X)
    assert est.n_clusters_ == 0 and est.noise_fraction_ == 1.0


def test_leiden_is_seeded_and_resolution_controls_granularity() -> None:
    X, _ = blobs(4, 30, spread=0.3, dim=12)
    a = LeidenClusterer(random_state=5).fit(X).labels_
    b = LeidenClusterer(random_state=5).fit(X).labels_
    np.testing.assert_array_equal(a, b)
    with pytest.warns(ClusteringWarning, match="one community"):
        coarse = LeidenClusterer(resolution=0.05).fit(X).n_clusters_
    fine = LeidenClusterer(resolution=3.0).fit(X).n_clusters_
    assert coarse < fine


def test_agglomerative_is_ward_on_the_clustered_space() -> None:
    from sklearn.cluster import AgglomerativeClustering

    X, _ = blobs(3, 15, spread=0.4, dim=6)
    est = AgglomerativeClusterer(n_clusters=4, reduce=None).fit(X)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    ref = AgglomerativeClustering(n_clusters=4, linkage="ward").fit_predict(Xn)
    assert adjusted_rand_score(ref, est.labels_) == pytest.approx(1.0)


def test_stability_is_the_pairwise_ari_of_seeded_runs() -> None:
    X, _ = blobs(6, 15, spread=0.5, dim=8)
    out = cluster.stability(X, "kmeans", {"n_clusters": 6, "n_init": 1, "reduce": None}, seeds=(0, 1, 2))
    runs = {s: KMeansClusterer(n_clusters=6, n_init=1, reduce=None, random_state=s).fit(X).labels_ for s in (0, 1, 2)}
    expected = [adjusted_rand_score(runs[a], runs[b]) for a, b in [(0, 1), (0, 2), (1, 2)]]
    assert [p["ari"] for p in out["pairs"]] == pytest.approx(expected)
    assert out["mean_ari"] == pytest.approx(np.mean(expected))


def test_messages_show_offending_values() -> None:
    X, _ = blobs(2, 2)
    with pytest.raises(InvalidInputError, match=r"n_samples=4 should be >= n_clusters=5"):
        KMeansClusterer(n_clusters=5).fit(X)
    with pytest.raises(InvalidInputError, match=r"min_cluster_size=9 should be <= n_samples=4"):
        HDBSCANClusterer(min_cluster_size=9, reduce=None).fit(X)
    with pytest.raises(InvalidInputError, match="resolution=-1"):
        LeidenClusterer(resolution=-1).fit(X)
    with pytest.raises(InvalidInputError, match="Unknown clustering method 'dbscan'"):
        make_clusterer("dbscan")
    with pytest.raises(InvalidInputError, match="Parameters it takes"):
        make_clusterer("kmeans", {"k": 3})


def test_zero_vectors_are_noise_with_a_warning() -> None:
    X, y = blobs(2, 10)
    with pytest.warns(ClusteringWarning, match=r"1 zero vector\(s\) \(rows \[20\]\)"):
        est = KMeansClusterer(n_clusters=2, reduce=None).fit(np.vstack([X, np.zeros((1, X.shape[1]))]))
    assert est.labels_[20] == NOISE and est.valid_mask_.sum() == 20
    assert adjusted_rand_score(y, est.labels_[:20]) == pytest.approx(1.0)
    assert cluster.typical_images(np.vstack([X, np.zeros((1, X.shape[1]))]), est.labels_, 0, n=3).shape == (3,)
    with pytest.raises(InvalidInputError, match="NaN"):
        KMeansClusterer(n_clusters=2).fit(np.full((4, 3), np.nan))


def test_a_plugin_registers_like_the_builtins() -> None:
    class FirstHalf(cluster.Clusterer):
        method = "test-halves"

        def __init__(self, random_state: int = 0) -> None:
            self.random_state = random_state

        def fit(self, X):
            self.labels_ = (np.arange(len(X)) >= len(X) // 2).astype(int)
            self.n_clusters_ = 2
            return self

    try:
        cluster.register_clusterer(FirstHalf)
        assert "test-halves" in cluster.clustering_methods()
        assert make_clusterer("test-halves").fit_predict(np.ones((4, 2))).tolist() == [0, 0, 1, 1]
        with pytest.warns(ClusteringWarning, match="registered twice"):
            cluster.register_clusterer(FirstHalf)
    finally:
        cluster._CLUSTERERS.pop("test-halves", None)


# --------------------------------------------------------------------------- stored runs and browser


@pytest.fixture
def dataset(store: Store) -> tuple[Store, str, np.ndarray, np.ndarray]:
    X, y = blobs(3, 20, dim=12, sizes=[25, 20, 15])
    folders = [["cats", "dogs", "cars"][c] for c in y]
    key = add_dataset(store, X, folders)
    return store, key, X, y


def test_run_is_stored_and_reopens_identically(dataset) -> None:
    store, key, X, y = dataset
    run = cluster.run_clustering(store, "d", key, "kmeans", {"reduce": None, "k_max": 6}, stability_seeds=(0, 1))
    assert run.n_clusters == 3 and run.noise_fraction == 0.0
    m = run.metrics
    assert m["ari"] == pytest.approx(1.0) and m["hungarian_accuracy"] == pytest.approx(1.0) and m["n_classes"] == 3
    assert m["k_selection"] == "silhouette" and "3" in m["k_scores"]
    assert m["stability"]["mean_ari"] == pytest.approx(1.0)
    again = cluster.load_run(store, run.run_id)
    assert again.params == run.params and again.metrics == run.metrics and again.method == "kmeans"
    assert dict(zip(again.hashes, again.labels.tolist())) == dict(zip(run.hashes, run.labels.tolist()))
    assert again.created_at is not None
    listed = store.list_cluster_runs("d")
    assert listed["run_id"].tolist() == [run.run_id]
    data = cluster.run_data(store, again)
    rows = ingest_rows(data)
    np.testing.assert_array_equal(data.vectors, X[rows])
    assert adjusted_rand_score(y[rows], data.labels) == pytest.approx(1.0)
    with pytest.raises(ClusterRunNotFoundError, match="No cluster run 'nope'"):
        cluster.load_run(store, "nope")


def test_browser_helpers_against_direct_computation(dataset) -> None:
    store, key, X, y = dataset
    labels = y.copy()
    labels[-2:] = NOISE
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    cents = np.stack([Xn[labels == c].mean(0) for c in range(3)])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    members = np.flatnonzero(labels == 1)
    sims = Xn[members] @ cents[1]
    assert cluster.typical_images(X, labels, 1, n=5).tolist() == members[np.argsort(-sims)[:5]].tolist()
    all_sims = Xn @ cents.T
    srt = np.sort(all_sims, axis=1)
    margins = srt[:, -1] - srt[:, -2]
    idx, got = cluster.borderline_images(X, labels, n=4)
    assert idx.tolist() == np.argsort(margins)[:4].tolist()
    np.testing.assert_allclose(got, np.sort(margins)[:4], atol=1e-6)
    noise = np.flatnonzero(labels == NOISE)
    assert sorted(cluster.outlier_images(X, labels).tolist()) == sorted(noise.tolist())
    worst = members[np.argsort(sims)[:3]]
    assert cluster.outlier_images(X, labels, cluster=1, n=3).tolist() == worst.tolist()
    table = cluster.cluster_table(X, labels)
    assert table["size"].tolist() == [25, 20, 13, 2] and table["cluster"].tolist() == [0, 1, 2, -1]
    with pytest.raises(InvalidInputError, match="cluster 7 has no members"):
        cluster.typical_images(X, labels, 7)


def test_the_same_clustering_twice_reuses_the_stored_run(dataset) -> None:
    """Issue 10 item 10: running the same clustering twice stored two runs."""
    store, key, X, y = dataset
    first = cluster.run_clustering(store, "d", key, "kmeans", {"n_clusters": 3, "reduce": None})
    assert not first.reused
    # The same call, and the same call spelling out defaults: one stored run, said to be reused.
    defaults = {k: v for k, v in make_clusterer("kmeans").get_params().items() if k not in ("n_clusters", "reduce")}
    for params in ({"n_clusters": 3, "reduce": None}, {"n_clusters": 3, "reduce": None, **defaults}):
        again = cluster.run_clustering(store, "d", key, "kmeans", params)
        assert again.reused and again.run_id == first.run_id
        assert dict(zip(again.hashes, again.labels.tolist())) == dict(zip(first.hashes, first.labels.tolist()))
        assert again.metrics == first.metrics
    assert store.list_cluster_runs("d")["run_id"].tolist() == [first.run_id]

    # Asking for stability the stored run lacks adds it to that run (no new run).
    with_stability = cluster.run_clustering(
        store, "d", key, "kmeans", {"n_clusters": 3, "reduce": None}, stability_seeds=(0, 1)
    )
    assert with_stability.reused and with_stability.run_id == first.run_id
    assert cluster.load_run(store, first.run_id).metrics["stability"]["seeds"] == [0, 1]

    # Anything different is a new run: another seed, another k, another method, reuse=False.
    others = [
        cluster.run_clustering(store, "d", key, "kmeans", {"n_clusters": 3, "reduce": None, "random_state": 5}),
        cluster.run_clustering(store, "d", key, "kmeans", {"n_clusters": 4, "reduce": None}),
        cluster.run_clustering(store, "d", key, "agglomerative", {"n_clusters": 3, "reduce": None}),
        cluster.run_clustering(store, "d", key, "kmeans", {"n_clusters": 3, "reduce": None}, reuse=False),
    ]
    assert not any(r.reused for r in others)
    assert len({first.run_id, *(r.run_id for r in others)}) == 5
    assert len(store.list_cluster_runs("d")) == 5


def test_a_changed_image_set_or_an_edit_is_not_reused(dataset) -> None:
    store, key, X, y = dataset
    images, vectors = store.load_embeddings("d", key)
    part = cluster.run_clustering(
        store, "d", key, "kmeans", {"n_clusters": 3, "reduce": None}, images=images.iloc[:40], vectors=vectors[:40]
    )
    whole = cluster.run_clustering(store, "d", key, "kmeans", {"n_clusters": 3, "reduce": None})
    assert not whole.reused and whole.run_id != part.run_id and len(whole.hashes) == len(X)
    # A merge has a parent: it is an edit, never returned for a fresh fit.
    merged = cluster.merge_clusters(store, whole.run_id, [0, 1])
    found = cluster.find_same_run(
        store,
        "d",
        key,
        "kmeans",
        make_clusterer("kmeans", {"n_clusters": 3, "reduce": None}).get_params(),
        images["content_hash"],
    )
    assert found is not None and found.run_id == whole.run_id != merged.run_id


def test_labels_persist_and_user_edits_win(dataset) -> None:
    store, key, _, _ = dataset
    run = cluster.run_clustering(store, "d", key, "kmeans", {"n_clusters": 3, "reduce": None})
    rows = [
        {"cluster": c, "label": f"auto{c}", "method": "text", "candidates": [{"word": f"auto{c}", "score": 1.0}]}
        for c in range(3)
    ]
    assert store.save_cluster_labels(run.run_id, rows) == 3
    cluster.rename_cluster(store, run.run_id, 1, "  my name ")
    assert store.save_cluster_labels(run.run_id, [{**r, "label": "new"} for r in rows]) == 2
    frame = store.load_cluster_labels(run.run_id).set_index("cluster")
    assert frame.loc[1, "label"] == "my name" and bool(frame.loc[1, "edited"]) and frame.loc[1, "method"] == "user"
    assert frame.loc[1, "candidates"] == [{"word": "auto1", "score": 1.0}]  # provenance kept
    assert frame.loc[0, "label"] == "new" and not frame.loc[0, "edited"]
    with pytest.raises(InvalidInputError, match="no cluster 9"):
        cluster.rename_cluster(store, run.run_id, 9, "x")
    with pytest.raises(InvalidInputError, match="empty"):
        store.set_cluster_label(run.run_id, 0, "  ")


def test_merge_and_split_make_child_runs_and_carry_labels(dataset) -> None:
    store, key, X, y = dataset
    run = cluster.run_clustering(store, "d", key, "kmeans", {"n_clusters": 3, "reduce": None})
    store.save_cluster_labels(
        run.run_id, [{"cluster": c, "label": f"c{c}", "method": "text", "candidates": []} for c in range(3)]
    )
    store.set_cluster_label(run.run_id, 0, "kept by user")
    merged = cluster.merge_clusters(store, run.run_id, [1, 2])
    assert merged.parent_run_id == run.run_id and merged.method == "merge" and merged.n_clusters == 2
    assert merged.params["clusters"] == [1, 2] and merged.params["base_method"] == "kmeans"
    data = cluster.run_data(store, cluster.load_run(store, merged.run_id))
    truth = y[ingest_rows(data)]
    assert set(data.labels[truth != 0].tolist()) == {1}
    carried = store.load_cluster_labels(merged.run_id).set_index("cluster")
    assert carried.loc[0, "label"] == "kept by user" and bool(carried.loc[0, "edited"])
    assert 1 not in carried.index  # merged cluster's membership changed: no stale label

    split = cluster.split_cluster(store, merged.run_id, 1, k=2)
    assert split.parent_run_id == merged.run_id and split.n_clusters == 3
    data = cluster.run_data(store, cluster.load_run(store, split.run_id))
    assert adjusted_rand_score(truth, data.labels) == pytest.approx(1.0)
    assert data.labels[truth == 0][0] == 0 and set(data.labels.tolist()) == {0, 1, 2}
    assert split.metrics["ari"] == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="two or more existing clusters"):
        cluster.merge_clusters(store, run.run_id, [1, 8])
    with pytest.raises(InvalidInputError, match="no sub-structure"):
        cluster.split_cluster(store, run.run_id, 2, method="hdbscan", min_cluster_size=14)


def test_save_cluster_run_is_one_transaction(store: Store) -> None:
    store.ingest("d", "/src", [], [])
    with pytest.raises(InvalidInputError, match="duplicate"):
        store.save_cluster_run("r1", "d", "k", "kmeans", {}, ["a", "a"], np.array([0, 1]), {}, 2, 0.0)
    with pytest.raises(Exception):  # noqa: B017 - any store error; what matters is what remains after it
        # The second run id collides inside the transaction: nothing of it may remain.
        store.save_cluster_run("r2", "d", "k", "kmeans", {}, ["a", "b"], np.array([0, 1]), {}, 2, 0.0)
        store.save_cluster_run("r2", "d", "k", "kmeans", {}, ["c"], np.array([0]), {}, 1, 0.0)
    meta, hashes, labels = store.load_cluster_run("r2")
    assert hashes == ["a", "b"] and labels.tolist() == [0, 1] and meta["n_clusters"] == 2
    assert store.load_cluster_run("missing") is None
    assert len(store.list_cluster_runs()) == 1


def test_tiny_sets_skip_umap_with_a_warning() -> None:
    X, _ = blobs(2, 5)
    with pytest.warns(ClusteringWarning, match="too few for UMAP"):
        est = HDBSCANClusterer(min_cluster_size=3).fit(X)
    assert est.n_clusters_ == 2 and est.embedding_.shape == (10, X.shape[1])


def test_pages_noise_constant_is_core_s() -> None:
    """pages/common keeps its own copy so every page need not import scikit-learn."""
    from core import palette as common  # the light copy pages use (via core.mapfigure) moved from pages/common

    assert common.NOISE == cluster.NOISE


def test_recorded_stability_is_stored_with_the_run(dataset) -> None:
    store, key, X, y = dataset
    run = cluster.run_clustering(store, "d", key, "kmeans", {"reduce": None, "n_clusters": 4, "n_init": 1})
    assert "stability" not in run.metrics
    data = cluster.run_data(store, run)
    got = cluster.record_stability(store, run, data.vectors, seeds=(0, 1, 2))
    # The same refits by hand: the run's own params with each seed, pairwise ARI.
    params = {k: v for k, v in run.params.items() if k != "random_state"}
    fits = {s: KMeansClusterer(**{**params, "random_state": s}).fit(data.vectors).labels_ for s in (0, 1, 2)}
    want = [adjusted_rand_score(fits[a], fits[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert [p["ari"] for p in got["pairs"]] == pytest.approx(want)
    assert got["mean_ari"] == pytest.approx(np.mean(want)) and got["min_ari"] == pytest.approx(min(want))
    again = cluster.load_run(store, run.run_id)
    assert again.metrics["stability"] == got
    assert {k: v for k, v in again.metrics.items() if k != "stability"} == {
        k: v for k, v in run.metrics.items() if k != "stability"
    }
    assert dict(zip(again.hashes, again.labels.tolist())) == dict(zip(run.hashes, run.labels.tolist()))
    merged = cluster.merge_clusters(store, run.run_id, [0, 1])
    with pytest.raises(InvalidInputError, match="no seed"):
        cluster.record_stability(store, merged, data.vectors)


@pytest.mark.parametrize("cls", [HDBSCANClusterer, KMeansClusterer, AgglomerativeClusterer, LeidenClusterer])
def test_clusterers_are_sklearn_estimators(cls: type) -> None:
    from sklearn.base import BaseEstimator, clone, is_clusterer

    est = cls(random_state=7)
    assert isinstance(est, BaseEstimator) and isinstance(est, cluster.Clusterer) and is_clusterer(est)
    params = est.get_params()
    assert params["random_state"] == 7 and set(params) == set(cls().get_params())
    copy = clone(est)
    assert type(copy) is cls and copy is not est and copy.get_params() == params
    assert est.set_params(random_state=3) is est and est.random_state == 3 and copy.random_state == 7
    assert cls(**params).get_params() == params  # round trip through __init__
    with pytest.raises(InvalidInputError, match=r"no parameter 'k'; it takes"):
        est.set_params(k=3)


def test_clone_of_a_fitted_clusterer_is_unfitted_and_refits_the_same() -> None:
    from sklearn.base import clone

    X, _ = blobs(3, 10, dim=6)
    est = KMeansClusterer(n_clusters=3, reduce=None, n_init=1, random_state=2).fit(X)
    copy = clone(est)
    assert not hasattr(copy, "labels_")
    np.testing.assert_array_equal(copy.fit_predict(X), est.labels_)


def test_clustering_methods_read_the_registry() -> None:
    assert cluster.clustering_methods()[:4] == ["hdbscan", "kmeans", "agglomerative", "leiden"]
    assert cluster.clustering_methods() == cluster.CLUSTERERS.names()
    with pytest.raises(InvalidInputError, match="non-empty `method`"):
        cluster.register_clusterer(type("Nameless", (cluster.Clusterer,), {}))
