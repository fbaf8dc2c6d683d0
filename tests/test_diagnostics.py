"""Tests for core.diagnostics: every metric against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import skew

from core import diagnostics as dg
from core.errors import InvalidInputError
from core.images import ImageRecord
from core.store import Store


def sample(n: int = 60, d: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def neighbours_by_loop(X: np.ndarray, k: int) -> list[list[int]]:
    """k most cosine-similar other points, by a plain loop (ties: lower index first)."""
    U = unit(X)
    out = []
    for i in range(len(U)):
        sims = [(-(U[i] @ U[j]), j) for j in range(len(U)) if j != i]
        out.append([j for _, j in sorted(sims)[:k]])
    return out


# --------------------------------------------------------------------------- label-free


def rankme_by_hand(X: np.ndarray, center: bool) -> float:
    M = X - X.mean(axis=0) if center else X
    s = np.linalg.svd(M, compute_uv=False)
    p = s / s.sum() + 1e-7
    return math.exp(-sum(v * math.log(v) for v in p))


def test_rankme_is_exp_entropy_of_normalised_singular_values() -> None:
    # Issue 10: RankMe is computed on the centred matrix, like the spectrum (it used the raw one).
    X = sample(40, 10) + 3.0  # an offset: the raw matrix has one dominant direction, the mean
    assert dg.rankme(X) == pytest.approx(rankme_by_hand(X, center=True))
    assert dg.rankme(X, center=False) == pytest.approx(rankme_by_hand(X, center=False))
    assert dg.rankme(X) > dg.rankme(X, center=False) + 1
    # Rank-2 data has RankMe near 2 at most; an isotropic cloud is close to full rank.
    low = sample(200, 2) @ np.random.default_rng(1).normal(size=(2, 10))
    assert dg.rankme(low) <= 2.0 + 1e-3
    assert dg.rankme(sample(2000, 10)) > 9.5


def test_eigenspectrum_is_the_normalised_spectrum_of_the_centred_matrix() -> None:
    X = sample(50, 6) * np.array([5, 3, 1, 1, 0.1, 0.01])
    spec = dg.eigenspectrum(X)
    cov_eig = np.sort(np.linalg.eigvalsh(np.cov(X.T)))[::-1]  # singular values = sqrt((n-1) * eigenvalues)
    sv = np.sqrt(cov_eig * (len(X) - 1))
    np.testing.assert_allclose(spec, sv / sv.sum(), atol=1e-10)
    assert spec.sum() == pytest.approx(1.0) and np.all(np.diff(spec) <= 0)


def test_rankme_and_the_spectrum_read_the_same_centred_matrix() -> None:
    X = sample(50, 8) * np.array([5, 3, 2, 1, 1, 0.5, 0.1, 0.1]) + np.arange(8)
    out = dg.diagnose(X, include_spectrum=True)
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    np.testing.assert_allclose(out["spectrum"], s / s.sum(), atol=1e-12)
    p = np.asarray(out["spectrum"]) + 1e-7
    assert out["rankme"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))  # RankMe of the plotted values
    assert out["rankme"] == pytest.approx(dg.rankme(X))
    np.testing.assert_allclose(dg.eigenspectrum(X), out["spectrum"])


def gaussian_rankme(n: int, d: int, draws: int, center: bool = True) -> float:
    """Mean RankMe of seeded n x d standard-normal matrices, by numpy's SVD."""
    rng = np.random.default_rng(123)
    return float(np.mean([rankme_by_hand(rng.normal(size=(n, d)), center) for _ in range(draws)]))


def test_isotropic_singular_values_follow_a_gaussian_matrix() -> None:
    # Same distribution as numpy's SVD of a Gaussian matrix: compare the mean sorted spectra.
    n, d, draws = 40, 15, 300
    rng = np.random.default_rng(9)
    direct = np.mean([np.linalg.svd(rng.normal(size=(n, d)), compute_uv=False) for _ in range(draws)], axis=0)
    state = np.random.RandomState(1)
    for shape in ((n, d), (d, n)):  # wide and tall give the same singular values
        drawn = np.mean([dg.isotropic_singular_values(*shape, random_state=state) for _ in range(draws)], axis=0)
        assert drawn.shape == (d,) and np.all(np.diff(drawn) <= 0)
        np.testing.assert_allclose(drawn, direct, rtol=0.03)


@pytest.mark.parametrize("n,d", [(801, 1024), (60, 12), (12, 60)])
def test_rankme_isotropic_matches_gaussian_data_of_the_same_shape(n: int, d: int) -> None:
    reference = dg.rankme_isotropic(n, d)
    assert reference == dg.rankme_isotropic(n, d)  # seeded
    if (n, d) == (801, 1024):  # the example: isotropic vectors score ~695, not 1024
        assert reference == pytest.approx(gaussian_rankme(n, d, 2), abs=1.5)  # one draw varies by ~0.3
        assert 690 < reference < 700
    else:
        assert reference == pytest.approx(gaussian_rankme(n, d, 40), rel=0.01)
        assert dg.rankme_isotropic(n, d, center=False) == pytest.approx(gaussian_rankme(n, d, 40, False), rel=0.01)
    assert reference < min(n - 1, d)


def test_diagnose_reports_rankme_against_its_isotropic_reference() -> None:
    rng = np.random.default_rng(3)
    iso = rng.normal(size=(300, 64))
    out = dg.diagnose(iso)
    assert out["rankme_isotropic"] == pytest.approx(dg.rankme_isotropic(300, 64))
    assert out["rankme_ratio"] == pytest.approx(rankme_by_hand(iso, True) / out["rankme_isotropic"])
    assert 0.97 < out["rankme_ratio"] < 1.03  # isotropic data scores ~1, whatever n and d
    collapsed = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 64)) + 1e-3 * rng.normal(size=(300, 64))
    assert dg.diagnose(collapsed)["rankme_ratio"] < 0.2


def test_uniformity_matches_a_double_loop() -> None:
    X = sample(25, 5)
    U = unit(X)
    terms = [math.exp(-2 * float(np.sum((U[i] - U[j]) ** 2))) for i in range(len(U)) for j in range(i + 1, len(U))]
    assert dg.uniformity(X) == pytest.approx(math.log(sum(terms) / len(terms)))
    # Subsampling is seeded and uses max_points points.
    big = sample(300, 5)
    assert dg.uniformity(big, max_points=100) == dg.uniformity(big, max_points=100)
    rows = np.sort(np.random.RandomState(0).choice(300, 100, replace=False))
    assert dg.uniformity(big, max_points=100) == pytest.approx(dg.uniformity(big[rows], max_points=1000))
    # Collapsed vectors are maximally non-uniform: uniformity 0 (= log 1).
    assert dg.uniformity(np.ones((5, 3))) == pytest.approx(0.0)


def test_lid_closed_form_on_a_hand_case() -> None:
    # Distances 1, 2, 4 to the 3 nearest neighbours: LID = [ (log 4/1 + log 4/2) / 2 ]^-1 = 2 / log 8.
    got = dg.lid_from_distances(np.array([[1.0, 2.0, 4.0]]))
    assert got[0] == pytest.approx(2 / math.log(8))
    # Points on a line at 0, 1, 2, 3, 4: from the end point 0 the 4 neighbours are at 1..4.
    line = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    dist, _ = dg.knn_distances(line, 4, normalize=False)
    np.testing.assert_allclose(dist[0], [1, 2, 3, 4])
    expected = 1 / ((math.log(4 / 1) + math.log(4 / 2) + math.log(4 / 3)) / 3)
    assert dg.lid_from_distances(dist)[0] == pytest.approx(expected)


def test_mean_lid_matches_a_loop_and_tracks_dimension() -> None:
    X = sample(80, 6)
    U = unit(X)
    lids = []
    for i in range(len(U)):
        d = np.sort([np.linalg.norm(U[i] - U[j]) for j in range(len(U)) if j != i])[:20]
        lids.append(1 / np.mean(np.log(d[-1] / d[:-1])))
    assert dg.mean_lid(X, k=20) == pytest.approx(np.mean(lids))
    rng = np.random.default_rng(0)
    flat = np.c_[rng.uniform(size=(1500, 2)), np.ones((1500, 1)) * 5]  # a 2-d patch on the sphere
    assert 1.5 < dg.mean_lid(flat) < 2.6
    assert dg.mean_lid(sample(1500, 8)) > 4.5


def lid_by_loop(X: np.ndarray, k: int) -> float:
    """Mean Levina–Bickel LID over the distinct unit vectors, distances by a plain loop."""
    U = np.array(sorted({tuple(row) for row in unit(X).tolist()}))
    lids = []
    for i in range(len(U)):
        d = np.sort([math.dist(U[i], U[j]) for j in range(len(U)) if j != i])[:k]
        lids.append(1 / np.mean(np.log(d[-1] / d[:-1])))
    return float(np.mean(lids))


def test_mean_lid_counts_exact_duplicates_once() -> None:
    # Issue 10: 5% exact copies came back at distance ~3e-8 (not 0), were kept, and lowered the mean by ~7%.
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 24))
    source = np.r_[np.arange(300), rng.choice(300, 15, replace=False)][rng.permutation(315)]
    with_copies = X[source]  # 5% of the rows are exact copies of others, shuffled in
    expected = lid_by_loop(X, 20)
    assert dg.mean_lid(X) == pytest.approx(expected)
    assert dg.mean_lid(with_copies) == pytest.approx(expected)
    assert dg.mean_lid(np.vstack([X, 2.0 * X[:15]])) == pytest.approx(expected)  # same direction, same point
    # Per row: every row (copy or not) carries the LID its point has without the copies.
    np.testing.assert_allclose(dg.local_intrinsic_dimension(with_copies), dg.local_intrinsic_dimension(X)[source])
    # Fewer than 3 distinct points: no LID to estimate.
    assert math.isnan(dg.mean_lid(np.repeat(X[:2], 5, axis=0)))


def test_knn_distances_are_exact_for_copies_and_sorted() -> None:
    rng = np.random.default_rng(12)
    X = rng.normal(size=(200, 50))
    X = np.vstack([X, X[:10]])
    dist, idx = dg.knn_distances(X, 5)
    U = unit(X)
    np.testing.assert_array_equal(dist[:10, 0], 0.0)  # the copy: exactly 0, not ~1e-8 of rounding
    np.testing.assert_allclose(dist, np.linalg.norm(U[:, None, :] - U[idx], axis=2), rtol=1e-12, atol=0)
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_hubness_is_scipy_skew_of_k_occurrence_by_loop() -> None:
    X = sample(70, 20)
    lists = neighbours_by_loop(X, 10)
    counts = np.bincount(np.concatenate(lists), minlength=len(X))
    np.testing.assert_array_equal(dg.k_occurrence(X, 10), counts)
    assert dg.hubness(X, 10) == pytest.approx(skew(counts))


# --------------------------------------------------------------------------- with labels


def knn_accuracy_by_loop(X: np.ndarray, y: np.ndarray, k: int, T: float) -> float:
    U = unit(X)
    classes = sorted(set(y.tolist()))
    correct = 0
    for i, neigh in enumerate(neighbours_by_loop(X, k)):
        votes = dict.fromkeys(classes, 0.0)
        for j in neigh:
            votes[y[j]] += math.exp(float(U[i] @ U[j]) / T)
        best = max(classes, key=lambda c: (votes[c], -classes.index(c)))
        correct += best == y[i]
    return correct / len(X)


def test_knn_accuracy_matches_a_loop_implementation() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 90)
    X = rng.normal(size=(90, 8)) + 1.2 * np.eye(8)[y]
    assert dg.knn_accuracy(X, y, k=20, temperature=0.07) == pytest.approx(knn_accuracy_by_loop(X, y, 20, 0.07))
    assert dg.knn_accuracy(X, y, k=5, temperature=0.5) == pytest.approx(knn_accuracy_by_loop(X, y, 5, 0.5))
    labels = np.array(["a", "b", "c"])[y]  # string folder names work the same
    assert dg.knn_accuracy(X, labels) == dg.knn_accuracy(X, y)


def test_knn_accuracy_blocks_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 50)
    X = rng.normal(size=(50, 4)) + np.eye(4)[y]
    full = dg.knn_accuracy(X, y)
    monkeypatch.setattr(dg, "_BLOCK", 7)
    assert dg.knn_accuracy(X, y) == full


def test_linear_probe_is_stratified_cross_validation() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(6)
    y = np.repeat([0, 1, 2], 20)
    X = rng.normal(size=(60, 5)) + 0.8 * np.eye(5)[y]
    out = dg.linear_probe(X, y, n_splits=4, random_state=0)
    seed = np.random.RandomState(0).randint(2**31 - 1)
    ref = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        X,
        y,
        cv=StratifiedKFold(4, shuffle=True, random_state=seed),
    )
    np.testing.assert_allclose(out["scores"], ref)
    assert out["mean"] == pytest.approx(ref.mean()) and out["sd"] == pytest.approx(ref.std(ddof=1))
    # A class with one image cannot be stratified: left out, with a warning.
    y2 = y.copy()
    y2[0] = 9
    with pytest.warns(dg.DiagnosticsWarning, match=r"classes \[9\]"):
        assert dg.linear_probe(X, y2, n_splits=3)["n_splits"] == 3
    with pytest.raises(InvalidInputError, match="at least two classes"):
        dg.linear_probe(X, np.zeros(60))


# --------------------------------------------------------------------------- encoder comparison


def hsic_cka(X: np.ndarray, Y: np.ndarray) -> float:
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(A: np.ndarray, B: np.ndarray) -> float:
        return float(np.trace(A @ H @ B @ H)) / (n - 1) ** 2

    return hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("n,dx,dy", [(40, 5, 7), (10, 30, 20)])  # feature-space and Gram-space paths
def test_linear_cka_matches_hsic_with_centering_matrices(n: int, dx: int, dy: int) -> None:
    X = sample(n, dx, 1)
    Y = X[:, : min(dx, dy)] @ np.random.default_rng(2).normal(size=(min(dx, dy), dy)) + 0.5 * sample(n, dy, 3)
    assert dg.linear_cka(X, Y) == pytest.approx(hsic_cka(X, Y))
    Q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(dx, dx)))
    assert dg.linear_cka(X, 3 * X @ Q) == pytest.approx(1.0)  # invariant to rotation and scale
    with pytest.raises(InvalidInputError, match="align them"):
        dg.linear_cka(X, Y[:-1])


def test_mutual_knn_matches_set_overlap_by_loop() -> None:
    X, Y = sample(40, 6, 1), sample(40, 6, 1) + 0.3 * sample(40, 6, 2)
    a, b = neighbours_by_loop(X, 5), neighbours_by_loop(Y, 5)
    expected = np.mean([len(set(p) & set(q)) / 5 for p, q in zip(a, b)])
    assert dg.mutual_knn(X, Y, k=5) == pytest.approx(expected)
    assert dg.mutual_knn(X, 2 * X, k=5) == 1.0


def test_compare_encoders_aligns_rows_by_image_hash(store: Store) -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(30, 6)).astype(np.float32)
    Y = (X @ rng.normal(size=(6, 4))).astype(np.float32)
    records = [
        ImageRecord(
            content_hash=f"{i:032x}",
            rel_path=f"f{i % 2}/{i:03d}.png",
            labels=(f"f{i % 2}",),
            width=4,
            height=4,
            n_bytes=10,
            format="PNG",
            mtime=0.0,
            caption=None,
        )
        for i in range(30)
    ]
    store.ingest("d", "/s", records, [])
    for key, M, order in (("a@1/l/p", X, np.arange(30)), ("b@1/l/p", Y, np.arange(30)[::-1])):
        store.register_encoder(key, key[0], "1", "l", "p", M.shape[1], {"id": key[0]})
        keep = order[order != 3] if key.startswith("b") else order  # b lacks image 3
        store.write_embeddings(key, [records[i].content_hash for i in keep], M[keep])
    table = dg.compare_encoders(store, "d", k=5)
    rows = np.array([i for i in range(30) if i != 3])
    assert table.loc[0, "n_images"] == 29
    assert table.loc[0, "cka"] == pytest.approx(hsic_cka(X[rows].astype(float), Y[rows].astype(float)), rel=1e-5)
    assert table.loc[0, "mutual_knn"] == pytest.approx(dg.mutual_knn(X[rows], Y[rows], 5))
    store.write_embeddings("b@1/l/p", [records[3].content_hash], np.zeros((1, 4), np.float32))
    with pytest.warns(dg.DiagnosticsWarning, match="1 image"):
        assert dg.compare_encoders(store, "d", k=5).loc[0, "n_images"] == 29  # image 3 is zero under b
    with pytest.warns(dg.DiagnosticsWarning, match="zero vector"):
        per_encoder = dg.dataset_diagnostics(store, "d")
    assert per_encoder["encoder"].tolist() == ["a@1/l/p", "b@1/l/p"]
    assert {"rankme", "uniformity", "mean_lid", "hubness", "knn_accuracy", "linear_probe_mean"} <= set(per_encoder)
    assert per_encoder.loc[0, "n_images"] == 30 and per_encoder.loc[1, "n_zero_vectors"] == 1


def test_diagnose_without_labels_skips_label_metrics() -> None:
    out = dg.diagnose(sample(40, 6), include_spectrum=True)
    assert "knn_accuracy" not in out and len(out["spectrum"]) == 6
    with pytest.raises(InvalidInputError, match="k=50 should be <= n_samples - 1 = 39"):
        dg.knn_distances(sample(40, 6), 50)


def test_diagnose_leaves_zero_vectors_out_of_cosine_metrics_with_a_warning() -> None:
    X = sample(40, 6)
    y = np.repeat([0, 1], 20)
    with pytest.warns(dg.DiagnosticsWarning, match="1 zero vector"):
        out = dg.diagnose(np.vstack([X, np.zeros((1, 6))]), np.r_[y, 1])
    assert out["n_zero_vectors"] == 1 and out["n_images"] == 41
    assert out["uniformity"] == pytest.approx(dg.uniformity(X))
    assert out["knn_accuracy"] == pytest.approx(dg.knn_accuracy(X, y))
    assert out["rankme"] == pytest.approx(dg.rankme(np.vstack([X, np.zeros((1, 6))])))
