"""Tests for core.importer: matching ids to images, rejecting bad files, format details."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import png_bytes, write_file
from core import images
from core.errors import DatasetNotFoundError, ImportFormatError
from core.importer import import_embeddings
from core.store import Store


def hash_of(folder, rel: str) -> str:
    return images.content_hash(folder.files[rel])


def stored(store: Store, key: str, dataset: str = "d") -> dict[str, np.ndarray]:
    imgs, matrix = store.load_embeddings(dataset, key)
    return dict(zip(imgs["content_hash"], matrix))


def vectors_for(n: int, dim: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def write_csv(path: Path, ids: list[str], vectors: np.ndarray, id_column: str = "id", **to_csv) -> Path:
    frame = pd.DataFrame(vectors, columns=[f"f{i}" for i in range(vectors.shape[1])])
    frame.insert(0, id_column, ids)
    frame.to_csv(path, index=to_csv.pop("index", False), **to_csv)
    return path


def test_ids_match_by_path_name_stem_and_hash(ingested, tmp_path: Path) -> None:
    store, folder, _ = ingested
    ids = [
        "cats/cat_0.png",  # relative path
        "./cats/cat_1.png",  # relative path written with ./
        "dogs\\dog_0.png",  # Windows separators
        "cat_2.png",  # file name
        "dog_1",  # stem
        hash_of(folder, "dogs/dog_2.png"),  # content hash
    ]
    targets = [
        "cats/cat_0.png",
        "cats/cat_1.png",
        "dogs/dog_0.png",
        "cats/cat_2.png",
        "dogs/dog_1.png",
        "dogs/dog_2.png",
    ]
    vectors = vectors_for(len(ids))
    report = import_embeddings(store, write_csv(tmp_path / "v.csv", ids, vectors), "d", "mine")
    assert (report.encoder, report.imported, report.unmatched, report.dim) == ("import:mine", 6, [], 3)
    got = stored(store, "import:mine")
    assert set(got) == {hash_of(folder, t) for t in targets}
    for target, vec in zip(targets, vectors):
        assert np.array_equal(got[hash_of(folder, target)], vec)
    assert store.embedded_keys("d") == ["import:mine"]
    assert store.encoder_spec("import:mine")["dim"] == 3


def test_unmatched_ids_are_reported_and_the_rest_imported(ingested, tmp_path: Path) -> None:
    store, folder, _ = ingested
    ids = ["cats/cat_0.png", "nope.png", "birds/bird_9.png", "bird_1"]
    vectors = vectors_for(4)
    report = import_embeddings(store, write_csv(tmp_path / "v.csv", ids, vectors), "d", "partial")
    assert report.unmatched == ["nope.png", "birds/bird_9.png"]
    assert report.imported == 2
    got = stored(store, "import:partial")
    assert np.array_equal(got[hash_of(folder, "cats/cat_0.png")], vectors[0])
    assert np.array_equal(got[hash_of(folder, "birds/bird_1.png")], vectors[3])


def test_no_matching_id_is_an_error_naming_an_id(ingested, tmp_path: Path) -> None:
    store, _, _ = ingested
    with pytest.raises(ImportFormatError, match="None of the 2 ids.*'x.png'"):
        import_embeddings(store, write_csv(tmp_path / "v.csv", ["x.png", "y.png"], vectors_for(2)), "d", "none")
    assert store.encoder_spec("import:none") is None


def test_ambiguous_names_do_not_match_but_same_bytes_do(ingested, tmp_path: Path) -> None:
    store, folder, _ = ingested
    write_file(folder.root, "birds/cat_0.png", png_bytes(777))  # a second, different cat_0.png
    shared = png_bytes(888)
    write_file(folder.root, "cats/twin.png", shared)  # one image at two paths
    write_file(folder.root, "dogs/twin.png", shared)
    scan = images.scan(folder.root)
    store.ingest("d", scan.root, scan.records, scan.skipped)
    ids = ["cat_0.png", "cat_0", "twin.png", "birds/cat_0.png"]
    vectors = vectors_for(4)
    report = import_embeddings(store, write_csv(tmp_path / "v.csv", ids, vectors), "d", "amb")
    assert report.unmatched == ["cat_0.png", "cat_0"]
    got = stored(store, "import:amb")
    assert np.array_equal(got[images.content_hash(shared)], vectors[2])
    assert np.array_equal(got[images.content_hash(png_bytes(777))], vectors[3])
    assert len(got) == 2


def test_numeric_looking_ids_stay_text(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "numbered"
    data = {f"{i:04d}.png": png_bytes(50 + i) for i in range(3)}
    for rel, raw in data.items():
        write_file(root, rel, raw)
    scan = images.scan(root)
    store.ingest("n", scan.root, scan.records, scan.skipped)
    vectors = vectors_for(3)
    report = import_embeddings(store, write_csv(tmp_path / "v.csv", ["0000", "0001", "0002"], vectors), "n", "num")
    assert report.unmatched == [] and report.imported == 3
    got = stored(store, "import:num", "n")
    for i, rel in enumerate(sorted(data)):
        assert np.array_equal(got[images.content_hash(data[rel])], vectors[i])


def test_pandas_index_column_is_not_a_dimension(ingested, tmp_path: Path) -> None:
    store, folder, _ = ingested
    ids = ["cats/cat_0.png", "dogs/dog_0.png"]
    vectors = vectors_for(2, dim=4)
    report = import_embeddings(store, write_csv(tmp_path / "v.csv", ids, vectors, index=True), "d", "indexed")
    assert report.dim == 4
    assert np.array_equal(stored(store, "import:indexed")[hash_of(folder, "dogs/dog_0.png")], vectors[1])


def test_nan_row_is_rejected_by_name_and_nothing_is_written(ingested, tmp_path: Path) -> None:
    store, _, _ = ingested
    ids = ["cats/cat_0.png", "cats/cat_1.png", "dogs/dog_1.png"]
    vectors = vectors_for(3)
    vectors[2, 1] = np.nan
    with pytest.raises(ImportFormatError, match=r"row 2 \('dogs/dog_1.png'\).*NaN"):
        import_embeddings(store, write_csv(tmp_path / "v.csv", ids, vectors), "d", "nan")
    vectors[2, 1] = np.inf
    with pytest.raises(ImportFormatError, match="dogs/dog_1.png"):
        import_embeddings(store, write_csv(tmp_path / "w.csv", ids, vectors), "d", "nan")
    assert store.encoder_spec("import:nan") is None
    assert store.count_embeddings("import:nan") == 0


def test_dimension_mismatch_with_an_existing_import_is_rejected(ingested, tmp_path: Path) -> None:
    store, folder, _ = ingested
    first = vectors_for(2, dim=3)
    import_embeddings(store, write_csv(tmp_path / "a.csv", ["cat_0", "cat_1"], first), "d", "same")
    with pytest.raises(ImportFormatError, match="already holds 3-d vectors; these are 5-d"):
        import_embeddings(store, write_csv(tmp_path / "b.csv", ["dog_0", "dog_1"], vectors_for(2, dim=5)), "d", "same")
    got = stored(store, "import:same")
    assert len(got) == 2 and np.array_equal(got[hash_of(folder, "cats/cat_1.png")], first[1])
    # Same width under the same name adds the new images.
    more = vectors_for(2, dim=3, seed=9)
    report = import_embeddings(store, write_csv(tmp_path / "c.csv", ["dog_0", "dog_1"], more), "d", "same")
    assert report.imported == 2 and len(stored(store, "import:same")) == 4


def test_same_image_twice_must_agree(ingested, tmp_path: Path) -> None:
    store, folder, _ = ingested
    vectors = vectors_for(3)
    ids = ["cats/cat_0.png", "cat_0", "dog_0"]
    with pytest.raises(ImportFormatError, match=r"rows 0 \('cats/cat_0.png'\) and 1 \('cat_0'\)"):
        import_embeddings(store, write_csv(tmp_path / "v.csv", ids, vectors), "d", "twice")
    vectors[1] = vectors[0]
    report = import_embeddings(store, write_csv(tmp_path / "w.csv", ids, vectors), "d", "twice")
    assert report.imported == 2
    assert np.array_equal(stored(store, "import:twice")[hash_of(folder, "cats/cat_0.png")], vectors[0])


def test_npz_with_more_ids_than_vectors_is_rejected(ingested, tmp_path: Path) -> None:
    store, _, _ = ingested
    path = tmp_path / "v.npz"
    np.savez(path, ids=np.array(["cat_0", "cat_1", "cat_2"]), vectors=vectors_for(2))
    with pytest.raises(ImportFormatError, match="3 ids but 2 vectors"):
        import_embeddings(store, path, "d", "short")


def test_ragged_list_column_is_a_format_error(ingested, tmp_path: Path) -> None:
    store, _, _ = ingested
    path = tmp_path / "v.parquet"
    pd.DataFrame({"id": ["cat_0", "cat_1"], "vector": [[1.0, 2.0], [1.0, 2.0, 3.0]]}).to_parquet(path)
    with pytest.raises(ImportFormatError, match="different lengths"):
        import_embeddings(store, path, "d", "ragged")


def test_json_list_column_in_csv(ingested, tmp_path: Path) -> None:
    store, folder, _ = ingested
    path = tmp_path / "v.csv"
    pd.DataFrame({"path": ["cats/cat_0.png", "birds/bird_0.png"], "embedding": ["[0.5, -1.25]", "[2.0, 3.0]"]}).to_csv(
        path, index=False
    )
    report = import_embeddings(store, path, "d", "json")
    assert report.dim == 2
    got = stored(store, "import:json")
    assert got[hash_of(folder, "birds/bird_0.png")].tolist() == [2.0, 3.0]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p.with_suffix(".txt").write_text("x"), "unsupported format"),
        (
            lambda p: pd.DataFrame({"name": ["cat_0"], "f0": [1.0]}).to_csv(p.with_suffix(".csv"), index=False),
            "--id-column",
        ),
        (
            lambda p: pd.DataFrame({"id": ["cat_0"], "label": ["x"]}).to_csv(p.with_suffix(".csv"), index=False),
            "no numeric columns",
        ),
        (lambda p: np.save(p.with_suffix(".npy"), vectors_for(3)), "has 3 rows but 'd' has 8 paths"),
        (lambda p: np.savez(p.with_suffix(".npz"), vectors=vectors_for(3)), "needs arrays 'ids' and 'vectors'"),
        (lambda p: p.with_suffix(".parquet").write_bytes(b"not parquet"), "Could not read"),
    ],
    ids=["txt", "no-id-column", "no-numbers", "npy-row-count", "npz-arrays", "broken-parquet"],
)
def test_unusable_files_give_format_errors(ingested, tmp_path: Path, setup, message: str) -> None:
    store, _, _ = ingested
    base = tmp_path / "bad" / "file"
    base.parent.mkdir()
    setup(base)
    (path,) = list(base.parent.iterdir())
    with pytest.raises(ImportFormatError, match=message):
        import_embeddings(store, path, "d", "bad")


def test_bad_names_and_missing_things(ingested, tmp_path: Path) -> None:
    store, _, _ = ingested
    path = write_csv(tmp_path / "v.csv", ["cat_0"], vectors_for(1))
    with pytest.raises(ImportFormatError, match="does not exist"):
        import_embeddings(store, tmp_path / "missing.csv", "d", "x")
    with pytest.raises(ImportFormatError, match="--encoder-name"):
        import_embeddings(store, path, "d", "has space")
    with pytest.raises(DatasetNotFoundError):
        import_embeddings(store, path, "nope", "x")


def test_reimport_under_the_same_name_replaces_vectors(tmp_path: Path) -> None:
    """A second import with new numbers must not silently keep the old ones."""
    import numpy as np

    from conftest import build_folder
    from core.datasets import ingest_path
    from core.importer import import_embeddings
    from core.store import Store

    root = tmp_path / "imgs"
    build_folder(root)
    store = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    ingest_path(store, "d", root)
    paths = store.dataset_paths("d")["rel_path"].tolist()
    first = np.arange(len(paths) * 3, dtype=np.float32).reshape(-1, 3)
    np.savez(tmp_path / "v1.npz", ids=np.array(paths), vectors=first)
    np.savez(tmp_path / "v2.npz", ids=np.array(paths), vectors=first + 100)
    assert import_embeddings(store, tmp_path / "v1.npz", "d", "mine").imported == len(paths)
    report = import_embeddings(store, tmp_path / "v2.npz", "d", "mine")
    assert report.imported == len(paths)
    frame, stored = store.load_embeddings("d", "import:mine")
    order = [paths.index(p) for p in frame["rel_path"]]
    np.testing.assert_array_equal(stored, first[order] + 100)
