"""Issue 10 item 7: pages open the dataset and embeddings last used (remembered in the store, so a
reload or a restart reopens them), and an extraction cut short is offered for resuming on the Data page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import images
from core.encoders import load_encoder
from core.extract import embed_dataset, unfinished_extractions
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PIXELS_KEY = "pixels@v1/pixels/none"
SHUFFLED_KEY = "import:shuffled"
TIMEOUT = 60


def make_images(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / ("left" if i % 2 else "right")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
    return root


def ingest(store: Store, dataset: str, root: Path) -> None:
    scan = images.scan(root, cache_dir=store.cache_dir)
    store.ingest(dataset, scan.root, scan.records, scan.skipped)


@pytest.fixture()
def two_datasets(tmp_path: Path, isolated_env: dict[str, str]) -> dict[str, int]:
    """'alpha' (6 images) and 'beta' (10 images) in the test's store, both embedded with pixels;
    beta also holds a second (imported) space, listed after pixels."""
    store = Store(isolated_env["REPLENS_DB"], isolated_env["REPLENS_CACHE"])
    pixels = load_encoder("pixels", "cpu")
    sizes = {"alpha": 6, "beta": 10}
    for seed, (name, n) in enumerate(sizes.items()):
        ingest(store, name, make_images(tmp_path / name, n, seed))
        embed_dataset(store, name, pixels)
    frame, vectors = store.load_embeddings("beta", PIXELS_KEY)
    store.register_encoder(SHUFFLED_KEY, SHUFFLED_KEY, "imported", "imported", "none", vectors.shape[1], {})
    store.write_embeddings(SHUFFLED_KEY, frame["content_hash"].tolist(), vectors[::-1].copy())
    assert store.embedded_keys("beta") == sorted([PIXELS_KEY, SHUFFLED_KEY])  # pixels is listed first
    store.close()
    return sizes


def fresh_app(page: str | None = None) -> AppTest:
    """A new browser session (what a reload gives): no session state at all."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def map_point_count(at: AppTest) -> int:
    """How many points the Map draws (the coordinates the page sends its big map)."""
    from ui.bigmap.sent import sent_maps

    maps = sent_maps(at)
    assert len(maps) == 1
    return len(maps[0].coords)


# --------------------------------------------------------------------------- the store


def test_preferences_survive_a_restart_and_follow_rename_and_delete(tmp_path: Path) -> None:
    db, cache = tmp_path / "p.duckdb", tmp_path / "cache"
    store = Store(db, cache)
    for name in ("a", "b"):
        ingest(store, name, make_images(tmp_path / name, 2, seed=len(name) + ord(name)))
    assert store.last_dataset() is None and store.last_encoder_key("b") is None
    store.remember_dataset("b")
    store.remember_encoder_key("b", PIXELS_KEY)
    store.remember_encoder_key("a", SHUFFLED_KEY)
    store.close()

    store = Store(db, cache)  # a restart
    assert store.last_dataset() == "b"
    assert store.last_encoder_key("b") == PIXELS_KEY and store.last_encoder_key("a") == SHUFFLED_KEY

    store.rename_dataset("b", "b2")
    assert store.last_dataset() == "b2"
    assert store.last_encoder_key("b2") == PIXELS_KEY and store.last_encoder_key("b") is None
    assert store.last_encoder_key("a") == SHUFFLED_KEY  # other datasets' choices untouched

    store.delete_dataset("b2")
    assert store.last_dataset() is None and store.last_encoder_key("b2") is None
    assert store.preference("last_dataset") is None  # the row is gone, not just hidden
    assert store.last_encoder_key("a") == SHUFFLED_KEY
    store.close()


def test_unknown_dataset_error_speaks_the_page_language(store: Store) -> None:
    from core.errors import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError) as caught:
        store.require_dataset("nope")
    assert "python -m core ingest PATH --dataset nope" in str(caught.value)  # the CLI keeps its advice
    page = caught.value.for_page()
    assert "Data page" in page and "python" not in page and "--dataset" not in page and str(store.path) not in page


# --------------------------------------------------------------------------- pages after a reload


def test_a_reload_reopens_the_dataset_picked_last_and_the_map_lays_it_out(two_datasets: dict[str, int]) -> None:
    at = fresh_app()
    assert at.selectbox(key="w_data_dataset").value == "alpha"  # nothing remembered yet: the first one
    at.selectbox(key="w_data_dataset").set_value("beta").run()
    assert not at.exception

    reloaded = fresh_app()
    assert reloaded.selectbox(key="w_data_dataset").value == "beta"

    on_map = fresh_app("pages/map.py")
    assert on_map.selectbox(key="w_dataset").value == "beta"
    assert map_point_count(on_map) == two_datasets["beta"] == 10


def test_a_reload_reopens_the_embeddings_picked_last_for_that_dataset(two_datasets: dict[str, int]) -> None:
    at = fresh_app("pages/map.py")
    at.selectbox(key="w_dataset").set_value("beta").run()
    assert at.selectbox(key="w_encoder_key").value == PIXELS_KEY  # nothing remembered: the first key
    at.selectbox(key="w_encoder_key").set_value(SHUFFLED_KEY).run()
    assert not at.exception

    reloaded = fresh_app("pages/neighbors.py")
    assert reloaded.selectbox(key="w_dataset").value == "beta"
    assert reloaded.selectbox(key="w_encoder_key").value == SHUFFLED_KEY
    # alpha has no such space: its own first key, remembered for alpha only.
    reloaded.selectbox(key="w_dataset").set_value("alpha").run()
    assert reloaded.selectbox(key="w_encoder_key").value == PIXELS_KEY

    store = Store()
    try:
        assert store.last_dataset() == "alpha"
        assert store.last_encoder_key("alpha") == PIXELS_KEY and store.last_encoder_key("beta") == SHUFFLED_KEY
    finally:
        store.close()


def test_a_deleted_dataset_is_not_reopened(two_datasets: dict[str, int]) -> None:
    at = fresh_app()
    at.selectbox(key="w_data_dataset").set_value("beta").run()
    at.checkbox(key="confirm_delete_beta").check().run()
    at.button(key="delete_dataset").click().run()
    assert not at.exception and not at.error
    reloaded = fresh_app("pages/map.py")
    assert reloaded.selectbox(key="w_dataset").options == ["alpha"]
    assert reloaded.selectbox(key="w_dataset").value == "alpha"


# --------------------------------------------------------------------------- an interrupted extraction


@pytest.fixture()
def half_embedded(tmp_path: Path, isolated_env: dict[str, str]) -> dict[str, object]:
    """Dataset 'd' (9 images) with 4 pixel vectors stored and an embed run left 'running' by a
    process that is gone (what a killed server leaves behind)."""
    store = Store(isolated_env["REPLENS_DB"], isolated_env["REPLENS_CACHE"])
    root = make_images(tmp_path / "d", 9, seed=7)
    ingest(store, "d", root)
    pixels = load_encoder("pixels", "cpu")
    store.register_encoder(pixels.key, "pixels", pixels.spec.version, "pixels", "none", pixels.dim, {})
    pending = store.pending_images("d", pixels.key)
    first = pending[:4]
    arrays = [pixels.preprocess(Image.open(root / p.rel_path).convert("RGB")) for p in first]
    store.write_embeddings(pixels.key, [p.content_hash for p in first], pixels.embed_batch(np.stack(arrays)))
    run_id = store.start_run("embed", "d", pixels.key, {"batch_size": 32, "pid": 999_999_999, "host": "gone"})
    store.close()
    return {"root": root, "run_id": run_id, "key": pixels.key, "first": [p.content_hash for p in first]}


def test_an_interrupted_extraction_is_flagged_and_resumed_with_one_click(half_embedded: dict[str, object]) -> None:
    at = fresh_app()
    warnings = [w.value for w in at.warning if "did not finish" in w.value]
    assert len(warnings) == 1
    assert "5 of 9 images still have no embedding" in warnings[0] and "pixels" in warnings[0]
    run_id = half_embedded["run_id"]
    at.button(key=f"resume_{run_id}").click().run()
    assert not at.exception and not at.error
    assert "5 embedded, 4 already cached" in at.success[0].value
    assert not [w for w in at.warning if "did not finish" in w.value]

    store = Store()
    try:
        # Every image now has the vector an independent computation gives (the 4 kept ones unchanged).
        frame, vectors = store.load_embeddings("d", str(half_embedded["key"]))
        pixels = load_encoder("pixels", "cpu")
        root = Path(str(half_embedded["root"]))
        expected = pixels.embed_batch(
            np.stack([pixels.preprocess(Image.open(root / rel).convert("RGB")) for rel in frame["rel_path"]])
        )
        np.testing.assert_allclose(vectors, expected, rtol=1e-6, atol=1e-6)
        runs = store.runs("embed").set_index("run_id")
        assert runs.loc[run_id, "status"] == "failed" and runs.loc[run_id, "error"].startswith("Interrupted")
        newest = store.runs("embed").iloc[0]
        assert newest["run_id"] != run_id and newest["status"] == "done"
        assert unfinished_extractions(store, "d") == []
    finally:
        store.close()
    # A reload no longer shows the warning either.
    assert not [w for w in fresh_app().warning if "did not finish" in w.value]


def test_a_finished_extraction_is_not_flagged(half_embedded: dict[str, object]) -> None:
    store = Store()
    try:
        report = embed_dataset(store, "d", load_encoder("pixels", "cpu"))
        assert (report.encoded, report.cached) == (5, 4)
        assert store.runs("embed").iloc[0]["status"] == "done"
    finally:
        store.close()
    at = fresh_app()
    assert not [w for w in at.warning if "did not finish" in w.value]
    assert not [b for b in at.button if b.key and b.key.startswith("resume_")]


def _dead_owner() -> str:
    """A job owner ("pid@host") whose process has exited on this host."""
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{child.pid}@{socket.gethostname()}"


def test_an_interrupted_extraction_job_is_shown_once_and_resumed_as_a_job(half_embedded: dict[str, object]) -> None:
    from test_app import finish_jobs

    from core.encoders import get_spec
    from core.jobs import job_identity

    # What a server killed mid-extraction leaves: its job 'running' under a dead process, and the
    # embed run the job was executing left 'running' too (the 4 vectors it committed are stored).
    spec = get_spec("pixels")
    params = {
        "encoder_id": "pixels",
        "layer": spec.default_layer,
        "pooling": spec.default_pooling,
        "device": "auto",
        "precision": "auto",
    }
    store = Store()
    try:
        job_id, _ = store.create_job("embed", "d", job_identity("embed", "d", params), params, "Extract pixels on d")
        assert store.claim_job(job_id, _dead_owner())
        store.update_job_progress(job_id, 4, 9, "images", 3.0)
    finally:
        store.close()

    at = fresh_app()
    # One message for one interruption: the job's (with its Resume), not the run's as well.
    assert not [w for w in at.warning if "did not finish" in w.value]
    assert not [b for b in at.button if b.key and b.key.startswith("resume_")]
    text = " ".join(m.value for m in at.markdown)
    assert "Extract pixels on d" in text and "interrupted" in text
    assert any("4 of 9 images were done" in c.value for c in at.caption)
    resume = [b for b in at.button if b.key == f"data_jobs_resume_{job_id}"]
    assert len(resume) == 1
    resume[0].click().run()
    finish_jobs(at)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "5 embedded, 4 already cached, 0 failed" in at.success[0].value
    assert not [b for b in at.button if b.key and "resume_" in b.key]  # nothing left to resume

    store = Store()
    try:
        job = store.job(job_id)
        assert job is not None and job["status"] == "done" and job["attempts"] == 2
        assert (job["result"]["cached"], job["result"]["encoded"]) == (4, 5)
        frame, _ = store.load_embeddings("d", str(half_embedded["key"]))
        assert len(frame) == 9 and frame["content_hash"].is_unique
        assert set(half_embedded["first"]) <= set(frame["content_hash"])  # the committed vectors were kept
        assert unfinished_extractions(store, "d") == []  # the run the kill left 'running' is closed too
    finally:
        store.close()
