"""Battery runner: sets from folders, vectors from the store, Holm across the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import bias
from core.bias_runs import BatteryTest, folder_hashes, folder_options, folder_test, run_battery
from core.datasets import ingest_path
from core.errors import InvalidInputError
from core.store import Store

FOLDERS = {"flowers": 5, "insects": 5, "pleasant/warm": 4, "unpleasant": 6}


@pytest.fixture()
def store_with_two_encoders(tmp_path: Path) -> tuple[Store, dict[str, np.ndarray]]:
    root = tmp_path / "stimuli"
    seed = 0
    for folder, n in FOLDERS.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng(seed)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
            seed += 1
    store = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    ingest_path(store, "stim", root)
    hashes = store.dataset_images("stim")["content_hash"].tolist()
    vectors = {}
    for key, dim, shift in (("enc-a@v/last/cls", 8, 0.0), ("enc-b@v/last/cls", 5, 3.0)):
        store.register_encoder(key, key.split("@")[0], "v", "last", "cls", dim, {"id": key})
        x = np.random.default_rng(dim).normal(shift, 1.0, (len(hashes), dim)).astype(np.float32)
        store.write_embeddings(key, hashes, x)
        vectors[key] = x
    return store, vectors


def test_battery_matches_direct_calls(store_with_two_encoders: tuple[Store, dict[str, np.ndarray]]) -> None:
    store, vectors = store_with_two_encoders
    images = store.dataset_images("stim")
    tests = [
        folder_test(images, "Insect-Flower", "flowers", "insects", "pleasant", "unpleasant"),
        folder_test(images, "Swapped", "insects", "flowers", "pleasant", "unpleasant"),
    ]
    result = run_battery(store, "stim", list(vectors), tests, n_samples=500, seed=1)
    assert len(result.table) == 4
    row_of = {h: i for i, h in enumerate(images["content_hash"])}
    for _, row in result.table.iterrows():
        test = next(t for t in tests if t.name == row["test"])
        x = vectors[row["encoder"]]
        sets = {r: x[[row_of[h] for h in hs]] for r, hs in test.sets().items()}
        direct = bias.association_test(sets["x"], sets["y"], sets["a"], sets["b"], n_samples=500, seed=1)
        assert row["effect_size"] == pytest.approx(direct.effect_size, abs=1e-12)
        assert row["p_value"] == direct.p_value and row["exact"] == direct.exact
        assert (row["n_x"], row["n_y"], row["n_a"], row["n_b"]) == (5, 5, 4, 6)
    np.testing.assert_allclose(result.table["p_holm"], bias.holm_correction(result.table["p_value"]))
    # Swapping X and Y negates d for the same encoder.
    by = result.table.set_index(["test", "encoder"])["effect_size"]
    for key in vectors:
        assert by[("Swapped", key)] == pytest.approx(-by[("Insect-Flower", key)], abs=1e-12)


def test_drivers_are_largest_abs_scores(store_with_two_encoders: tuple[Store, dict[str, np.ndarray]]) -> None:
    store, vectors = store_with_two_encoders
    images = store.dataset_images("stim")
    test = folder_test(images, "t", "flowers", "insects", "pleasant", "unpleasant")
    outcome = run_battery(store, "stim", ["enc-a@v/last/cls"], [test], n_samples=200, n_drivers=3).outcomes[0]
    all_scores = np.concatenate([outcome.result.x_scores, outcome.result.y_scores])
    expected = np.sort(np.abs(all_scores))[::-1][:3]
    np.testing.assert_allclose(np.abs(outcome.drivers["score"]), expected)
    assert set(outcome.drivers["set"]) <= {"X", "Y"}


def test_nested_folder_selection_and_errors(store_with_two_encoders: tuple[Store, dict[str, np.ndarray]]) -> None:
    store, _ = store_with_two_encoders
    images = store.dataset_images("stim")
    assert len(folder_hashes(images, "pleasant")) == 4
    assert len(folder_hashes(images, "pleasant/warm")) == 4
    assert folder_hashes(images, "warm/pleasant") == ()
    with pytest.raises(InvalidInputError, match="set Y"):
        folder_test(images, "t", "flowers", "nothing-here", "pleasant", "unpleasant")
    unknown = BatteryTest(
        "t",
        ("0" * 32,),
        folder_hashes(images, "insects"),
        folder_hashes(images, "pleasant"),
        folder_hashes(images, "unpleasant"),
    )
    with pytest.raises(InvalidInputError, match="no embedding"):
        run_battery(store, "stim", ["enc-a@v/last/cls"], [unknown])


def test_folder_options_lists_nested_paths(store_with_two_encoders: tuple[Store, dict[str, np.ndarray]]) -> None:
    store, _ = store_with_two_encoders
    assert folder_options(store.dataset_images("stim")) == [
        "flowers",
        "insects",
        "pleasant",
        "pleasant/warm",
        "unpleasant",
    ]


def test_cluster_sets_follow_the_stored_run(store_with_two_encoders: tuple[Store, dict[str, np.ndarray]]) -> None:
    from core.bias_runs import cluster_sets

    store, _ = store_with_two_encoders
    hashes = store.dataset_images("stim")["content_hash"].tolist()
    labels = np.array([i % 3 - 1 for i in range(len(hashes))])  # clusters -1 (noise), 0, 1
    store.save_cluster_run("run1", "stim", "enc-a@v/last/cls", "kmeans", {}, hashes, labels, {}, 2, 0.33)
    store.set_cluster_label("run1", 0, "round things")
    sets = cluster_sets(store, "run1")
    assert list(sets) == ["cluster 0 · round things", "cluster 1 · unnamed"]
    assert set(sets["cluster 0 · round things"]) == {h for h, c in zip(hashes, labels) if c == 0}
    assert sum(len(v) for v in sets.values()) == int((labels >= 0).sum())
    with pytest.raises(InvalidInputError, match="Clusters page"):
        cluster_sets(store, "missing")


def test_nested_folders_are_distinct_sets_and_overlap_is_refused(
    store_with_two_encoders: tuple[Store, dict[str, np.ndarray]],
) -> None:
    store, _ = store_with_two_encoders
    paths = store.dataset_paths("stim")
    # "warm" is only pleasant/warm: a bare name matches no folder deeper down any more.
    assert folder_hashes(paths, "warm") == ()
    assert len(folder_hashes(paths, "pleasant", subfolders=False)) == 0
    with pytest.raises(InvalidInputError, match="did you mean pleasant/warm"):
        folder_test(paths, "t", "flowers", "insects", "warm", "unpleasant")
    with pytest.raises(InvalidInputError, match=r"A \(folder pleasant \(with sub-folders\)\) and B .* are the same 4"):
        folder_test(paths, "t", "flowers", "insects", "pleasant", "pleasant/warm")
