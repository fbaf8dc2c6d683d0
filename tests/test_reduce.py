"""core.reduce: PCA equals sklearn, UMAP is seeded and cached in the store, keys track params."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from core import reduce
from core.errors import InvalidInputError
from core.images import ImageRecord
from core.store import Store

KEY = "synthetic@v1/last/none"


def _records(n: int) -> list[ImageRecord]:
    return [ImageRecord(content_hash=f"{i:032x}", rel_path=f"{'ab'[i % 2]}/img_{i:04d}.png", labels=("ab"[i % 2],),
                        width=10 + i, height=20, n_bytes=100 + i, format="PNG", mtime=0.0, caption=None)
            for i in range(n)]


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (3, dim))
    return (centres[np.arange(n) % 3] + rng.normal(0, 1, (n, dim))).astype(np.float32)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    st = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    records = _records(60)
    st.ingest("toy", str(tmp_path / "src"), records, [])
    st.register_encoder(KEY, "synthetic", "v1", "last", "none", 16, {"id": "synthetic"})
    # Written in reverse order so row order in the store differs from insertion order.
    vecs = _vectors(60)
    st.write_embeddings(KEY, [r.content_hash for r in records][::-1], vecs[::-1])
    yield st
    st.close()


def test_pca_matches_sklearn() -> None:
    x = _vectors(50)
    ours = reduce.PCAReducer().fit_transform(x)
    theirs = PCA(n_components=2, svd_solver="full", random_state=0).fit_transform(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert ours.dtype == np.float32 and ours.shape == (50, 2)


def test_pca_tall_matrix_matches_full_svd() -> None:
    x = _vectors(3_000)  # tall: takes the covariance eigensolver path
    ours = reduce.PCAReducer().fit_transform(x)
    theirs = PCA(n_components=2, svd_solver="full").fit_transform(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-3 * float(np.abs(theirs).max()))


def test_project_pca_aligned_with_store_rows(store: Store) -> None:
    proj = reduce.project(store, "toy", KEY, "pca", {})
    images, vectors = store.load_embeddings("toy", KEY)
    assert proj.images["content_hash"].tolist() == images["content_hash"].tolist()
    expected = PCA(n_components=2, svd_solver="full").fit_transform(vectors)
    np.testing.assert_allclose(proj.coords, expected, rtol=1e-4, atol=1e-4)
    # The reloaded layout is realigned to the same rows (the store returns points by hash).
    again = reduce.project(store, "toy", KEY, "pca", {})
    assert again.cached and not proj.cached
    np.testing.assert_array_equal(again.coords, proj.coords)


def test_umap_seeded_deterministic_and_cached(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"n_neighbors": 10, "min_dist": 0.1, "metric": "cosine", "random_state": 7}
    x = store.load_embeddings("toy", KEY)[1]
    a = reduce.UMAPReducer(**params).fit_transform(x)
    b = reduce.UMAPReducer(**params).fit_transform(x)
    np.testing.assert_array_equal(a, b)

    calls = {"n": 0}
    original = reduce.UMAPReducer.fit_transform

    def counting(self: reduce.UMAPReducer, X: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        return original(self, X)

    monkeypatch.setattr(reduce.UMAPReducer, "fit_transform", counting)
    first = reduce.project(store, "toy", KEY, "umap", params)
    second = reduce.project(store, "toy", KEY, "umap", params)
    assert calls["n"] == 1
    assert not first.cached and second.cached
    np.testing.assert_array_equal(first.coords, a)
    np.testing.assert_array_equal(second.coords, a)
    assert len(store.list_projections("toy")) == 1
    # A different parameter is a different layout: computed again.
    reduce.project(store, "toy", KEY, "umap", {**params, "min_dist": 0.5})
    assert calls["n"] == 2


def test_projection_key_tracks_inputs() -> None:
    hashes = ["b", "a", "c"]
    base = reduce.projection_key(hashes, KEY, "umap", {"n_neighbors": 15})
    assert base == reduce.projection_key(["c", "b", "a"], KEY, "umap", {"n_neighbors": 15})
    assert base != reduce.projection_key(hashes, KEY, "umap", {"n_neighbors": 16})
    assert base != reduce.projection_key(hashes, KEY, "pca", {"n_neighbors": 15})
    assert base != reduce.projection_key(hashes, "other@v1/last/none", "umap", {"n_neighbors": 15})
    assert base != reduce.projection_key(hashes + ["d"], KEY, "umap", {"n_neighbors": 15})


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(InvalidInputError):
        reduce.make_reducer("isomap")
    with pytest.raises(InvalidInputError):
        reduce.make_reducer("umap", {"neighbours": 3})
    with pytest.raises(InvalidInputError):
        reduce.PCAReducer().fit_transform(np.zeros((1, 4)))


def test_stratified_sample_keeps_every_group() -> None:
    groups = np.array(["big"] * 9_000 + ["mid"] * 990 + ["tiny"] * 10)
    keep = reduce.stratified_sample(groups, 1_000, seed=1)
    assert len(keep) == 1_000 and len(np.unique(keep)) == 1_000
    counts = {g: int((groups[keep] == g).sum()) for g in ("big", "mid", "tiny")}
    assert counts == {"big": 900, "mid": 99, "tiny": 1}
    np.testing.assert_array_equal(reduce.stratified_sample(groups[:50], 1_000), np.arange(50))


def test_tsne_seeded_and_small_inputs_clamped() -> None:
    x = _vectors(40)
    a = reduce.TSNEReducer(perplexity=30, random_state=3).fit_transform(x)  # perplexity clamped below n
    b = reduce.TSNEReducer(perplexity=30, random_state=3).fit_transform(x)
    assert a.shape == (40, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
