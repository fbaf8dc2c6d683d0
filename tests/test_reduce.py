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
    return [
        ImageRecord(
            content_hash=f"{i:032x}",
            rel_path=f"{'ab'[i % 2]}/img_{i:04d}.png",
            labels=("ab"[i % 2],),
            width=10 + i,
            height=20,
            n_bytes=100 + i,
            format="PNG",
            mtime=0.0,
            caption=None,
        )
        for i in range(n)
    ]


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


def _pca_by_svd(x: np.ndarray) -> np.ndarray:
    """The first two principal component scores by numpy's SVD of the centred matrix (float64)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :2] * s[:2]


def _same_up_to_sign(ours: np.ndarray, theirs: np.ndarray, tol: float) -> None:
    """Principal axes have no intrinsic sign: compare each column with the matching sign."""
    for j in range(theirs.shape[1]):
        sign = 1.0 if float(ours[:, j] @ theirs[:, j]) >= 0 else -1.0
        np.testing.assert_allclose(ours[:, j], sign * theirs[:, j], atol=tol * float(np.abs(theirs).max()))


def test_pca_defaults_to_l2_normalised_vectors() -> None:
    """Issue 10: PCA ran on raw vectors while UMAP, neighbours and clusters use cosine."""
    rng = np.random.default_rng(7)
    directions = _vectors(200, dim=16, seed=3).astype(np.float64)
    norms = rng.uniform(0.2, 20.0, size=(200, 1))  # norms vary 100-fold
    x = directions / np.linalg.norm(directions, axis=1, keepdims=True) * norms
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)

    ours = reduce.PCAReducer().fit_transform(x.astype(np.float32))
    _same_up_to_sign(ours, _pca_by_svd(unit), tol=1e-4)
    # Raw stays available as an option, and on these vectors it is a different picture.
    raw = reduce.PCAReducer(normalize=False).fit_transform(x.astype(np.float32))
    _same_up_to_sign(raw, _pca_by_svd(x), tol=1e-4)
    assert abs(np.corrcoef(raw[:, 0], ours[:, 0])[0, 1]) < 0.9
    # Scaling vectors changes nothing in the default layout.
    rescaled = reduce.PCAReducer().fit_transform((x * rng.uniform(0.5, 3.0, size=(200, 1))).astype(np.float32))
    np.testing.assert_allclose(rescaled, ours, atol=1e-4 * float(np.abs(ours).max()))


def test_pca_keeps_an_all_zero_vector_at_the_origin_of_the_directions() -> None:
    x = _vectors(20)
    x[3] = 0.0
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    _same_up_to_sign(reduce.PCAReducer().fit_transform(x), _pca_by_svd(unit), tol=1e-4)


def test_pca_matches_sklearn() -> None:
    x = _vectors(50)
    ours = reduce.PCAReducer(normalize=False).fit_transform(x)
    theirs = PCA(n_components=2, svd_solver="full", random_state=0).fit_transform(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert ours.dtype == np.float32 and ours.shape == (50, 2)


def test_pca_tall_matrix_matches_full_svd() -> None:
    x = _vectors(3_000)  # tall: takes the covariance eigensolver path
    ours = reduce.PCAReducer(normalize=False).fit_transform(x)
    theirs = PCA(n_components=2, svd_solver="full").fit_transform(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-3 * float(np.abs(theirs).max()))


def test_project_pca_aligned_with_store_rows(store: Store) -> None:
    proj = reduce.project(store, "toy", KEY, "pca", {})
    images, vectors = store.load_embeddings("toy", KEY)
    assert proj.images["content_hash"].tolist() == images["content_hash"].tolist()
    # The default layout is the PCA of the unit-length vectors (the cosine geometry).
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = PCA(n_components=2, svd_solver="full").fit_transform(unit)
    np.testing.assert_allclose(proj.coords, expected, rtol=1e-4, atol=1e-4)
    assert proj.params == {"normalize": True, "random_state": 0}
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


def test_a_plugin_reducer_registers_like_the_builtins(store: Store) -> None:
    assert reduce.reduction_methods()[:3] == list(reduce.METHODS)

    class FirstTwoColumns(reduce.Reducer):
        method = "test-first-two"

        def __init__(self, scale: float = 1.0) -> None:
            self.scale = scale

        def fit_transform(self, X: np.ndarray, y: object = None) -> np.ndarray:
            return (np.asarray(X, dtype=np.float32)[:, :2] * self.scale).astype(np.float32)

    try:
        assert reduce.register_reducer(FirstTwoColumns) is FirstTwoColumns
        assert "test-first-two" in reduce.reduction_methods()
        made = reduce.make_reducer("test-first-two", {"scale": 2.0})
        assert isinstance(made, FirstTwoColumns) and made.get_params() == {"scale": 2.0}
        proj = reduce.project(store, "toy", KEY, "test-first-two", {"scale": 2.0})
        vectors = store.load_embeddings("toy", KEY)[1]
        np.testing.assert_allclose(proj.coords, vectors[:, :2] * 2.0)
        assert reduce.project(store, "toy", KEY, "test-first-two", {"scale": 2.0}).cached
        with pytest.warns(UserWarning, match="registered twice"):
            reduce.register_reducer(FirstTwoColumns)
    finally:
        reduce.REDUCERS.remove("test-first-two")
    assert "test-first-two" not in reduce.reduction_methods()
    with pytest.raises(InvalidInputError, match="Unknown projection method 'test-first-two'; choose one of umap"):
        reduce.make_reducer("test-first-two")


def test_a_reducer_needs_a_method_name_to_register() -> None:
    class Nameless(reduce.Reducer):
        pass

    with pytest.raises(InvalidInputError, match="non-empty `method`"):
        reduce.register_reducer(Nameless)


def test_reducers_are_sklearn_estimators_with_unchanged_cache_params() -> None:
    from sklearn.base import clone

    umap_reducer = reduce.make_reducer("umap", {"n_neighbors": 10})
    # The cache key hashes these: the same values as the hand-written get_params gave.
    assert umap_reducer.get_params() == {"n_neighbors": 10, "min_dist": 0.1, "metric": "cosine", "random_state": 42}
    assert reduce.PCAReducer().get_params() == {"normalize": True, "random_state": 0}
    assert reduce.TSNEReducer().get_params() == {"perplexity": 30.0, "metric": "cosine", "random_state": 42}
    copy = clone(umap_reducer)
    assert copy is not umap_reducer and copy.get_params() == umap_reducer.get_params()
    assert umap_reducer.set_params(min_dist=0.5) is umap_reducer and umap_reducer.min_dist == 0.5


def test_too_few_rows_are_told_in_the_map_pages_words() -> None:
    with pytest.raises(InvalidInputError, match="A map needs at least 3 embedded images, got 2"):
        reduce.UMAPReducer().fit_transform(np.ones((2, 4)))
    with pytest.raises(InvalidInputError, match="A map needs at least 2 embedded images, got 0"):
        reduce.PCAReducer().fit_transform(np.ones(4))
    with pytest.raises(InvalidInputError, match="NaN"):
        reduce.PCAReducer().fit_transform(np.full((3, 4), np.nan))


def test_map_page_says_what_pca_projects_and_draws_it(isolated_env: dict[str, str]) -> None:
    """The Map page's PCA is the normalised one by default, says so, and offers raw vectors."""

    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parent.parent
    rng = np.random.default_rng(11)
    records = _records(40)
    x = _vectors(40) * rng.uniform(0.2, 20.0, size=(40, 1)).astype(np.float32)  # norms vary 100-fold
    st = Store(Path(isolated_env["REPLENS_DB"]), Path(isolated_env["REPLENS_CACHE"]))
    try:
        st.ingest("toy", "/nowhere", records, [])
        st.register_encoder(KEY, "synthetic", "v1", "last", "none", 16, {"id": "synthetic"})
        st.write_embeddings(KEY, [r.content_hash for r in records], x)
        frame, vectors = st.load_embeddings("toy", KEY)
    finally:
        st.close()

    at = AppTest.from_file(str(root / "pages" / "map.py"), default_timeout=60)
    at.session_state["rl_dataset"] = "toy"
    at.session_state["rl_encoder_key"] = KEY
    at.run()
    at.radio(key="map_method").set_value("PCA").run()
    assert not at.exception, [e.message for e in at.exception]

    def drawn() -> np.ndarray:
        from ui.bigmap.sent import sent_maps

        (sent,) = sent_maps(at)  # one point per frame row, in the frame's order
        return sent.coords.astype(np.float64)

    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert any("PCA of the L2-normalised vectors" in c.value for c in at.caption)
    _same_up_to_sign(drawn(), _pca_by_svd(unit), tol=1e-3)
    at.toggle(key="pca_normalize").set_value(False).run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("PCA of the raw vectors" in c.value for c in at.caption)
    _same_up_to_sign(drawn(), _pca_by_svd(vectors), tol=1e-3)
