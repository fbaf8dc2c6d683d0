"""Background jobs: recorded in the store, joined, cancelled, interrupted and resumed.

Generic runner behaviour is checked with job kinds registered here (a job that waits on an
event, so "still running" is a fact, not a race); the embed kind is checked end to end on a real
store with the pixels encoder.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import Folder, synthetic_dataset
from core import images
from core.jobs import JOB_KINDS, JobContext, JobKind, JobRunner, job_identity, process_owner, register_job_kind
from core.store import Store

RELEASE = threading.Event()


def _wait_for_release(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    total = int(params.get("steps", 5))
    for step in range(total):
        ctx.progress(step, total)
        if ctx.should_stop():
            from core.jobs import JobCancelled

            raise JobCancelled(ctx.job_id)
        RELEASE.wait(timeout=30)
        time.sleep(0.05)
    ctx.progress(total, total)
    return {"steps": total, "tag": params.get("tag")}


@pytest.fixture(autouse=True)
def test_kind() -> Iterator[None]:
    register_job_kind(JobKind("test-wait", "steps", lambda d, p: f"wait {p.get('tag')}", _wait_for_release))
    RELEASE.clear()
    yield
    RELEASE.set()
    JOB_KINDS.pop("test-wait", None)


@pytest.fixture
def runner(store: Store) -> Iterator[JobRunner]:
    r = JobRunner(store, workers=2)
    yield r
    RELEASE.set()
    r.shutdown()


def _wait_status(runner: JobRunner, job_id: str, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while runner.get(job_id).status != status:
        assert time.monotonic() < deadline, f"job {job_id} is {runner.get(job_id).status}, never {status}"
        time.sleep(0.05)


def test_a_job_runs_to_done_with_its_result_and_progress(runner: JobRunner) -> None:
    RELEASE.set()
    job_id, created = runner.submit("test-wait", None, {"tag": "a", "steps": 3})
    job = runner.wait(job_id, timeout=20)
    assert created and job.status == "done"
    assert job.result == {"steps": 3, "tag": "a"}
    assert (job.done, job.total, job.unit) == (3, 3, "steps")
    assert job.attempts == 1 and job.owner == process_owner()


def test_starting_the_same_job_twice_joins_the_running_one(runner: JobRunner) -> None:
    first, created_first = runner.submit("test-wait", None, {"tag": "same"})
    _wait_status(runner, first, "running")
    second, created_second = runner.submit("test-wait", None, {"tag": "same"})
    other, created_other = runner.submit("test-wait", None, {"tag": "other"})
    assert created_first and not created_second and second == first
    assert created_other and other != first
    RELEASE.set()
    assert runner.wait(first, timeout=20).status == "done"
    # Once it has ended, the same parameters start a new job.
    again, created_again = runner.submit("test-wait", None, {"tag": "same"})
    assert created_again and again != first


def test_identity_ignores_key_order_but_not_values() -> None:
    assert job_identity("embed", "d", {"a": 1, "b": 2}) == job_identity("embed", "d", {"b": 2, "a": 1})
    assert job_identity("embed", "d", {"a": 1}) != job_identity("embed", "d", {"a": 2})
    assert job_identity("embed", "d", {"a": 1}) != job_identity("embed", "e", {"a": 1})


def test_cancel_stops_a_running_job_and_a_queued_one(store: Store) -> None:
    runner = JobRunner(store, workers=1)
    try:
        running, _ = runner.submit("test-wait", None, {"tag": "r", "steps": 50})
        _wait_status(runner, running, "running")
        queued, _ = runner.submit("test-wait", None, {"tag": "q"})
        assert runner.get(queued).status == "queued"  # one worker: it waits its turn
        assert runner.cancel(queued) and runner.get(queued).status == "cancelled"
        assert runner.cancel(running)
        RELEASE.set()
        job = runner.wait(running, timeout=20)
        assert job.status == "cancelled" and job.done < 50
        assert not runner.cancel(running)  # already ended
    finally:
        RELEASE.set()
        runner.shutdown()


def test_a_job_left_running_by_a_dead_process_is_interrupted_and_resumable(store: Store) -> None:
    job_id, _ = store.create_job("test-wait", None, job_identity("test-wait", None, {"tag": "x"}), {"tag": "x"}, "t")
    dead_pid = _dead_pid()
    assert store.claim_job(job_id, f"{dead_pid}@{socket.gethostname()}")
    runner = JobRunner(store, workers=1)
    try:
        assert runner.recover() == [job_id]
        job = runner.get(job_id)
        assert job.status == "interrupted" and "Interrupted" in (job.error or "")
        RELEASE.set()
        assert runner.resume(job_id) == job_id
        resumed = runner.wait(job_id, timeout=20)
        assert resumed.status == "done" and resumed.attempts == 2 and resumed.owner == process_owner()
    finally:
        runner.shutdown()


def test_a_live_job_of_another_host_is_kept_until_its_heartbeat_stops(store: Store) -> None:
    job_id, _ = store.create_job("test-wait", None, "ident-h", {}, "t")
    assert store.claim_job(job_id, "123@another-host")
    patient = JobRunner(store, stale_after_s=3600)
    assert patient.recover() == [] and patient.get(job_id).status == "running"
    time.sleep(0.05)
    strict = JobRunner(store, stale_after_s=0.01)
    assert strict.recover() == [job_id]
    patient.shutdown()
    strict.shutdown()


def test_heartbeats_keep_this_process_jobs_alive(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.jobs.runner as runner_module

    monkeypatch.setattr(runner_module, "HEARTBEAT_S", 0.05)
    runner = JobRunner(store, workers=1)
    try:
        job_id, _ = runner.submit("test-wait", None, {"tag": "beat", "steps": 1})
        _wait_status(runner, job_id, "running")
        first = runner.get(job_id).heartbeat_at
        time.sleep(0.4)
        assert runner.get(job_id).heartbeat_at > first
        # Another process checking with a short stale window still sees it alive (it beats).
        other = JobRunner(store, stale_after_s=0.3)
        other.owner = "1@elsewhere"
        assert other.recover() == []
    finally:
        RELEASE.set()
        runner.shutdown()


def test_eta_and_fraction_follow_the_recorded_rate(store: Store) -> None:
    job_id, _ = store.create_job("test-wait", None, "ident-eta", {}, "t")
    store.claim_job(job_id, process_owner())
    store.update_job_progress(job_id, 30, 130, "images", 20.0)
    job = JobRunner(store).get(job_id)
    assert job.fraction == pytest.approx(30 / 130)
    assert job.eta_seconds == pytest.approx((130 - 30) / 20.0)


# --------------------------------------------------------------------------- the embed kind, end to end


@pytest.fixture
def dataset(store: Store, image_folder: Folder) -> str:
    scan = images.scan(image_folder.root)
    store.ingest("d", scan.root, scan.records, scan.skipped)
    return "d"


def test_an_embed_job_embeds_every_image_once_and_remembers_the_key(store: Store, dataset: str, pixels_encoder) -> None:
    runner = JobRunner(store)
    try:
        job_id, _ = runner.submit("embed", dataset, {"encoder_id": "pixels", "device": "cpu"})
        job = runner.wait(job_id, timeout=60)
        assert job.status == "done", job.error
        n = len(store.dataset_images(dataset))
        assert job.result is not None and job.result["encoded"] == n and job.result["cached"] == 0
        assert (job.done, job.total) == (n, n)
        frame, vectors = store.load_embeddings(dataset, pixels_encoder.key)
        assert len(frame) == n and vectors.shape == (n, pixels_encoder.dim)
        assert store.last_encoder_key(dataset) == pixels_encoder.key
    finally:
        runner.shutdown()


def test_resuming_an_interrupted_embed_job_keeps_the_committed_vectors(
    store: Store, dataset: str, pixels_encoder
) -> None:
    pending = store.pending_images(dataset, pixels_encoder.key)
    half = pending[: len(pending) // 2]
    arrays = [pixels_encoder.preprocess(images.decode_rgb(images.read_bytes(p.source, p.rel_path))) for p in half]
    store.register_encoder(
        pixels_encoder.key,
        "pixels",
        pixels_encoder.spec.version,
        pixels_encoder.layer,
        pixels_encoder.pooling,
        pixels_encoder.dim,
        pixels_encoder.spec.to_dict(),
    )
    store.write_embeddings(
        pixels_encoder.key, [p.content_hash for p in half], pixels_encoder.embed_batch(np.stack(arrays))
    )
    params = {"encoder_id": "pixels", "device": "cpu"}
    job_id, _ = store.create_job("embed", dataset, job_identity("embed", dataset, params), params, "embed")
    store.claim_job(job_id, f"{_dead_pid()}@{socket.gethostname()}")
    runner = JobRunner(store)
    try:
        assert runner.recover() == [job_id]
        runner.resume(job_id)
        job = runner.wait(job_id, timeout=60)
        assert job.status == "done", job.error
        assert job.result is not None
        assert (job.result["cached"], job.result["encoded"]) == (len(half), len(pending) - len(half))
        assert store.count_embeddings(pixels_encoder.key) == len(pending)
    finally:
        runner.shutdown()


def test_an_embed_job_for_an_unknown_encoder_fails_with_a_page_message(store: Store, dataset: str) -> None:
    runner = JobRunner(store)
    try:
        job_id, _ = runner.submit("embed", dataset, {"encoder_id": "no-such-encoder", "device": "cpu"})
        job = runner.wait(job_id, timeout=30)
        assert job.status == "failed" and "no-such-encoder" in (job.error or "")
    finally:
        runner.shutdown()


def test_cli_runs_lists_and_shows_a_job(tmp_path: Path, image_folder: Folder, cli) -> None:
    import json

    assert cli(["ingest", str(image_folder.root), "--dataset", "d"]).returncode == 0
    ran = cli(["jobs", "run", "embed", "--dataset", "d", "--params", '{"encoder_id": "pixels"}', "--json"])
    assert ran.returncode == 0, ran.stderr
    job = json.loads(ran.stdout)
    assert job["status"] == "done" and job["result"]["encoded"] == len(image_folder.files)
    listed = json.loads(cli(["jobs", "list", "--json"]).stdout)
    assert [j["job_id"] for j in listed] == [job["job_id"]]
    shown = json.loads(cli(["jobs", "show", job["job_id"], "--json"]).stdout)
    assert shown["params"] == {"encoder_id": "pixels"} and shown["status"] == "done"
    bad = cli(["jobs", "run", "embed", "--dataset", "d", "--params", "[1]"])
    assert bad.returncode != 0 and "JSON object" in bad.stderr


def _dead_pid() -> int:
    """A pid that no process on this host has (a child that has exited and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    try:
        os.kill(child.pid, 0)
    except ProcessLookupError:
        return child.pid
    raise AssertionError("pid reused immediately")


# --------------------------------------------------------------------------- the Jobs page


def test_jobs_page_lists_jobs_and_resumes_an_interrupted_one() -> None:
    from streamlit.testing.v1 import AppTest

    from core import config

    store = Store(config.db_path(), config.cache_dir())
    done_id, _ = store.create_job("test-wait", None, "ident-done", {}, "finished job *bold*")
    store.claim_job(done_id, process_owner())
    store.update_job_progress(done_id, 4, 4, "steps", 2.0)
    store.finish_job(done_id, "done", result={"steps": 4})
    lost_id, _ = store.create_job("test-wait", None, "ident-lost", {"tag": "lost", "steps": 2}, "lost job")
    store.claim_job(lost_id, f"{_dead_pid()}@{socket.gethostname()}")

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/jobs.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    assert "finished job \\*bold\\*" in text  # user text shown literally
    assert "lost job" in text and "interrupted" in text
    resume = [b for b in at.button if b.key and b.key.endswith(f"resume_{lost_id}")]
    assert len(resume) == 1
    RELEASE.set()
    resume[0].click().run()
    job = JobRunner(store).wait(lost_id, timeout=30)
    assert job.status == "done" and job.attempts == 2


def test_a_layout_job_counts_placed_points_and_stores_what_the_page_reads(store: Store) -> None:
    from core import reduce

    dataset, key, _ = synthetic_dataset(store, 2_500)
    params = {"n_neighbors": 10, "sample_size": 1_000, "random_state": 3}
    runner = JobRunner(store)
    try:
        job_id, _ = runner.submit("layout", dataset, {"encoder_key": key, "method": "umap-sampled", "params": params})
        job = runner.wait(job_id, timeout=120)
    finally:
        runner.shutdown()
    assert job.status == "done", job.error
    assert job.unit == "points" and job.result is not None and job.result["n_points"] == 2_500
    assert job.done == job.total == 2_500
    frame, vectors = store.load_embeddings(dataset, key)
    stored = reduce.cached_projection(store, key, "umap-sampled", params, frame)
    assert stored is not None and stored.key == job.result["projection_key"]
    expected = reduce.SampledUMAPReducer(n_neighbors=10, sample_size=1_000, random_state=3).fit_transform(vectors)
    np.testing.assert_array_equal(stored.coords, expected)


def test_an_index_job_builds_the_neighbour_index_once_and_a_rerun_reuses_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import neighbors

    monkeypatch.setattr(neighbors, "ANN_THRESHOLD", 100)
    monkeypatch.setattr(neighbors, "ADD_CHUNK", 500)
    dataset, key, vectors = synthetic_dataset(store, 1_200)
    runner = JobRunner(store)
    try:
        first = runner.wait(runner.submit("index", dataset, {"encoder_key": key})[0], timeout=120)
        again = runner.wait(runner.submit("index", dataset, {"encoder_key": key})[0], timeout=120)
    finally:
        runner.shutdown()
    assert first.status == "done", first.error
    assert first.unit == "vectors" and first.done == first.total == 1_200
    assert first.result is not None and first.result["approximate"] and first.result["added"] == 1_200
    assert first.result["reason"].startswith("built")
    assert neighbors.cached_index_exists(store.cache_dir, key, dataset)
    assert again.result is not None and (again.result["reason"], again.result["reused"]) == ("cached", 1_200)
