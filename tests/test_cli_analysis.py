"""Tests for the analysis CLI: cluster, cluster-runs, labels, diagnostics.

Most run ``core.cli.main`` in-process (fast); one goes through ``python -m core`` for real.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Folder
from core import config, images
from core.cli import main
from core.cluster import load_run
from core.extract import embed_dataset
from core.store import Store


@pytest.fixture
def env_store(image_folder: Folder, pixels_encoder) -> str:
    """The CLI's own database (REPLENS_DB) with the 8-image folder ingested as 'd' and
    embedded with the pixels baseline; returns the encoder key. Closed before the CLI runs."""
    store = Store(config.db_path(), config.cache_dir())
    scan = images.scan(image_folder.root, cache_dir=store.cache_dir)
    store.ingest("d", scan.root, scan.records, scan.skipped)
    embed_dataset(store, "d", pixels_encoder, workers=1)
    store.close()
    return pixels_encoder.key


def run_json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cluster_prints_the_documented_json_and_stores_the_run(env_store: str, capsys) -> None:
    out = run_json(
        capsys, "cluster", "--dataset", "d", "--encoder", "pixels", "--method", "kmeans", "--k", "3", "--seed", "1"
    )
    assert {"run_id", "n_clusters", "noise_fraction", "metrics", "assignments"} <= set(out)
    assert out["n_clusters"] == 3 and out["noise_fraction"] == 0.0 and out["encoder"] == env_store
    assert out["params"]["n_clusters"] == 3 and out["params"]["random_state"] == 1
    assert {"silhouette", "ari", "nmi", "hungarian_accuracy", "sizes"} <= set(out["metrics"])
    paths = [a["path"] for a in out["assignments"]]
    assert sorted(paths) == sorted(
        f"{label}/{stem}.png"
        for label, stems in {
            "cats": ("cat_0", "cat_1", "cat_2"),
            "dogs": ("dog_0", "dog_1", "dog_2"),
            "birds": ("bird_0", "bird_1"),
        }.items()
        for stem in stems
    )
    store = Store(config.db_path(), config.cache_dir())
    try:
        run = load_run(store, out["run_id"])
        frame = store.dataset_images("d").set_index("rel_path")
        stored = dict(zip(run.hashes, run.labels.tolist()))
        assert all(stored[frame.loc[a["path"], "content_hash"]] == a["cluster"] for a in out["assignments"])
    finally:
        store.close()
    runs = run_json(capsys, "cluster-runs", "--dataset", "d")
    assert [r["run_id"] for r in runs] == [out["run_id"]] and runs[0]["metrics"]["n_clusters"] == 3


@pytest.mark.parametrize(
    "argv",
    [
        ("--method", "hdbscan", "--reduce", "none", "--min-cluster-size", "2"),
        ("--method", "leiden", "--resolution", "1.0"),
        ("--method", "agglomerative", "--k-selection", "eigengap", "--reduce", "none"),
    ],
)
def test_every_method_runs_from_the_cli(env_store: str, capsys, argv: tuple[str, ...]) -> None:
    out = run_json(capsys, "cluster", "--dataset", "d", "--encoder", env_store, *argv)
    assert len(out["assignments"]) == 8
    assert out["n_clusters"] == len({a["cluster"] for a in out["assignments"]} - {-1})


def test_cluster_usage_errors_exit_2_with_one_line(env_store: str, capsys) -> None:
    assert main(["cluster", "--dataset", "d", "--encoder", "pixels", "--method", "hdbscan", "--k", "3"]) == 2
    assert "error: --k applies to kmeans and agglomerative, not hdbscan" in capsys.readouterr().err
    assert main(["cluster", "--dataset", "d", "--encoder", "pixels", "--method", "kmeans", "--k", "30"]) == 2
    assert "n_samples=8 should be >= n_clusters=30" in capsys.readouterr().err
    assert main(["labels", "--run", "nope", "--method", "text"]) == 2
    assert "No cluster run 'nope'" in capsys.readouterr().err
    assert main(["cluster", "--dataset", "d", "--encoder", "dino-vits16", "--method", "kmeans"]) == 2
    assert "python -m core embed --dataset d --encoder dino-vits16" in capsys.readouterr().err


def test_labels_text_and_visual(env_store: str, capsys) -> None:
    out = run_json(capsys, "cluster", "--dataset", "d", "--encoder", "pixels", "--method", "kmeans", "--k", "2")
    text = run_json(capsys, "labels", "--run", out["run_id"], "--method", "text")
    assert text["method"] == "text" and text["labels"]
    for label in text["labels"]:
        assert label["label"] == label["candidates"][0]["word"] and label["candidates"][0]["z"] > 0
    visual = run_json(capsys, "labels", "--run", out["run_id"], "--method", "visual")
    assert {lab["cluster"] for lab in visual["labels"]} == {0, 1}
    assert all(lab["method"] == "visual" and lab["label"] for lab in visual["labels"])
    assert main(["labels", "--run", out["run_id"], "--method", "clip"]) == 2
    assert "--encoder clip-vitb32" in capsys.readouterr().err
    assert main(["labels", "--run", out["run_id"], "--method", "text", "--words", "x"]) == 2


def test_diagnostics_command(env_store: str, capsys) -> None:
    out = run_json(capsys, "diagnostics", "--dataset", "d")
    (row,) = out["encoders"]
    assert row["encoder"] == env_store and row["n_images"] == 8
    assert {"rankme", "uniformity", "mean_lid", "hubness", "knn_accuracy", "linear_probe_mean"} <= set(row)


def test_python_dash_m_core_cluster_for_real(env_store: str, cli) -> None:
    proc = cli(["cluster", "--dataset", "d", "--encoder", "pixels", "--method", "kmeans", "--k", "2", "--json"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert out["n_clusters"] == 2 and len(out["assignments"]) == 8
    human = cli(["cluster", "--dataset", "d", "--encoder", "pixels", "--method", "kmeans", "--k", "2"])
    assert human.returncode == 0 and "2 clusters" in human.stdout and "vs folders: ARI" in human.stdout


def open_map(encoder_key: str) -> Any:
    """The Map page of dataset d under ``encoder_key``, in a new AppTest session."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.session_state["rl_dataset"], at.session_state["rl_encoder_key"] = "d", encoder_key
    at.run()
    at.switch_page("pages/map.py")
    at.run()
    assert not at.exception
    return at


def test_project_caches_the_layout_the_map_page_opens_with(env_store: str, capsys) -> None:
    """`make demo` runs `project` so the first Map visit needs no UMAP: the CLI's default
    layout must have the very cache key the page's default widgets produce."""
    first = run_json(capsys, "project", "--dataset", "d", "--encoder", "pixels")
    assert first["cached"] is False and first["method"] == "umap" and first["n_points"] == 8
    assert first["params"] == {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "random_state": 42}
    again = run_json(capsys, "project", "--dataset", "d", "--encoder", "pixels")
    assert again["cached"] is True and again["projection_key"] == first["projection_key"]

    at = open_map(env_store)
    assert any("loaded from cache" in c.value for c in at.caption), [c.value for c in at.caption]
    store = Store(config.db_path(), config.cache_dir())
    try:
        hashes, coords = store.load_projection(first["projection_key"])
    finally:
        store.close()
    from ui.bigmap.sent import sent_maps

    (sent,) = sent_maps(at)
    shown = sorted(round(float(x), 4) for x in sent.coords[:, 0])
    assert shown == sorted(round(float(x), 4) for x in coords[:, 0])


def test_project_above_the_umap_limit_makes_the_sampled_layout_the_map_asks_for(
    env_store: str, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import reduce

    monkeypatch.setattr(reduce, "LARGE_MAP_THRESHOLD", 4)  # d has 8 images
    assert main(["project", "--dataset", "d", "--encoder", "pixels", "--json"]) == 0
    printed = capsys.readouterr()
    out = json.loads(printed.out)
    assert out["method"] == "umap-sampled" and out["params"]["sample_size"] == 20_000 and out["cached"] is False
    assert "8 points is more than a full UMAP fit handles" in printed.err
    at = open_map(env_store)
    captions = [c.value for c in at.caption]
    assert any("UMAP (sampled)" in c and "loaded from cache" in c for c in captions), captions
    sized = run_json(
        capsys, "project", "--dataset", "d", "--encoder", "pixels", "--method", "umap-sampled", "--sample-size", "1000"
    )
    assert sized["params"]["sample_size"] == 1_000 and sized["projection_key"] != out["projection_key"]


def test_project_options_and_errors(env_store: str, capsys) -> None:
    pca = run_json(capsys, "project", "--dataset", "d", "--encoder", "pixels", "--method", "pca")
    assert pca["params"] == {"normalize": True, "random_state": 0} and pca["cached"] is False  # unit vectors
    umap = run_json(
        capsys,
        "project",
        "--dataset",
        "d",
        "--encoder",
        "pixels",
        "--n-neighbors",
        "4",
        "--min-dist",
        "0.0",
        "--seed",
        "7",
    )
    assert umap["params"] == {"n_neighbors": 4, "min_dist": 0.0, "metric": "cosine", "random_state": 7}
    assert main(["project", "--dataset", "d", "--encoder", "pixels", "--method", "pca", "--n-neighbors", "5"]) == 2
    assert "--n-neighbors applies to umap, umap-sampled, not pca" in capsys.readouterr().err
    assert main(["project", "--dataset", "d", "--encoder", "pixels", "--metric", "hamming"]) == 2
    assert "UMAP metric 'hamming' is not offered" in capsys.readouterr().err


def test_the_same_clustering_twice_reuses_the_stored_run(env_store: str, capsys: pytest.CaptureFixture) -> None:
    args = ("cluster", "--dataset", "d", "--encoder", "pixels", "--method", "kmeans", "--k", "2")
    first = run_json(capsys, *args)
    again = run_json(capsys, *args)
    other = run_json(capsys, *args[:-1], "3")
    assert not first["reused"] and again["reused"] and again["run_id"] == first["run_id"]
    assert again["assignments"] == first["assignments"]
    assert not other["reused"] and other["run_id"] != first["run_id"]
