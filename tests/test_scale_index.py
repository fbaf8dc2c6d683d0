"""The cached ANN index follows its image set: adding k images adds k vectors, no rebuild.

Small data (a few thousand 128-d vectors in 100 tight clusters) with the ANN path forced by a low threshold, so the
HNSW search (re-scored exactly) returns the exact top-k and results can be compared row for row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from usearch.index import Index

from core import neighbors
from core.neighbors import NeighborIndex

K = 10
DIM = 128


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, DIM)).astype(np.float32)
    return centres[rng.integers(0, 100, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)


def _near(x: np.ndarray) -> np.ndarray:
    """Queries from outside the index, each close to a data point (so its top-k is well defined)."""
    return x + 0.05 * np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)


def _index(x: np.ndarray, hashes: list[str], cache: Path) -> NeighborIndex:
    return NeighborIndex(x, encoder_key="toy@v1/x/y", hashes=hashes, cache_dir=cache, ann_threshold=100, scope="ds")


def _top(index: NeighborIndex, queries: np.ndarray) -> np.ndarray:
    return np.stack([found.indices for found in index.search(queries, K)])


@pytest.fixture(autouse=True)
def exhaustive_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every search asks the graph for every entry, so an ANN answer is the exact one whatever
    the (multi-threaded, hence not reproducible) graph looks like: what these tests compare is
    which images the index holds and how its entries map to rows, not HNSW recall (the bench
    measures that)."""
    monkeypatch.setattr(neighbors, "ANN_MIN_CANDIDATES", 10_000)


@pytest.fixture
def added_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows passed to usearch's Index.add, call by call: what a build really cost."""
    calls: list[int] = []
    original = Index.add

    def counting_add(self: Index, keys: np.ndarray, vectors: np.ndarray, **kwargs: object) -> object:
        calls.append(len(np.atleast_2d(vectors)))
        return original(self, keys, vectors, **kwargs)

    monkeypatch.setattr(Index, "add", counting_add)
    return calls


def test_adding_k_images_adds_k_vectors_and_matches_a_full_rebuild(tmp_path: Path, added_rows: list[int]) -> None:
    n, k_new = 3_000, 57
    x = _clustered(n + k_new, seed=1)
    hashes = [f"h{i:05d}" for i in range(n + k_new)]
    first = _index(x[:n], hashes[:n], tmp_path / "cache")
    assert first.build is not None and first.build.added == n and first.build.reason.startswith("built")
    assert added_rows == [n]

    # The new images sort among the old ones, so every row number after the first changes.
    order = np.random.default_rng(2).permutation(n + k_new)
    grown = _index(x[order], [hashes[i] for i in order], tmp_path / "cache")
    assert grown.build is not None
    assert (grown.build.reason, grown.build.added, grown.build.reused, grown.build.removed) == ("updated", k_new, n, 0)
    assert added_rows == [n, k_new]  # the update added exactly the k new vectors

    rebuilt = _index(x[order], [hashes[i] for i in order], tmp_path / "fresh-cache")
    assert rebuilt.build is not None and rebuilt.build.added == n + k_new
    queries = _near(x[order][:: (n + k_new) // 60])
    exact = NeighborIndex(x[order])
    np.testing.assert_array_equal(_top(grown, queries), _top(rebuilt, queries))
    np.testing.assert_array_equal(_top(grown, queries), _top(exact, queries))
    # The update was saved: reopening the grown set reads it and adds nothing.
    again = _index(x[order], [hashes[i] for i in order], tmp_path / "cache")
    assert again.build is not None and (again.build.reason, again.build.added) == ("cached", 0)
    assert added_rows == [n, k_new, n + k_new]  # the only other add was the fresh-cache rebuild


def test_removed_and_changed_images_leave_the_index(tmp_path: Path, added_rows: list[int]) -> None:
    n = 2_000
    x = _clustered(n, seed=4)
    hashes = [f"h{i:05d}" for i in range(n)]
    _index(x, hashes, tmp_path)
    keep = np.ones(n, dtype=bool)
    keep[::20] = False  # 100 images leave the dataset
    changed = x[keep].copy()
    changed[7] = _clustered(1, seed=5)[0]  # and one image's vector is re-imported differently
    smaller = _index(changed, [h for h, kept in zip(hashes, keep) if kept], tmp_path)
    assert smaller.build is not None
    assert (smaller.build.reason, smaller.build.removed, smaller.build.added) == ("updated", 101, 1)
    assert added_rows == [n, 1]
    queries = np.concatenate([changed[::40], _near(x[~keep][:20])])
    np.testing.assert_array_equal(_top(smaller, queries), _top(NeighborIndex(changed), queries))


def test_many_removals_rebuild_instead_of_keeping_tombstones(tmp_path: Path, added_rows: list[int]) -> None:
    n = 1_000
    x = _clustered(n, seed=6)
    hashes = [f"h{i:05d}" for i in range(n)]
    _index(x, hashes, tmp_path)
    half = _index(x[: n // 2], hashes[: n // 2], tmp_path)
    assert half.build is not None and half.build.reason.startswith("built") and "tombstones" in half.build.reason
    assert added_rows == [n, n // 2]


def test_index_and_sidecar_from_different_writes_are_not_mixed(tmp_path: Path) -> None:
    n = 1_000
    x = _clustered(2 * n, seed=7)
    hashes = [f"h{i:05d}" for i in range(2 * n)]
    first = _index(x[:n], hashes[:n], tmp_path / "a")
    other = _index(x[n:], hashes[n:], tmp_path / "b")
    assert first.index_file is not None and other.index_file is not None
    # Another writer's index file lands beside this sidecar (a race between two sessions).
    other.index_file.replace(first.index_file)
    reopened = _index(x[:n], hashes[:n], tmp_path / "a")
    assert reopened.build is not None
    assert reopened.build.reason == "built: cached index and sidecar come from different writes"
    queries = x[:n:50]
    np.testing.assert_array_equal(_top(reopened, queries), _top(NeighborIndex(x[:n]), queries))


def test_scopes_and_encoders_name_different_files() -> None:
    base = neighbors.index_key("a@1/l/p", "cats")
    assert base == neighbors.index_key("a@1/l/p", "cats")
    assert base != neighbors.index_key("b@1/l/p", "cats")
    assert base != neighbors.index_key("a@1/l/p", "dogs")


def test_hashes_of_any_text_survive_the_sidecar(tmp_path: Path) -> None:
    x = _clustered(300, seed=8)
    hashes = [f"imported-é-{i}" for i in range(150)] + [f"h{i:05d}" for i in range(150)]
    _index(x, hashes, tmp_path)
    again = _index(x, hashes, tmp_path)
    assert again.build is not None and (again.build.reason, again.build.reused) == ("cached", 300)
    np.testing.assert_array_equal(_top(again, x[:20]), _top(NeighborIndex(x), x[:20]))


def test_a_build_reports_vectors_added_in_chunks_and_a_stopped_build_leaves_no_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(neighbors, "ADD_CHUNK", 1_000)
    x = _clustered(2_500, seed=21)
    hashes = [f"h{i}" for i in range(len(x))]
    heard: list[tuple[int, int]] = []
    built = NeighborIndex(
        x,
        encoder_key="toy@v1/x/y",
        hashes=hashes,
        cache_dir=tmp_path,
        ann_threshold=100,
        scope="ds",
        progress=lambda done, total: heard.append((done, total)),
    )
    assert heard == [(1_000, 2_500), (2_000, 2_500), (2_500, 2_500)]
    assert neighbors.cached_index_exists(tmp_path, "toy@v1/x/y", "ds")
    # Chunked adds find what one add finds.
    np.testing.assert_array_equal(_top(built, _near(x[:50])), _top(NeighborIndex(x), _near(x[:50])))

    class Stop(Exception):
        pass

    def stop_after_first_chunk(done: int, total: int) -> None:
        raise Stop

    other = tmp_path / "other"
    with pytest.raises(Stop):
        NeighborIndex(
            x,
            encoder_key="toy@v1/x/y",
            hashes=hashes,
            cache_dir=other,
            ann_threshold=100,
            scope="ds",
            progress=stop_after_first_chunk,
        )
    assert not neighbors.cached_index_exists(other, "toy@v1/x/y", "ds")  # a cancelled build saves nothing
