"""The Bias page: AppTest for its logic, and a real browser running a two-encoder battery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest
from test_pages_clusters import finish_jobs

from core import bias
from core.datasets import ingest_path
from core.encoders import load_encoder
from core.extract import embed_dataset
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
SETS = ("flowers", "insects", "pleasant", "unpleasant")
KEYS = ("pixels@v1/pixels/none", "random-resnet18@seed0/last/avg")


def _stimuli(root: Path, per_set: int = 5) -> Path:
    rng = np.random.default_rng(3)
    for k, name in enumerate(SETS):
        (root / name).mkdir(parents=True)
        for i in range(per_set):
            img = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            shape = draw.ellipse if k % 2 == 0 else draw.rectangle
            shape([8 + i, 8, 56, 56 - i], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            img.save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("biaspage")
    store = Store(base / "db.duckdb", base / "cache")
    ingest_path(store, "stimuli", _stimuli(base / "stimuli"))
    for encoder_id in ("pixels", "random-resnet18"):
        embed_dataset(store, "stimuli", load_encoder(encoder_id, "cpu"))
    assert tuple(store.embedded_keys("stimuli")) == KEYS
    store.close()
    return {"db": base / "db.duckdb", "cache": base / "cache", "base": base}


def _direct_effect_sizes(prepared: dict[str, Path]) -> dict[str, float]:
    store = Store(prepared["db"], prepared["cache"])
    try:
        out = {}
        for key in KEYS:
            frame, vectors = store.load_embeddings("stimuli", key)
            sets = [vectors[frame["label"].to_numpy() == name] for name in SETS]
            out[key] = bias.effect_size(*sets)
        return out
    finally:
        store.close()


def test_battery_across_two_encoders_in_apptest(prepared: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLENS_DB", str(prepared["db"]))
    monkeypatch.setenv("REPLENS_CACHE", str(prepared["cache"]))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/bias.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    # Defaults: the four folders in order, both encoders.
    assert [at.selectbox(key=f"w_bias_{r}").value for r in "xyab"] == list(SETS)
    assert list(at.multiselect(key="w_bias_encoders").value) == list(KEYS)
    at.number_input(key="w_bias_samples").set_value(300)
    at.button(key="w_bias_add").click()
    at.run()
    at.button(key="w_bias_run").click()
    at.run()
    finish_jobs(at)  # the battery runs as a job on the server; its results show when it ends
    assert not at.exception, [e.message for e in at.exception]
    table = next(d.value for d in at.dataframe if "effect_size" in d.value.columns)
    assert len(table) == 2
    assert list(table.columns[:7]) == ["test", "encoder", "effect_size", "ci_low", "ci_high", "p_value", "p_holm"]
    expected = _direct_effect_sizes(prepared)
    np.testing.assert_allclose(sorted(table["effect_size"]), sorted(expected.values()), atol=1e-9)
    np.testing.assert_allclose(table["p_holm"], bias.holm_correction(table["p_value"]))
    assert (table["exact"]).all() and (table["n_permutations"] == 252).all()  # C(10, 5) ≤ 300: exact
    null = json.loads(at.get("plotly_chart")[0].proto.spec)  # the permutation null with the observed S
    assert "(252 partitions shown of 252)" in null["layout"]["title"]["text"]  # exact: every partition
    from ui.resources import get_store  # the page's store

    job = next(r for r in get_store().job_records(dataset="stimuli") if r["kind"] == "bias")
    assert job["status"] == "done" and job["params"]["encoder_keys"] == list(KEYS)
    assert {len(h) for h in job["params"]["tests"][0]["sets"].values()} == {5}  # the four folders, as hashes
    # The Holm family is stated next to the adjusted p: every test x encoder of the battery.
    captions = " ".join(c.value for c in at.caption)
    assert "family of 2 p-values: all 1 test × 2 encoders" in captions
    assert "BCa bootstrap resampling all four sets" in captions


def test_browser_runs_a_battery_across_two_encoders(prepared: dict[str, Path], tmp_path: Path) -> None:
    from tests.browser import browser_page, settle, streamlit_server

    shots = ROOT / "test-output" / "bias"
    shots.mkdir(parents=True, exist_ok=True)
    # The AppTest above ran in this process and its cached Store still holds the file's lock.
    db = tmp_path / "db.duckdb"
    shutil.copy(prepared["db"], db)
    with streamlit_server(db, prepared["cache"], tmp_path / "server.log") as url, browser_page() as page:
        page.goto(f"{url}/bias")
        settle(page)
        try:
            page.get_by_role("button", name="Add test to battery").click(timeout=45_000)
        except Exception:
            page.screenshot(path=str(shots / "bias-failure.png"), full_page=True)
            raise
        settle(page)
        page.get_by_role("button", name="Run battery").click()
        settle(page)
        page.get_by_text("3 · Results").wait_for()
        # The table as the user downloads it: one row per (test, encoder).
        with page.expect_download() as download:
            page.get_by_role("button", name="Download JSON").click()
        rows = json.loads(Path(download.value.path()).read_text())
        assert len(rows) == 2 and {r["encoder"] for r in rows} == set(KEYS)
        expected = _direct_effect_sizes(prepared)
        for row in rows:
            assert row["effect_size"] == pytest.approx(expected[row["encoder"]], abs=1e-9)
        page.locator(".js-plotly-plot").first.wait_for()  # the permutation null is drawn
        page.screenshot(path=str(shots / "bias.png"), full_page=True)


def test_a_cluster_of_the_clusters_page_is_a_stimulus_set(
    prepared: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "db.duckdb"
    shutil.copy(prepared["db"], db)
    store = Store(db, prepared["cache"])
    images = store.dataset_images("stimuli")
    # Two clusters of the flower and insect images (the attribute folders are noise, -1), so the
    # clusters can be X and Y next to the pleasant and unpleasant folders without sharing an image.
    targets = images["label"].isin(["flowers", "insects"]).to_numpy()
    hashes = images["content_hash"].tolist()
    labels = np.where(targets, np.arange(len(hashes)) % 2, -1)
    store.save_cluster_run("run-t", "stimuli", KEYS[0], "kmeans", {}, hashes, labels, {}, 2, 0.5)
    store.close()
    monkeypatch.setenv("REPLENS_DB", str(db))
    monkeypatch.setenv("REPLENS_CACHE", str(prepared["cache"]))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["rl_cluster_run"] = "run-t"
    at.run()
    at.switch_page("pages/bias.py")
    at.run()
    # A cluster next to a folder it shares images with (here the default Y, insects) is refused.
    at.selectbox(key="w_bias_x").set_value("cluster 0 · unnamed")
    at.button(key="w_bias_add").click()
    at.run()
    assert any("share" in e.value for e in at.error), [e.value for e in at.error]
    at.selectbox(key="w_bias_y").set_value("cluster 1 · unnamed")
    at.run()
    at.number_input(key="w_bias_samples").set_value(300)
    at.multiselect(key="w_bias_encoders").set_value([KEYS[0]])
    at.button(key="w_bias_add").click()
    at.run()
    at.button(key="w_bias_run").click()
    at.run()
    finish_jobs(at)
    assert not at.exception, [e.message for e in at.exception]
    table = next(d.value for d in at.dataframe if "effect_size" in d.value.columns)
    assert int(table.loc[0, "n_x"]) == int((labels == 0).sum())
    assert int(table.loc[0, "n_y"]) == int((labels == 1).sum())
