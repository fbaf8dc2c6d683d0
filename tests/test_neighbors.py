"""core.neighbors: exact search against an independent numpy computation, ANN recall, overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import neighbors
from core.errors import InvalidInputError


def _random(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_exact_search_matches_numpy_and_query_first() -> None:
    x = _random(500, 32, 0) * np.random.default_rng(1).uniform(0.1, 10, (500, 1)).astype(np.float32)
    index = neighbors.NeighborIndex(x)
    assert not index.uses_ann
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for row in (0, 17, 499):
        found = index.search_row(row, 10)
        sims = np.array([float(np.dot(unit[row], unit[j])) for j in range(len(x))])
        expected_rows = np.argsort(-sims, kind="stable")[:10]
        assert found.indices[0] == row
        assert found.similarities[0] == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_array_equal(found.indices, expected_rows)
        np.testing.assert_allclose(found.similarities, sims[expected_rows], atol=1e-5)


def test_query_vector_search_and_k_larger_than_n() -> None:
    x = _random(20, 8, 2)
    index = neighbors.NeighborIndex(x)
    q = _random(1, 8, 3)
    found = index.search(q, 50)[0]
    assert len(found.indices) == 20
    assert np.all(np.diff(found.similarities) <= 1e-7)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q[0] / np.linalg.norm(q[0])
    np.testing.assert_allclose(np.sort(found.similarities)[::-1], np.sort(unit @ qn)[::-1], atol=1e-5)


def test_duplicates_still_put_the_query_first() -> None:
    x = np.repeat(_random(1, 8, 4), 5, axis=0)
    found = neighbors.NeighborIndex(x).search_row(3, 5)
    assert found.indices[0] == 3 and sorted(found.indices.tolist()) == [0, 1, 2, 3, 4]


def test_user_errors() -> None:
    index = neighbors.NeighborIndex(_random(5, 4, 5))
    with pytest.raises(InvalidInputError):
        index.search(_random(1, 3, 6), 2)
    with pytest.raises(InvalidInputError):
        index.search_row(0, 0)
    with pytest.raises(InvalidInputError):
        neighbors.NeighborIndex(np.zeros((0, 4), np.float32)).search(np.ones(4), 1)


def test_ann_recall_and_disk_cache(tmp_path: Path) -> None:
    n, dim, k = 20_000, 384, 10
    x = _random(n, dim, 7)
    hashes = [f"h{i}" for i in range(n)]
    index = neighbors.NeighborIndex(
        x, encoder_key="rand@v1/x/y", hashes=hashes, cache_dir=tmp_path, ann_threshold=1_000
    )
    assert index.uses_ann and index.index_file is not None and index.index_file.exists()
    assert index.index_file.parent == tmp_path / "indexes"
    exact = neighbors.NeighborIndex(x)
    rng = np.random.default_rng(8)
    queries = np.concatenate([x[rng.choice(n, 100, replace=False)], _random(100, dim, 9)])
    recalls = []
    for q in queries:
        got = index.search(q, k)[0]
        want = exact.search(q, k)[0]
        recalls.append(len(set(got.indices.tolist()) & set(want.indices.tolist())) / k)
        # Candidates are re-scored exactly: every shown similarity is the true cosine.
        unit = x[got.indices] / np.linalg.norm(x[got.indices], axis=1, keepdims=True)
        np.testing.assert_allclose(got.similarities, unit @ (q / np.linalg.norm(q)), atol=1e-5)
    assert np.mean(recalls) >= 0.95, np.mean(recalls)
    # Reopening loads the saved file instead of rebuilding (same file, same answers).
    mtime = index.index_file.stat().st_mtime_ns
    again = neighbors.NeighborIndex(
        x, encoder_key="rand@v1/x/y", hashes=hashes, cache_dir=tmp_path, ann_threshold=1_000
    )
    assert again.index_file == index.index_file and again.index_file.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.search(queries[0], k)[0].indices, index.search(queries[0], k)[0].indices)


def test_index_key_names_one_file_per_encoder_and_scope() -> None:
    base = neighbors.index_key("a@1/l/p", "cats")
    assert base == neighbors.index_key("a@1/l/p", "cats")
    assert base != neighbors.index_key("b@1/l/p", "cats")
    assert base != neighbors.index_key("a@1/l/p", "dogs")


def test_overlap_hand_case() -> None:
    a = ["q", "b", "c", "d", "e"]
    b = ["q", "c", "x", "y", "b"]
    assert neighbors.overlap(a, b) == pytest.approx(3 / 5)
    assert neighbors.overlap(a, b, k=2) == pytest.approx(1 / 2)
    assert neighbors.overlap([1, 2], [3, 4]) == 0.0


def test_mean_similarity_leaves_out_only_the_query_image_itself() -> None:
    # Issue 10: "excluding rank 1" was right for a dataset image (rank 1 is itself) but not for an
    # uploaded query, whose rank 1 is a real neighbour.
    x = _random(60, 16, 10)
    index = neighbors.NeighborIndex(x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit[7]
    order = np.argsort(-sims, kind="stable")[:8]
    found = index.search_row(7, 8)
    assert found.query_row == 7 and order[0] == 7
    assert neighbors.mean_similarity(found) == pytest.approx(float(np.mean(sims[order[1:]])), abs=1e-6)
    # An outside query (an upload): every rank counts, the first included.
    q = _random(1, 16, 11)[0]
    outside = index.search(q, 8)[0]
    q_sims = unit @ (q / np.linalg.norm(q))
    top = np.sort(q_sims)[::-1][:8]
    assert outside.query_row is None
    assert neighbors.mean_similarity(outside) == pytest.approx(float(np.mean(top)), abs=1e-6)
    assert neighbors.mean_similarity(outside) != pytest.approx(float(np.mean(top[1:])), abs=1e-6)
    # An upload identical to a dataset image: that image is a neighbour (similarity 1) and counts.
    same = index.search(x[7], 8)[0]
    assert same.indices[0] == 7 and same.query_row is None
    assert neighbors.mean_similarity(same) == pytest.approx(float(np.mean(sims[order])), abs=1e-6)
    # A copy of the query image in the dataset is another image: it counts, the query itself does not.
    dup = neighbors.NeighborIndex(np.vstack([x, x[7:8]]))
    with_copy = dup.search_row(7, 8)
    assert with_copy.indices[0] == 7 and with_copy.indices[1] == 60
    expected = np.r_[1.0, sims[order[1:7]]]
    assert neighbors.mean_similarity(with_copy) == pytest.approx(float(np.mean(expected)), abs=1e-6)
    assert np.isnan(neighbors.mean_similarity(index.search_row(3, 1)))
