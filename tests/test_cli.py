"""Tests for `python -m core …`, each command run as a real subprocess.

A module-scoped workspace (its own REPLENS_DB / REPLENS_CACHE) is ingested and embedded once;
tests that only read it share it. In-process checks open the same database and close it
again before the next subprocess needs the file.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import build_folder, offline_hub_env, run_cli, write_file
from core import bias, images
from core.encoders import list_encoders, load_encoder
from core.store import Store

LAYOUT = {
    "cats": ("cat_0", "cat_1", "cat_2"),
    "dogs": ("dog_0", "dog_1", "dog_2"),
    "birds": ("bird_0", "bird_1"),
    "fish": ("fish_0", "fish_1"),
}
PIXELS_KEY = "pixels@v1/pixels/none"


@dataclass
class Workspace:
    env: dict[str, str]
    root: Path
    files: dict[str, bytes]
    ingest: dict
    embed_first: dict
    embed_second: dict

    @property
    def db(self) -> Path:
        return Path(self.env["REPLENS_DB"])

    def run(self, *args: str):
        return run_cli(list(args), self.env)


@contextmanager
def open_store(db: Path, cache: Path | None = None) -> Iterator[Store]:
    store = Store(db, cache or db.parent / "cache")
    try:
        yield store
    finally:
        store.close()


def one_json(proc) -> object:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # --json prints exactly one JSON value
    return json.loads(lines[0])


def assert_one_line_error(proc, *fragments: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.stdout == ""
    return lines[0]


def pixel_reference(root: Path, rels: list[str]) -> np.ndarray:
    enc = load_encoder("pixels", "cpu")
    return enc.embed_batch(np.stack([enc.preprocess(Image.open(root / r).convert("RGB")) for r in rels]))


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    base = tmp_path_factory.mktemp("cli")
    env = {
        "REPLENS_DB": str(base / "db" / "replens.duckdb"),
        "REPLENS_CACHE": str(base / "cache"),
        **offline_hub_env(base),
    }
    root = base / "images"
    files = build_folder(root, LAYOUT, size=32)
    write_file(root, "cats/broken.png", b"\x89PNG\r\n\x1a\n but then nothing")
    ingest = one_json(run_cli(["ingest", str(root), "--dataset", "d", "--json"], env))
    first = one_json(run_cli(["embed", "--dataset", "d", "--encoder", "pixels", "--device", "cpu", "--json"], env))
    second = one_json(run_cli(["embed", "--dataset", "d", "--encoder", "pixels", "--device", "cpu", "--json"], env))
    return Workspace(env, root, files, ingest, first, second)


# --------------------------------------------------------------------------- listing


def test_encoders_json_lists_every_registered_encoder(cli) -> None:
    listed = one_json(cli(["encoders", "--json"]))
    specs = list_encoders()
    assert [e["id"] for e in listed] == [s.id for s in specs]
    for entry, spec in zip(listed, specs):
        assert {"id", "family", "dim", "needs_network", "has_text_tower"} <= entry.keys()
        assert (entry["family"], entry["dim"], entry["needs_network"], entry["has_text_tower"]) == (
            spec.family,
            spec.dim,
            spec.needs_network,
            spec.has_text_tower,
        )
    by_id = {e["id"]: e for e in listed}
    assert by_id["pixels"]["dim"] == 768 and by_id["pixels"]["needs_network"] is False
    assert by_id["clip-vitb32"]["has_text_tower"] is True


def test_datasets_json(ws: Workspace) -> None:
    listed = one_json(ws.run("datasets", "--json"))
    assert [d["dataset"] for d in listed] == ["d"]
    row = listed[0]
    assert (row["n_paths"], row["n_images"], row["n_skipped"]) == (10, 10, 1)
    assert row["sources"] == str(ws.root.resolve())


# --------------------------------------------------------------------------- ingest / embed


def test_ingest_json_reports_counts_and_skipped_files(ws: Workspace) -> None:
    payload = ws.ingest
    assert {"dataset", "added", "duplicates", "skipped"} <= payload.keys()
    assert (payload["dataset"], payload["added"], payload["duplicates"]) == ("d", 10, 0)
    assert len(payload["skipped"]) == 1
    skipped = payload["skipped"][0]
    assert set(skipped) == {"path", "reason"}
    assert skipped["path"] == "cats/broken.png" and skipped["reason"]
    with open_store(ws.db) as store:
        paths = store.dataset_paths("d")
        assert sorted(paths["rel_path"]) == sorted(ws.files)
        assert store.skipped_files("d")["rel_path"].tolist() == ["cats/broken.png"]
        captions = store.dataset_images("d").set_index("rel_path")["caption"]
        assert captions["cats/cat_0.png"] == "a grey cat"
    thumbs = list((Path(ws.env["REPLENS_CACHE"]) / "thumbs").rglob("*.webp"))
    assert len(thumbs) == 10


def test_embed_json_then_everything_cached(ws: Workspace) -> None:
    first, second = ws.embed_first, ws.embed_second
    keys = {"dataset", "encoder", "encoded", "cached", "failed", "seconds", "images_per_s"}
    assert keys <= first.keys() and keys <= second.keys()
    assert (first["dataset"], first["encoder"], first["encoded"], first["cached"], first["failed"]) == (
        "d",
        PIXELS_KEY,
        10,
        0,
        [],
    )
    assert (second["encoded"], second["cached"], second["failed"]) == (0, 10, [])
    assert first["seconds"] >= 0 and first["images_per_s"] >= 0
    with open_store(ws.db) as store:
        imgs, matrix = store.load_embeddings("d", PIXELS_KEY)
    assert np.array_equal(matrix, pixel_reference(ws.root, imgs["rel_path"].tolist()))


def test_ingest_and_embed_a_zip(cli, tmp_path: Path, image_folder, isolated_env) -> None:
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for rel, data in image_folder.files.items():
            zf.writestr(rel, data)
        zf.writestr("dogs/dog_1.txt", "a happy dog")
    payload = one_json(cli(["ingest", str(archive), "--dataset", "z", "--json", "--no-thumbnails"]))
    assert (payload["added"], payload["skipped"]) == (8, [])
    assert payload["source"] == str(archive.resolve())
    report = one_json(cli(["embed", "--dataset", "z", "--encoder", "pixels", "--device", "cpu", "--json"]))
    assert (report["encoded"], report["failed"]) == (8, [])
    with open_store(Path(isolated_env["REPLENS_DB"])) as store:
        imgs, matrix = store.load_embeddings("z", PIXELS_KEY)
        assert imgs.set_index("rel_path").loc["dogs/dog_1.png", "caption"] == "a happy dog"
    assert np.array_equal(matrix, pixel_reference(image_folder.root, imgs["rel_path"].tolist()))
    assert not (Path(isolated_env["REPLENS_CACHE"]) / "thumbs").exists()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["embed", "--dataset", "d", "--encoder", "no-such-encoder", "--device", "cpu"],
            ["Unknown encoder 'no-such-encoder'", "python -m core encoders"],
        ),
        (
            ["embed", "--dataset", "nope", "--encoder", "pixels", "--device", "cpu"],
            ["No dataset named 'nope'", "python -m core ingest PATH --dataset nope"],
        ),
        (
            [
                "bias",
                "--dataset",
                "d",
                "--encoder",
                "pixels",
                "--x",
                "cats",
                "--y",
                "dogs",
                "--a",
                "birds",
                "--b",
                "whales",
            ],
            ["set B (folder 'whales') has no images", "birds, cats, dogs, fish"],
        ),
        (
            ["export", "--dataset", "d", "--encoder", "random-resnet18", "--out", "x.parquet"],
            ["no embeddings for 'random-resnet18'", PIXELS_KEY],
        ),
        (["embed", "--dataset", "two\nlines", "--encoder", "pixels"], ["No dataset named 'two\\nlines'"]),
    ],
    ids=["unknown-encoder", "unknown-dataset", "bias-unknown-folder", "export-not-embedded", "multi-line-message"],
)
def test_user_errors_are_one_line_without_traceback(ws: Workspace, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(ws.run(*args), *fragments)


def test_nonexistent_path_is_one_line_error(cli, tmp_path: Path) -> None:
    assert_one_line_error(cli(["ingest", str(tmp_path / "missing"), "--dataset", "d"]), "does not exist")


def test_hub_encoder_offline_is_one_line_error(ws: Workspace) -> None:
    line = assert_one_line_error(ws.run("embed", "--dataset", "d", "--encoder", "dinov2-vits14", "--device", "cpu"))
    assert "Could not load dinov2-vits14" in line and "network" in line and "pixels" in line


def test_filesystem_problems_are_one_line_errors(ws: Workspace, cli, tmp_path: Path) -> None:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    # --out inside something that is a file, not a folder
    assert_one_line_error(
        ws.run("export", "--dataset", "d", "--encoder", "pixels", "--out", str(a_file / "o.parquet")), str(a_file)
    )
    # REPLENS_DB pointing at a file that is not a DuckDB database
    assert_one_line_error(cli(["datasets"], {"REPLENS_DB": str(a_file)}), "not a valid DuckDB database")


def test_locked_database_is_one_line_error(cli, store: Store, db_file: Path, tmp_path: Path) -> None:
    env = {"REPLENS_DB": str(db_file), "REPLENS_CACHE": str(tmp_path / "locked-cache"), "REPLENS_DB_LOCK_TIMEOUT": "1"}
    with store.connected():  # the test process holds the file open for the whole block
        store.ingest("held", "/src", [], [])
        line = assert_one_line_error(cli(["datasets", "--json"], env), str(db_file), "another process")
    assert "REPLENS_DB" in line


def test_export_writes_parquet_with_the_stored_vectors(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "export" / "d.parquet"
    payload = one_json(ws.run("export", "--dataset", "d", "--encoder", "pixels", "--out", str(out), "--json"))
    assert (payload["encoder"], payload["rows"], payload["out"]) == (PIXELS_KEY, 10, str(out.resolve()))
    table = pq.read_table(out).to_pandas()
    with open_store(ws.db) as store:
        imgs, matrix = store.load_embeddings("d", PIXELS_KEY)
    expected = dict(zip(imgs["content_hash"], matrix))
    assert len(table) == 10
    for _, row in table.iterrows():
        assert np.array_equal(np.asarray(row["vector"], np.float32), expected[row["content_hash"]])
        assert images.content_hash(ws.files[row["rel_path"]]) == row["content_hash"]


def _write_import(fmt: str, path: Path, rels: list[str], vectors: np.ndarray) -> list[str]:
    """Write ``vectors`` for ``rels`` in ``fmt``; returns extra CLI args."""
    if fmt == "csv":
        frame = pd.DataFrame(vectors, columns=[f"d{i}" for i in range(vectors.shape[1])])
        frame.insert(0, "image", [r.rsplit("/", 1)[-1] for r in rels])  # file names, custom id column
        frame.to_csv(path, index=False)
        return ["--id-column", "image"]
    if fmt == "parquet":
        pd.DataFrame({"rel_path": rels, "vector": list(vectors)}).to_parquet(path)
    elif fmt == "npy":
        np.save(path, vectors)
    elif fmt == "npz":
        np.savez(path, ids=np.array(rels), vectors=vectors)
    return []


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npy", "npz"])
def test_import_embeddings_round_trips(ws: Workspace, tmp_path: Path, fmt: str) -> None:
    with open_store(ws.db) as store:
        rels = store.dataset_paths("d")["rel_path"].tolist()  # the order a .npy must follow
    dim = 6
    vectors = np.random.default_rng(len(fmt)).standard_normal((len(rels), dim)).astype(np.float32)
    path = tmp_path / f"vectors.{fmt}"
    extra = _write_import(fmt, path, rels, vectors)
    report = one_json(
        ws.run("import-embeddings", str(path), "--dataset", "d", "--encoder-name", f"rt-{fmt}", "--json", *extra)
    )
    assert report == {"dataset": "d", "encoder": f"import:rt-{fmt}", "imported": len(rels), "unmatched": [], "dim": dim}
    with open_store(ws.db) as store:
        imgs, matrix = store.load_embeddings("d", f"import:rt-{fmt}")
    got = dict(zip(imgs["rel_path"], matrix))
    for rel, vec in zip(rels, vectors):
        assert np.array_equal(got[rel], vec)


# --------------------------------------------------------------------------- bias


def test_bias_matches_association_test_on_the_same_vectors(ws: Workspace) -> None:
    payload = one_json(
        ws.run(
            "bias",
            "--dataset",
            "d",
            "--encoder",
            "pixels",
            "--x",
            "cats",
            "--y",
            "dogs",
            "--a",
            "birds",
            "--b",
            "fish",
            "--seed",
            "0",
            "--n-samples",
            "500",
            "--json",
        )
    )
    with open_store(ws.db) as store:
        imgs, matrix = store.load_embeddings("d", PIXELS_KEY)
    folder = imgs["rel_path"].str.split("/").str[0].to_numpy()
    sets = {k: matrix[folder == name] for k, name in (("x", "cats"), ("y", "dogs"), ("a", "birds"), ("b", "fish"))}
    expected = bias.association_test(sets["x"], sets["y"], sets["a"], sets["b"], n_samples=500, seed=0)
    assert payload["encoder"] == PIXELS_KEY
    assert {k: v["n"] for k, v in payload["sets"].items()} == {"x": 3, "y": 3, "a": 2, "b": 2}
    assert payload["effect_size"] == pytest.approx(expected.effect_size, rel=1e-9, abs=1e-12)
    assert payload["p_value"] == pytest.approx(expected.p_value, rel=1e-9)
    assert payload["exact"] == expected.exact and payload["n_permutations"] == expected.n_permutations
    low, high = payload["ci95"]
    assert low <= high
