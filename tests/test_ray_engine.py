"""The ray extraction engine (`embed --engine ray`) on a real local Ray instance with 2 CPU workers.

One Ray instance serves the module (starting one costs seconds); each test embeds the same
generated folder (36 images, two of them broken after the scan) into stores of its own. The
local engine, or an independent Pillow + ``embed_batch`` computation, is the reference.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PYTHON, REPO_ROOT, png_bytes, run_cli, write_file
from core import images
from core.encoders import load_encoder
from core.engines import EngineUnavailableError
from core.engines import ray_engine as engine
from core.engines.ray_engine import ActorFault, embed_dataset_ray, plan_actors
from core.engines.shards import leftover_shards, read_shard, shards_root
from core.errors import EncoderUnavailableError, InvalidInputError
from core.extract import embed_dataset
from core.images import ScanResult
from core.keys import EncoderKey
from core.store import Store

ray = pytest.importorskip("ray", reason="ray is an optional extra (pip install 'replens[scale]')")

BROKEN = "c0/im00.png"  # bytes replaced by text after the scan
GONE = "c1/im01.png"  # deleted after the scan
PIXELS = {"encoder_id": "pixels", "device": "auto"}


@dataclass(frozen=True)
class Corpus:
    root: Path
    scan: ScanResult
    healthy: dict[str, bytes]  # rel_path -> bytes of the files that still decode


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, float]]:
    """A fresh local Ray instance with 2 CPUs (``local``: never another process's cluster)."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 2**20,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """36 distinct PNGs in three folders, scanned; then one is broken and one deleted."""
    root = tmp_path_factory.mktemp("ray-corpus") / "images"
    files = {f"c{i % 3}/im{i:02d}.png": png_bytes(1000 + i) for i in range(36)}
    for rel, data in files.items():
        write_file(root, rel, data)
    scan = images.scan(root)
    write_file(root, BROKEN, "no longer a png")
    (root / GONE).unlink()
    return Corpus(root, scan, {rel: data for rel, data in files.items() if rel not in (BROKEN, GONE)})


def new_store(tmp_path: Path, name: str, corpus: Corpus) -> Store:
    store = Store(tmp_path / name / "replens.duckdb", tmp_path / name / "cache")
    store.ingest("d", corpus.scan.root, corpus.scan.records, corpus.scan.skipped)
    return store


def vectors_by_hash(store: Store, key: str) -> dict[str, np.ndarray]:
    imgs, matrix = store.load_embeddings("d", key)
    return dict(zip(imgs["content_hash"], matrix))


def pixel_reference(corpus: Corpus) -> dict[str, np.ndarray]:
    """Independent of both engines: Pillow opens each healthy file, one embed_batch call."""
    encoder = load_encoder("pixels", "cpu")
    rels = sorted(corpus.healthy)
    arrays = [encoder.preprocess(Image.open(corpus.root / rel).convert("RGB")) for rel in rels]
    vectors = encoder.embed_batch(np.stack(arrays))
    return {images.content_hash(corpus.healthy[rel]): v for rel, v in zip(rels, vectors)}


def embed_failures(store: Store) -> list[tuple[str, str]]:
    skipped = store.skipped_files("d")
    skipped = skipped[skipped["stage"] == "embed"]
    return sorted(zip(skipped["rel_path"], skipped["reason"]))


# --------------------------------------------------------------------------- same vectors as the local engine


def test_ray_and_local_engines_store_the_same_vectors_and_failures(tmp_path: Path, cluster, corpus: Corpus) -> None:
    local, remote = new_store(tmp_path, "local", corpus), new_store(tmp_path, "ray", corpus)
    # precision="auto": resolved once for the cluster by a probe task, then passed to every actor.
    encoder = load_encoder("random-resnet18", "cpu", precision="auto")
    mine = embed_dataset(local, "d", encoder)
    options = {"encoder_id": "random-resnet18", "device": "auto", "precision": "auto"}
    report = embed_dataset_ray(remote, "d", options, actors=2, batch_size=8, chunk_size=10)

    assert report.encoder == mine.encoder == encoder.key
    assert EncoderKey.parse(report.encoder).precision == encoder.precision  # this machine's auto choice
    assert report.encoded == mine.encoded == len(corpus.healthy) == 34
    expected, got = vectors_by_hash(local, mine.encoder), vectors_by_hash(remote, report.encoder)
    assert sorted(got) == sorted(expected) == sorted(images.content_hash(b) for b in corpus.healthy.values())
    # Same decode, preprocessing and precision; only how images are grouped into batches differs.
    rtol = 1e-5 if encoder.precision == "fp32" else 1e-2
    for content_hash, vector in expected.items():
        assert np.allclose(got[content_hash], vector, rtol=rtol, atol=rtol / 10), content_hash
    assert remote.count_embeddings(report.encoder) == 34  # one row per image, no duplicate

    assert embed_failures(remote) == embed_failures(local)
    assert [path for path, _ in embed_failures(remote)] == [BROKEN, GONE]
    assert sorted(f["path"] for f in report.failed) == sorted(f["path"] for f in mine.failed)

    run = remote.runs("embed").iloc[0]
    params, stats = json.loads(run["params"]), json.loads(run["stats"])
    assert run["status"] == "done" and run["encoder_key"] == report.encoder
    assert params["engine"] == "ray" and params["actors"] == 2 and params["device"] == "cpu"
    assert params["cluster"]["CPU"] == cluster["CPU"] == 2 and params["cluster"]["nodes"] == 1
    assert params["encoder_options"] == {
        "encoder_id": "random-resnet18",
        "device": "cpu",
        "precision": encoder.precision,
    }
    assert params["precision_requested"] == "auto"
    assert stats["encoded"] == 34 and stats["failed"] == 2
    # Every vector went through a shard, and every shard was ingested and deleted.
    # Each shard but the last holds at least chunk_size=10 vectors.
    assert 1 <= report.shards == stats["shards"] <= math.ceil(34 / 10)
    assert leftover_shards(remote.cache_dir, report.encoder) == []
    assert not (shards_root(remote.cache_dir) / report.run_id).exists()


# --------------------------------------------------------------------------- failures and resuming


def test_shards_left_by_a_dead_driver_are_ingested_first_and_nothing_is_embedded_twice(
    tmp_path: Path, cluster, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_store(tmp_path, "s", corpus)
    real_ingest = engine.ingest_shard
    calls: list[Path] = []

    def driver_dies_before_the_second_ingest(store_: Store, path: Path) -> int:
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("driver died")
        return real_ingest(store_, path)

    monkeypatch.setattr(engine, "ingest_shard", driver_dies_before_the_second_ingest)
    with pytest.raises(RuntimeError, match="driver died"):
        embed_dataset_ray(store, "d", PIXELS, actors=2, batch_size=4, chunk_size=8)
    monkeypatch.setattr(engine, "ingest_shard", real_ingest)

    key = "pixels@v1/pixels/none"
    stored_before = set(vectors_by_hash(store, key))
    leftovers = leftover_shards(store.cache_dir, key)
    assert leftovers == [calls[1]]  # the shard written but not ingested is still on disk
    _, left_hashes, _ = read_shard(leftovers[0])
    assert len(stored_before) >= 8 and len(left_hashes) >= 8 and not stored_before & set(left_hashes)
    run = store.runs("embed").iloc[0]
    assert run["status"] == "failed" and "driver died" in run["error"]

    sent_to_ray: list[str] = []
    real_dataset = engine._dataset

    def spy(ray_, pending, job):
        sent_to_ray.extend(item.content_hash for item in pending)
        return real_dataset(ray_, pending, job)

    monkeypatch.setattr(engine, "_dataset", spy)
    report = embed_dataset_ray(store, "d", PIXELS, actors=2, batch_size=4, chunk_size=8)

    reference = pixel_reference(corpus)
    assert report.recovered == len(left_hashes)
    # The cluster got exactly what neither the store nor a shard held (the broken two included).
    assert not set(sent_to_ray) & (stored_before | set(left_hashes))
    assert len(sent_to_ray) == len(set(sent_to_ray)) == 36 - len(stored_before) - len(left_hashes)
    # Exactly once: the three writes add up to every healthy image, and the store holds each once.
    assert len(stored_before) + report.recovered + report.encoded == len(reference) == 34
    assert store.count_embeddings(key) == 34
    got = vectors_by_hash(store, key)
    assert sorted(got) == sorted(reference)
    for content_hash, vector in reference.items():
        assert np.array_equal(got[content_hash], vector)
    assert leftover_shards(store.cache_dir, key) == []
    assert json.loads(store.runs("embed").iloc[0]["stats"])["recovered"] == len(left_hashes)


def test_an_actor_killed_mid_run_is_replaced_every_vector_stored_once_and_a_rerun_embeds_none(
    tmp_path: Path, cluster, corpus: Corpus
) -> None:
    store = new_store(tmp_path, "k", corpus)
    marker = tmp_path / "actor-killed"
    report = embed_dataset_ray(
        store, "d", PIXELS, actors=2, batch_size=4, chunk_size=8, fault=ActorFault(str(marker), after_batches=2)
    )
    assert marker.exists()  # an actor's process did end mid-batch
    reference = pixel_reference(corpus)
    assert report.encoded == store.count_embeddings(report.encoder) == len(reference) == 34
    got = vectors_by_hash(store, report.encoder)
    assert sorted(got) == sorted(reference)
    for content_hash, vector in reference.items():
        assert np.array_equal(got[content_hash], vector)
    assert [path for path, _ in embed_failures(store)] == [BROKEN, GONE]
    assert store.runs("embed").iloc[0]["status"] == "done"

    again = embed_dataset_ray(store, "d", PIXELS, actors=2, batch_size=4)
    assert (again.encoded, again.cached, again.recovered) == (0, 34, 0)
    assert sorted(f["path"] for f in again.failed) == [BROKEN, GONE]  # retried, still broken, still reported
    assert store.count_embeddings(report.encoder) == 34
    assert again.actors == 1  # two images left to try: one batch, one actor


def test_a_node_with_another_encoder_key_is_refused() -> None:
    batch = {"encoder_key": np.asarray(["pixels@v1/pixels/none", "pixels@v2/pixels/none"], dtype=object)}
    with pytest.raises(EncoderUnavailableError, match=r"pixels@v2/pixels/none.*same versions"):
        engine._check_key(batch, "pixels@v1/pixels/none")
    engine._check_key({"encoder_key": batch["encoder_key"][:1]}, "pixels@v1/pixels/none")  # the driver's own


# --------------------------------------------------------------------------- planning actors


@pytest.mark.parametrize(
    ("resources", "device", "actors", "expected"),
    [
        ({"CPU": 16, "GPU": 4}, "auto", None, (4, 1.0, 1.0, "cuda")),
        ({"CPU": 16, "GPU": 4}, "cuda:1", 2, (2, 1.0, 1.0, "cuda")),
        ({"CPU": 16, "GPU": 4}, "cpu", None, (4, 4.0, 0.0, "cpu")),
        ({"CPU": 2}, "auto", None, (1, 2.0, 0.0, "cpu")),
        ({"CPU": 8}, "auto", 3, (3, 2.0, 0.0, "cpu")),
    ],
)
def test_actors_take_one_gpu_each_when_the_cluster_has_gpus(resources, device, actors, expected) -> None:
    plan = plan_actors(resources, device, actors)
    assert (plan.actors, plan.num_cpus, plan.num_gpus, plan.device) == expected


@pytest.mark.parametrize(
    ("resources", "device", "actors", "message"),
    [
        ({"CPU": 8}, "cuda", None, "has no GPU"),
        ({"CPU": 8, "GPU": 2}, "auto", 3, "needs 3 GPUs"),
        ({"CPU": 2}, "cpu", 3, "needs a CPU each"),
        ({"CPU": 8}, "mps", None, "use auto, cpu or cuda"),
        ({"CPU": 8}, "auto", 0, "must be >= 1"),
    ],
)
def test_impossible_actor_plans_say_what_to_change(resources, device, actors, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        plan_actors(resources, device, actors)


# --------------------------------------------------------------------------- ray stays optional


def test_importing_core_and_its_cli_does_not_import_ray() -> None:
    code = "import sys, core, core.cli, core.engines.ray_engine, core.engines.shards; print('ray' in sys.modules)"
    out = subprocess.run([PYTHON, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_without_ray_the_engine_says_which_extra_to_install(
    tmp_path: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_store(tmp_path, "n", corpus)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(EngineUnavailableError, match=r"pip install 'replens\[scale\]'"):
        embed_dataset_ray(store, "d", PIXELS)
    assert store.runs("embed").empty


# --------------------------------------------------------------------------- the CLI


def test_cli_embeds_on_a_local_ray_instance(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    root = tmp_path / "cli-images"
    files = {f"f{i % 2}/im{i}.png": png_bytes(2000 + i) for i in range(10)}
    for rel, data in files.items():
        write_file(root, rel, data)
    assert run_cli(["ingest", str(root), "--dataset", "c", "--no-thumbnails", "--json"]).returncode == 0
    write_file(root, "f1/im9.png", "broken after the scan")

    args = ["embed", "--dataset", "c", "--encoder", "pixels", "--engine", "ray", "--address", "local"]
    proc = run_cli([*args, "--ray-actors", "1", "--batch-size", "4", "--json"], timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # progress and Ray's own lines stay on stderr
    report = json.loads(lines[0])
    assert (report["engine"], report["encoded"], report["cached"], report["actors"]) == ("ray", 9, 0, 1)
    assert [f["path"] for f in report["failed"]] == ["f1/im9.png"]
    assert report["cluster"]["CPU"] >= 1

    store = Store(Path(isolated_env["REPLENS_DB"]), Path(isolated_env["REPLENS_CACHE"]))
    try:
        imgs, matrix = store.load_embeddings("c", report["encoder"])
        encoder = load_encoder("pixels", "cpu")
        healthy = sorted(rel for rel in files if rel != "f1/im9.png")
        expected = encoder.embed_batch(
            np.stack([encoder.preprocess(Image.open(root / rel).convert("RGB")) for rel in healthy])
        )
        by_path = dict(zip(imgs["rel_path"], matrix))
        assert sorted(by_path) == healthy
        assert np.array_equal(np.stack([by_path[rel] for rel in healthy]), expected)
        assert json.loads(store.runs("embed").iloc[0]["params"])["engine"] == "ray"
    finally:
        store.close()

    wrong = run_cli(["embed", "--dataset", "c", "--encoder", "pixels", "--ray-actors", "2"])
    assert wrong.returncode == 2 and "apply to --engine ray only" in wrong.stderr
