"""Tests for core.extract: caching, resumability, failures, progress, OOM back-off, equivalence."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import build_folder, write_file
from core import extract, images
from core.encoders import BaseEncoder, PixelsEncoder, get_spec
from core.errors import DatasetNotFoundError, InvalidInputError
from core.extract import embed_dataset, embed_images
from core.store import Store


class CountingPixels(PixelsEncoder):
    """The pixels encoder, recording every forward pass; optionally failing on the Nth one."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        super().__init__(get_spec("pixels"), "cpu", "pixels", "none")
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated crash in the model")
        return super()._forward(batch)


class OrtLikeError(Exception):
    """onnxruntime's exceptions derive from Exception, not RuntimeError."""


class SmallGpuEncoder(BaseEncoder):
    """Pixels features, but any forward pass over ``limit`` images runs out of memory."""

    def __init__(
        self,
        limit: int = 4,
        error: type[Exception] = RuntimeError,
        message: str = "CUDA out of memory. Tried to allocate 2.00 GiB",
    ) -> None:
        super().__init__(dataclasses.replace(get_spec("pixels"), id="small-gpu"), "cpu", "pixels", "none")
        self.limit, self.error, self.message = limit, error, message
        self.ok_sizes: list[int] = []
        self.oom_sizes: list[int] = []

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > self.limit:
            self.oom_sizes.append(len(batch))
            raise self.error(self.message)
        self.ok_sizes.append(len(batch))
        return batch.reshape(batch.shape[0], -1)


def ingest(store: Store, dataset: str, root: Path):
    scan = images.scan(root)
    store.ingest(dataset, scan.root, scan.records, scan.skipped)
    return scan


def vectors_by_hash(store: Store, dataset: str, key: str) -> dict[str, np.ndarray]:
    imgs, matrix = store.load_embeddings(dataset, key)
    return dict(zip(imgs["content_hash"], matrix))


def reference_vectors(encoder: BaseEncoder, root: Path, rel_paths: list[str]) -> np.ndarray:
    """Independent computation: open each file with Pillow, preprocess, one embed_batch call."""
    arrays = [encoder.preprocess(Image.open(root / rel).convert("RGB")) for rel in rel_paths]
    return encoder.embed_batch(np.stack(arrays))


# --------------------------------------------------------------------------- caching


def test_second_run_is_all_cached_and_never_calls_the_model(ingested) -> None:
    store, folder, _ = ingested
    encoder = CountingPixels()
    first = embed_dataset(store, "d", encoder, batch_size=3, workers=2)
    assert (first.encoded, first.cached, first.failed) == (8, 0, [])
    assert sum(encoder.calls) == 8 and max(encoder.calls) <= 3
    assert store.count_embeddings(encoder.key) == 8
    assert first.dataset == "d" and first.encoder == encoder.key == "pixels@v1/pixels/none"

    encoder.calls.clear()
    second = embed_dataset(store, "d", encoder, batch_size=3)
    assert (second.encoded, second.cached, second.failed) == (0, 8, [])
    assert encoder.calls == []
    assert second.images_per_s == 0.0

    runs = store.runs("embed").set_index("run_id")
    assert runs.loc[first.run_id, "status"] == "done" and runs.loc[second.run_id, "status"] == "done"
    assert '"encoded": 8' in runs.loc[first.run_id, "stats"]


def test_duplicate_files_are_embedded_once(store: Store, image_folder) -> None:
    write_file(image_folder.root, "birds/again.png", image_folder.files["dogs/dog_0.png"])
    ingest(store, "d", image_folder.root)
    encoder = CountingPixels()
    report = embed_dataset(store, "d", encoder)
    assert report.encoded == 8 and sum(encoder.calls) == 8


def test_unknown_dataset_raises_before_any_work(store: Store) -> None:
    encoder = CountingPixels()
    with pytest.raises(DatasetNotFoundError, match="ingest"):
        embed_dataset(store, "nope", encoder)
    assert encoder.calls == []


def test_batch_size_must_be_positive(ingested) -> None:
    store, _, _ = ingested
    with pytest.raises(InvalidInputError):
        embed_dataset(store, "d", CountingPixels(), batch_size=-1)


# --------------------------------------------------------------------------- resumability


def test_crash_after_first_chunk_resumes_with_only_the_remainder(
    ingested, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, folder, _ = ingested
    monkeypatch.setattr(extract, "CHUNK_SIZE", 2)
    crashing = CountingPixels(fail_on_call=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_dataset(store, "d", crashing, batch_size=2, workers=1)
    stored = store.count_embeddings(crashing.key)
    assert stored == 4  # two committed chunks of two; the third batch never produced vectors
    failed_run = store.runs("embed").iloc[0]
    assert failed_run["status"] == "failed" and "simulated crash" in failed_run["error"]

    resumed = CountingPixels()
    report = embed_dataset(store, "d", resumed, batch_size=2, workers=1)
    assert (report.encoded, report.cached) == (8 - stored, stored)
    assert sum(resumed.calls) == 8 - stored

    clean_store = Store(tmp_path / "clean.duckdb", tmp_path / "clean-cache")
    try:
        ingest(clean_store, "d", folder.root)
        embed_dataset(clean_store, "d", CountingPixels(), batch_size=8)
        clean = vectors_by_hash(clean_store, "d", resumed.key)
    finally:
        clean_store.close()
    resumed_vectors = vectors_by_hash(store, "d", resumed.key)
    assert resumed_vectors.keys() == clean.keys() and len(clean) == 8
    for h, vec in clean.items():
        assert np.array_equal(resumed_vectors[h], vec)


def test_vectors_computed_before_a_crash_are_kept_even_mid_chunk(ingested, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, _ = ingested
    monkeypatch.setattr(extract, "CHUNK_SIZE", 100)  # nothing would be committed by the chunk rule
    crashing = CountingPixels(fail_on_call=2)
    with pytest.raises(RuntimeError):
        embed_dataset(store, "d", crashing, batch_size=3, workers=1)
    assert store.count_embeddings(crashing.key) == 3
    assert len(store.pending_images("d", crashing.key)) == 5


def test_should_stop_commits_what_was_done(ingested) -> None:
    store, _, _ = ingested
    encoder = CountingPixels()
    report = embed_dataset(store, "d", encoder, batch_size=3, should_stop=lambda: True)
    assert report.encoded == 3 == store.count_embeddings(encoder.key)
    assert len(store.pending_images("d", encoder.key)) == 5


# --------------------------------------------------------------------------- failures


def test_file_broken_after_ingest_is_reported_and_the_rest_embedded(ingested) -> None:
    store, folder, scan = ingested
    write_file(folder.root, "cats/cat_1.png", b"this is no longer a png")
    (folder.root / "dogs/dog_0.png").unlink()
    encoder = CountingPixels()
    report = embed_dataset(store, "d", encoder, batch_size=4)
    assert report.encoded == 6 and sum(encoder.calls) == 6
    failed = sorted(report.failed, key=lambda f: f["path"])
    assert [f["path"] for f in failed] == ["cats/cat_1.png", "dogs/dog_0.png"]
    assert "cannot identify image file" in failed[0]["reason"]
    assert "file not found" in failed[1]["reason"]

    skipped = store.skipped_files("d").set_index("rel_path")
    assert skipped.loc["cats/cat_1.png", "stage"] == "embed"
    assert skipped.loc["dogs/dog_0.png", "stage"] == "embed"
    assert skipped.loc["cats/cat_1.png", "reason"] == failed[0]["reason"]
    assert skipped.loc["cats/cat_1.png", "source"] == scan.root
    healthy = [r for r in folder.rel_paths if r not in ("cats/cat_1.png", "dogs/dog_0.png")]
    stored = vectors_by_hash(store, "d", encoder.key)
    ref = reference_vectors(encoder, folder.root, healthy)
    for rel, vec in zip(healthy, ref):
        assert np.array_equal(stored[images.content_hash(folder.files[rel])], vec)

    # The broken files stay pending; fixing one and rescanning clears the stale failures.
    write_file(folder.root, "cats/cat_1.png", folder.files["cats/cat_1.png"])
    ingest(store, "d", folder.root)
    again = embed_dataset(store, "d", encoder)
    assert (again.encoded, again.cached, again.failed) == (1, 6, [])
    assert store.skipped_files("d").empty


def test_decode_failures_are_recorded_even_when_the_model_crashes(ingested, monkeypatch: pytest.MonkeyPatch) -> None:
    store, folder, _ = ingested
    write_file(folder.root, "birds/bird_0.png", b"broken")
    monkeypatch.setattr(extract, "CHUNK_SIZE", 100)
    with pytest.raises(RuntimeError):
        embed_dataset(store, "d", CountingPixels(fail_on_call=2), batch_size=4, workers=1)
    skipped = store.skipped_files("d")
    assert skipped["rel_path"].tolist() == ["birds/bird_0.png"]
    assert skipped["stage"].tolist() == ["embed"]


# --------------------------------------------------------------------------- progress


def test_progress_is_monotonic_and_reaches_total(ingested) -> None:
    store, _, _ = ingested
    calls: list[tuple[int, int]] = []
    embed_dataset(
        store,
        "d",
        CountingPixels(),
        batch_size=3,
        should_stop=lambda: len(calls) >= 2,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[0] == (0, 8) and calls[-1] == (3, 8)

    calls.clear()
    embed_dataset(store, "d", CountingPixels(), batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (3, 8)  # cached images count as done from the start
    assert calls[-1] == (8, 8)
    assert {t for _, t in calls} == {8}
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(calls) == 1 + 3  # initial call + one per batch of 2 over 5 images


def test_empty_dataset_reports_nothing_to_do(store: Store) -> None:
    store.ingest("empty", "/nowhere", [], [])
    calls: list[tuple[int, int]] = []
    report = embed_dataset(store, "empty", CountingPixels(), progress=lambda d, t: calls.append((d, t)))
    assert (report.encoded, report.cached, report.failed) == (0, 0, [])
    assert calls == [(0, 0)]


# --------------------------------------------------------------------------- GPU out-of-memory


@pytest.fixture
def twenty_images(store: Store, tmp_path: Path):
    root = tmp_path / "twenty"
    files = build_folder(root, {"a": [f"x{i:02d}" for i in range(10)], "b": [f"y{i:02d}" for i in range(10)]}, size=16)
    ingest(store, "many", root)
    return store, root, files


@pytest.mark.parametrize(
    "error, message",
    [
        (RuntimeError, "CUDA out of memory. Tried to allocate 2.00 GiB"),
        (OrtLikeError, "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"),
    ],
)
def test_out_of_memory_halves_the_batch_and_keeps_it_small(twenty_images, error, message) -> None:
    store, root, files = twenty_images
    encoder = SmallGpuEncoder(limit=4, error=error, message=message)
    report = embed_dataset(store, "many", encoder, batch_size=8, workers=2)
    assert report.encoded == 20 and report.failed == []
    assert report.batch_size == 4  # the largest size that fits, not smaller
    assert max(encoder.ok_sizes) <= 4 and sum(encoder.ok_sizes) == 20
    assert encoder.oom_sizes == [8]  # backed off once, later batches start at the size that fits
    stored = vectors_by_hash(store, "many", encoder.key)
    pixels = PixelsEncoder(get_spec("pixels"), "cpu", "pixels", "none")
    rels = sorted(files)
    ref = reference_vectors(pixels, root, rels)
    for rel, vec in zip(rels, ref):
        assert np.array_equal(stored[images.content_hash(files[rel])], vec)


def test_errors_that_are_not_out_of_memory_are_not_retried(twenty_images) -> None:
    store, _, _ = twenty_images
    encoder = SmallGpuEncoder(limit=4, message="CUDA error: device-side assert triggered")
    with pytest.raises(RuntimeError, match="device-side assert"):
        embed_dataset(store, "many", encoder, batch_size=8)
    assert encoder.oom_sizes == [8] and encoder.ok_sizes == []


def test_out_of_memory_on_a_single_image_is_raised(twenty_images) -> None:
    store, _, _ = twenty_images
    encoder = SmallGpuEncoder(limit=0)
    with pytest.raises(RuntimeError, match="out of memory"):
        embed_dataset(store, "many", encoder, batch_size=4)
    assert encoder.oom_sizes == [4, 2, 1]
    assert store.count_embeddings(encoder.key) == 0


# --------------------------------------------------------------------------- equivalence


def test_pipeline_vectors_equal_a_direct_forward_pass(store: Store, tmp_path: Path, resnet_encoder) -> None:
    root = tmp_path / "five"
    build_folder(root, {"a": ["p0", "p1", "p2"], "b": ["q0", "q1"]}, size=48)
    ingest(store, "d", root)
    report = embed_dataset(store, "d", resnet_encoder, batch_size=2, workers=2)
    assert report.encoded == 5
    imgs, matrix = store.load_embeddings("d", resnet_encoder.key)
    assert matrix.shape == (5, 512)
    ref = reference_vectors(resnet_encoder, root, imgs["rel_path"].tolist())
    np.testing.assert_allclose(matrix, ref, rtol=1e-4, atol=1e-5)
    # Different images really give different vectors (the comparison above is not vacuous).
    assert np.linalg.norm(ref[0] - ref[1]) > 1e-3


def test_embed_images_matches_the_pipeline_for_the_same_files(store: Store, tmp_path: Path, vit_encoder) -> None:
    root = tmp_path / "mixed"
    build_folder(root, {"a": ["p0", "p1"], "b": ["p2"]})
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[:32, :, 3] = 0  # half transparent: the pipeline composites it on grey
    Image.fromarray(rgba, "RGBA").save(root / "b" / "transparent.png")
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (600, 520, 3), dtype=np.uint8)).save(jpeg, "JPEG", quality=90)
    write_file(root, "b/photo.jpg", jpeg.getvalue())
    ingest(store, "mixed", root)

    embed_dataset(store, "mixed", vit_encoder, batch_size=5)
    imgs, matrix = store.load_embeddings("mixed", vit_encoder.key)
    rels = imgs["rel_path"].tolist()
    assert len(rels) == 5 and matrix.shape == (5, 384)
    inputs = [(root / r).read_bytes() if r.endswith(".jpg") else Image.open(root / r) for r in rels]
    direct = embed_images(vit_encoder, inputs, batch_size=5)
    assert direct.shape == (5, 384) and direct.dtype == np.float32
    np.testing.assert_allclose(direct, matrix, rtol=1e-4, atol=1e-4)


def test_embed_images_pixels_is_exact_and_batch_independent(ingested, pixels_encoder) -> None:
    store, folder, _ = ingested
    embed_dataset(store, "d", pixels_encoder)
    imgs, matrix = store.load_embeddings("d", pixels_encoder.key)
    pil = [Image.open(folder.root / r) for r in imgs["rel_path"]]
    assert np.array_equal(embed_images(pixels_encoder, pil, batch_size=3), matrix)
    raw = [folder.files[r] for r in imgs["rel_path"]]
    assert np.array_equal(embed_images(pixels_encoder, raw), matrix)
    assert embed_images(pixels_encoder, []).shape == (0, pixels_encoder.dim)
    with pytest.raises(InvalidInputError):
        embed_images(pixels_encoder, ["not an image"])


# --------------------------------------------------------------------------- interrupted runs (issue 10, item 7)


class StopScript(BaseException):
    """Like Streamlit's StopException (a BaseException): what a browser reload raises in the script."""


def test_an_interruption_is_recorded_and_resumed_with_only_what_is_missing(ingested) -> None:
    store, folder, _ = ingested
    encoder = CountingPixels()

    def reload_after_first_batch(done: int, total: int) -> None:
        if done >= 3:
            raise StopScript()

    with pytest.raises(StopScript):
        embed_dataset(store, "d", encoder, batch_size=3, workers=1, progress=reload_after_first_batch)
    run = store.runs("embed").iloc[0]
    assert run["status"] == "failed" and run["error"].startswith("Interrupted (StopScript) after 3 of 8")
    stored = store.count_embeddings(encoder.key)
    assert stored == 3

    unfinished = extract.unfinished_extractions(store, "d")
    assert len(unfinished) == 1
    cut = unfinished[0]
    assert (cut.run_id, cut.encoder_key, cut.n_missing, cut.n_images) == (run["run_id"], encoder.key, 5, 8)
    assert (cut.encoder_id, cut.layer, cut.pooling, cut.weights) == ("pixels", "pixels", "none", None)
    assert "stopped before it finished" in cut.reason

    resumed = CountingPixels()
    report = extract.resume_extraction(store, cut, resumed, batch_size=2)
    assert (report.encoded, report.cached) == (5, 3) and sum(resumed.calls) == 5
    assert store.runs("embed").iloc[0]["status"] == "done"
    assert extract.unfinished_extractions(store, "d") == []
    stored_vectors = vectors_by_hash(store, "d", encoder.key)
    reference = reference_vectors(encoder, folder.root, folder.rel_paths)
    for rel, vec in zip(folder.rel_paths, reference):
        assert np.array_equal(stored_vectors[images.content_hash(folder.files[rel])], vec)


def test_a_run_left_running_by_a_dead_process_is_flagged_and_closed_on_resume(ingested) -> None:
    store, _, _ = ingested
    encoder = CountingPixels()
    embed_dataset(store, "d", encoder, batch_size=3, should_stop=lambda: True)  # 3 vectors stored
    dead = store.start_run("embed", "d", encoder.key, {"pid": 999_999_999, "host": "elsewhere"})  # killed -9
    cut = extract.unfinished_extractions(store, "d")
    assert [(c.run_id, c.n_missing) for c in cut] == [(dead, 5)]
    assert "process running it ended" in cut[0].reason
    extract.resume_extraction(store, cut[0], CountingPixels())
    runs = store.runs("embed").set_index("run_id")
    assert runs.loc[dead, "status"] == "failed" and runs.loc[dead, "error"].startswith("Interrupted")
    assert extract.unfinished_extractions(store, "d") == []


def test_a_run_in_progress_in_this_process_is_not_flagged(ingested) -> None:
    store, _, _ = ingested
    seen: list[list[object]] = []

    def look(done: int, total: int) -> None:
        if 0 < done < total:
            seen.append(extract.unfinished_extractions(store, "d"))

    report = embed_dataset(store, "d", CountingPixels(), batch_size=3, workers=1, progress=look)
    assert seen and all(found == [] for found in seen)
    params = json.loads(store.runs("embed").set_index("run_id").loc[report.run_id, "params"])
    assert params["pid"] == os.getpid() and params["host"] == socket.gethostname()
    assert report.run_id not in extract._LIVE_RUNS


def test_should_stop_before_the_end_is_an_interruption_and_a_full_run_is_done(ingested) -> None:
    store, _, _ = ingested
    encoder = CountingPixels()
    stopped = embed_dataset(store, "d", encoder, batch_size=3, should_stop=lambda: True)
    assert stopped.stopped and store.runs("embed").iloc[0]["error"].startswith("Interrupted (stop requested)")
    finished = embed_dataset(store, "d", encoder, batch_size=3, should_stop=lambda: True)  # 5 left: 2 batches
    assert finished.stopped  # stopped again after one more batch of 3
    last = embed_dataset(store, "d", encoder, batch_size=8, should_stop=lambda: True)  # the last 2 in one batch
    assert not last.stopped and store.runs("embed").iloc[0]["status"] == "done"
    assert extract.unfinished_extractions(store, "d") == []


def test_a_done_run_with_unreadable_files_is_not_offered_for_resuming(ingested) -> None:
    store, folder, _ = ingested
    write_file(folder.root, "cats/cat_1.png", b"this is no longer a png")
    embed_dataset(store, "d", CountingPixels())
    assert len(store.pending_images("d", CountingPixels().key)) == 1
    assert extract.unfinished_extractions(store, "d") == []


def test_resume_refuses_an_encoder_with_another_key(ingested) -> None:
    store, _, _ = ingested
    store.start_run("embed", "d", "pixels@v0/pixels/none", {})
    cut = extract.unfinished_extractions(store, "d")[0]
    with pytest.raises(InvalidInputError, match="extract again"):
        extract.resume_extraction(store, cut, CountingPixels())
