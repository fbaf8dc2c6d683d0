"""The sampled UMAP layout for large maps, and the Map page's size rule that picks it."""

from __future__ import annotations

import numpy as np
import pytest

from core import reduce
from core.errors import InvalidInputError

N_CLUSTERS = 6


def _clusters(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 64-d points around well-separated centres, and each point's centre."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.standard_normal((N_CLUSTERS, 64)).astype(np.float32)
    labels = rng.integers(0, N_CLUSTERS, n)
    return centres[labels] + rng.standard_normal((n, 64)).astype(np.float32), labels


def test_points_outside_the_sample_land_beside_their_own_cluster() -> None:
    x, labels = _clusters(3_000)
    reducer = reduce.SampledUMAPReducer(sample_size=1_000, random_state=7)
    coords = reducer.fit_transform(x)
    assert coords.shape == (3_000, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    sample = np.sort(np.random.RandomState(7).choice(3_000, 1_000, replace=False))
    rest = np.setdiff1d(np.arange(3_000), sample)
    # Each placed point's nearest fitted point on the map is from its own cluster.
    gaps = np.linalg.norm(coords[rest][:, None, :] - coords[sample][None, :, :], axis=2)
    nearest_fitted = sample[np.argmin(gaps, axis=1)]
    assert np.mean(labels[nearest_fitted] == labels[rest]) >= 0.99
    # Reproducible for a seed: the map of a large dataset does not move between sessions.
    np.testing.assert_array_equal(coords, reduce.SampledUMAPReducer(sample_size=1_000, random_state=7).fit_transform(x))


def test_a_placed_point_sits_at_the_sharp_membership_mean_of_its_nearest_sampled_points() -> None:
    """The placement recomputed here with exact cosine neighbours (sklearn), not usearch."""
    from sklearn.neighbors import NearestNeighbors

    x, _ = _clusters(2_500, seed=5)
    coords = reduce.SampledUMAPReducer(sample_size=1_000, random_state=11).fit_transform(x)
    sample = np.sort(np.random.RandomState(11).choice(2_500, 1_000, replace=False))
    rest = np.setdiff1d(np.arange(2_500), sample)
    distances, found = NearestNeighbors(n_neighbors=5, metric="cosine").fit(x[sample]).kneighbors(x[rest])
    excess = distances - distances[:, :1]
    weights = np.exp(-excess / np.maximum(0.25 * excess.mean(axis=1, keepdims=True), 1e-6))
    expected = (weights[:, :, None] * coords[sample][found]).sum(axis=1) / weights.sum(axis=1, keepdims=True)
    # usearch stores the sample at half precision: a near-tie may swap, so nearly every point, not all.
    close = np.linalg.norm(coords[rest] - expected, axis=1) < 1e-2 * np.ptp(coords, axis=0).max()
    assert close.mean() >= 0.98
    with pytest.raises(InvalidInputError, match="placement_neighbors=0"):
        reduce.SampledUMAPReducer(sample_size=1_000, placement_neighbors=0).fit_transform(x)
    # Another placement is another layout, so another cache key.
    params = reduce.SampledUMAPReducer().get_params()
    assert params["placement_neighbors"] == 5
    assert reduce.projection_key(["h"], "e", "umap-sampled", params) != reduce.projection_key(
        ["h"], "e", "umap-sampled", {**params, "placement_neighbors": 15}
    )


def test_below_the_sample_size_it_is_plain_umap() -> None:
    x, _ = _clusters(300, seed=1)
    sampled = reduce.SampledUMAPReducer(n_neighbors=10, sample_size=1_000, random_state=3).fit_transform(x)
    plain = reduce.UMAPReducer(n_neighbors=10, random_state=3).fit_transform(x)
    np.testing.assert_array_equal(sampled, plain)


def test_it_is_registered_and_refuses_what_it_cannot_do() -> None:
    assert "umap-sampled" in reduce.reduction_methods()
    assert isinstance(reduce.make_reducer("umap-sampled", {"sample_size": 2_000}), reduce.SampledUMAPReducer)
    x, _ = _clusters(2_000, seed=2)
    with pytest.raises(InvalidInputError, match="choose one of cosine, euclidean, correlation"):
        reduce.SampledUMAPReducer(metric="manhattan", sample_size=1_000).fit_transform(x)
    with pytest.raises(InvalidInputError, match="sample_size=10"):
        reduce.SampledUMAPReducer(sample_size=10).fit_transform(x)


def test_the_map_switches_to_the_sampled_layout_above_the_threshold_and_says_so() -> None:
    params = {"n_neighbors": 20, "min_dist": 0.3, "metric": "cosine", "random_state": 5}
    small = reduce.layout_for_size("umap", params, reduce.LARGE_MAP_THRESHOLD)
    assert (small.method, small.params, small.note) == ("umap", params, None)
    big = reduce.layout_for_size("umap", params, reduce.LARGE_MAP_THRESHOLD + 1)
    assert big.method == "umap-sampled" and big.params == {**params, "sample_size": 20_000}
    assert big.note is not None and f"{reduce.LARGE_MAP_THRESHOLD + 1:,} points" in big.note
    # The swapped method takes every parameter the page set for UMAP.
    assert reduce.make_reducer(big.method, big.params).get_params()["min_dist"] == 0.3
    pca = reduce.layout_for_size("pca", {"normalize": False}, 10 * reduce.LARGE_MAP_THRESHOLD)
    assert (pca.method, pca.params, pca.note) == ("pca", {"normalize": False}, None)


def test_a_layout_job_hears_placement_progress_and_can_stop_it() -> None:
    x, _ = _clusters(3_000, seed=4)
    heard: list[tuple[int, int | None, str | None]] = []
    reducer = reduce.SampledUMAPReducer(sample_size=1_000, random_state=7)
    reducer.on_progress = lambda done, total, message: heard.append((done, total, message))
    assert "on_progress" not in reducer.get_params()  # not part of what the layout is (nor of its cache key)
    coords = reducer.fit_transform(x)
    assert heard[0][:2] == (0, None) and "1,000 randomly drawn points" in str(heard[0][2])
    # Counting starts after the fit, so a rate (and ETA) measures placing points only.
    assert heard[1][:2] == (0, 2_000) and "2,000 points" in str(heard[1][2])
    assert heard[-1][:2] == (2_000, 2_000)
    # The progress hook changes nothing in the layout.
    np.testing.assert_array_equal(coords, reduce.SampledUMAPReducer(sample_size=1_000, random_state=7).fit_transform(x))

    class Stop(Exception):
        pass

    def stop_when_placing(done: int, total: int | None, message: str | None) -> None:
        if total is not None:
            raise Stop

    reducer.on_progress = stop_when_placing
    with pytest.raises(Stop):
        reducer.fit_transform(x)


def test_a_stored_layout_is_found_without_computing_it(store, ingested, pixels_encoder) -> None:
    from core.extract import embed_dataset

    dataset = "d"  # what ``ingested`` names the image folder
    embed_dataset(store, dataset, pixels_encoder)
    frame, vectors = store.load_embeddings(dataset, pixels_encoder.key)
    assert reduce.cached_projection(store, pixels_encoder.key, "pca", {}, frame) is None
    made = reduce.project(store, dataset, pixels_encoder.key, "pca", {})
    found = reduce.cached_projection(store, pixels_encoder.key, "pca", {}, frame)
    assert found is not None and found.cached and found.key == made.key
    np.testing.assert_array_equal(found.coords, made.coords)
    # Rows in another order: the stored layout follows them.
    shuffled = frame.iloc[::-1].reset_index(drop=True)
    reordered = reduce.cached_projection(store, pixels_encoder.key, "pca", {}, shuffled)
    assert reordered is not None
    np.testing.assert_array_equal(reordered.coords, made.coords[::-1])
    # Other parameters are another layout.
    assert reduce.cached_projection(store, pixels_encoder.key, "pca", {"normalize": False}, frame) is None


class _FakeCumlUMAP:
    """Records what RepLens asks cuML for; lays points out by their first two coordinates."""

    calls: list[dict] = []

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        type(self).calls.append({**self.kwargs, "X": X})
        return X[:, :2].astype(np.float64)


@pytest.fixture
def fake_cuml(monkeypatch: pytest.MonkeyPatch) -> type[_FakeCumlUMAP]:
    import sys
    import types

    manifold = types.ModuleType("cuml.manifold")
    manifold.UMAP = _FakeCumlUMAP  # type: ignore[attr-defined]
    package = types.ModuleType("cuml")
    package.manifold = manifold  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuml", package)
    monkeypatch.setitem(sys.modules, "cuml.manifold", manifold)
    _FakeCumlUMAP.calls = []
    return _FakeCumlUMAP


def test_gpu_umap_fits_cosine_as_euclidean_on_unit_vectors(fake_cuml: type[_FakeCumlUMAP]) -> None:
    x, _ = _clusters(500, seed=6)
    coords = reduce.GPUUMAPReducer(n_neighbors=12, min_dist=0.2, random_state=9).fit_transform(x)
    (call,) = fake_cuml.calls
    assert (call["metric"], call["build_algo"], call["n_neighbors"], call["min_dist"]) == ("euclidean", "auto", 12, 0.2)
    assert call["random_state"] == 9 and call["output_type"] == "numpy"
    np.testing.assert_allclose(np.linalg.norm(call["X"], axis=1), 1.0, atol=1e-5)
    # Unit rows: euclidean order is cosine order, so the kNN graph is the cosine one.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(call["X"], unit, atol=1e-5)
    assert coords.dtype == np.float32 and coords.shape == (500, 2)
    reduce.GPUUMAPReducer(metric="manhattan").fit_transform(x)
    assert fake_cuml.calls[-1]["metric"] == "manhattan" and fake_cuml.calls[-1]["build_algo"] == "brute_force_knn"
    np.testing.assert_array_equal(fake_cuml.calls[-1]["X"], x)


def test_without_cuml_the_gpu_layout_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from core.errors import EngineUnavailableError

    monkeypatch.setitem(sys.modules, "cuml", None)  # import fails as when it is not installed
    x, _ = _clusters(100)
    with pytest.raises(EngineUnavailableError, match="needs RAPIDS cuML and a CUDA GPU"):
        reduce.GPUUMAPReducer().fit_transform(x)


def test_with_a_gpu_big_umap_maps_are_a_full_cuml_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reduce, "gpu_umap_available", lambda: True)
    params = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "random_state": 42}
    big = reduce.layout_for_size("umap", params, 1_000_000)
    assert (big.method, big.params) == ("umap-gpu", params) and big.note and "GPU" in big.note
    small = reduce.layout_for_size("umap", params, reduce.GPU_UMAP_ABOVE)
    assert (small.method, small.note) == ("umap", None)
    monkeypatch.setattr(reduce, "gpu_umap_available", lambda: False)
    assert reduce.layout_for_size("umap", params, 1_000_000).method == "umap-sampled"


def test_real_cuml_umap_keeps_neighbourhoods_like_umap_learn() -> None:
    pytest.importorskip("cuml")
    if not reduce.gpu_umap_available():
        pytest.skip("cuML is installed but no CUDA GPU is visible")
    from sklearn.manifold import trustworthiness

    x, _ = _clusters(5_000, seed=8)
    gpu = reduce.GPUUMAPReducer(random_state=1).fit_transform(x)
    cpu = reduce.UMAPReducer(random_state=1).fit_transform(x)
    t_gpu = trustworthiness(x, gpu, n_neighbors=15, metric="cosine")
    t_cpu = trustworthiness(x, cpu, n_neighbors=15, metric="cosine")
    assert t_gpu >= t_cpu - 0.05, (t_gpu, t_cpu)
