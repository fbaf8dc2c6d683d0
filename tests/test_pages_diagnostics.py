"""The Diagnostics page driven headlessly with AppTest, checked against core.diagnostics."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from test_pages_clusters import DATASET, PIXELS_KEY, build_store, finish_jobs  # noqa: E402

from core import diagnostics  # noqa: E402
from core.cluster import folder_truth  # noqa: E402
from core.store import Store  # noqa: E402

PAGE = str(ROOT / "pages" / "diagnostics.py")
OTHER_KEY = "import:shuffled"
TIMEOUT = 120


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Clusters tests' 3-folder dataset, plus a second space: the pixel vectors with rows permuted."""
    env = build_store(tmp_path_factory.mktemp("diagnostics_page"))
    store = Store(env["db"], env["cache"])
    frame, vectors = store.load_embeddings(DATASET, PIXELS_KEY)
    store.register_encoder(OTHER_KEY, OTHER_KEY, "imported", "imported", "none", vectors.shape[1], {"id": OTHER_KEY})
    store.write_embeddings(
        OTHER_KEY, frame["content_hash"].tolist(), vectors[np.random.default_rng(1).permutation(len(vectors))]
    )
    store.close()
    return env


@pytest.fixture()
def store(prepared: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("REPLENS_DB", prepared["db"])
    monkeypatch.setenv("REPLENS_CACHE", prepared["cache"])
    from ui import resources

    return resources.get_store()


def open_page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state["rl_dataset"] = DATASET
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def table_with(at: AppTest, column: str) -> pd.DataFrame:
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, f"{len(found)} dataframes with column {column!r}"
    return found[0]


def plotted(values: object) -> np.ndarray:
    """A Plotly trace array from its JSON (a list, or a typed array as base64 'bdata')."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
    return np.asarray(values, dtype=float)


def test_diagnostics_table_matches_core_and_is_cached(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

    from pages.diagnostics import display_names

    st.cache_data.clear()
    calls: list[str] = []
    original = diagnostics.dataset_diagnostics

    def counting(*args, **kwargs):
        calls.extend(kwargs.get("keys") or ["all"])
        return original(*args, **kwargs)

    monkeypatch.setattr(diagnostics, "dataset_diagnostics", counting)
    at = open_page()
    assert not [d for d in at.dataframe if "RankMe" in d.value.columns]  # nothing computed before the button
    at.button(key="dg_go").click().run()
    finish_jobs(at)  # computed by a job on the server; the page shows its result when it ends
    assert not at.exception and not at.error, [e.message for e in at.exception]

    keys = store.embedded_keys(DATASET)
    assert sorted(keys) == sorted([PIXELS_KEY, OTHER_KEY])
    names = display_names(keys)
    # Issue 10: tables are cut into a few narrow columns each (no "Key" column, no one wide table).
    geometry = table_with(at, "Uniformity")
    by_folder = table_with(at, "kNN accuracy")
    rank = table_with(at, "RankMe")
    assert list(geometry.columns) == ["Encoder", "Images", "Dim", "Uniformity", "Mean LID", "Hubness"]
    assert list(by_folder.columns) == ["Encoder", "kNN accuracy", "Linear probe"]
    assert list(rank.columns) == ["Encoder", "RankMe", "Isotropic", "RankMe ÷ isotropic"]
    assert all(len(d.value.columns) <= 6 for d in at.dataframe)
    geometry, by_folder, rank = (t.set_index("Encoder") for t in (geometry, by_folder, rank))
    assert sorted(rank.index) == sorted(names[k] for k in keys)

    spectrum = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(spectrum["data"]) == 2 and spectrum["layout"]["yaxis"]["type"] == "log"
    lines = {trace["name"]: plotted(trace["y"]) for trace in spectrum["data"]}
    for key in keys:
        name = names[key]
        images, vectors = store.load_embeddings(DATASET, key)
        X = vectors.astype(np.float64)
        truth = folder_truth(images)
        assert by_folder.loc[name, "kNN accuracy"] == pytest.approx(diagnostics.knn_accuracy(vectors, truth))
        probe = diagnostics.linear_probe(vectors, truth)
        assert by_folder.loc[name, "Linear probe"] == f"{probe['mean']:.3f} ± {probe['sd']:.3f}"
        assert geometry.loc[name, "Images"] == len(X) and geometry.loc[name, "Dim"] == X.shape[1]
        assert geometry.loc[name, "Mean LID"] == pytest.approx(diagnostics.mean_lid(X))
        # RankMe and the plotted spectrum: the same centred matrix, by numpy here.
        s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
        p = s / s.sum()
        shown = lines[name]
        keep = np.isfinite(shown)  # floating-point zeros are left off the log chart
        np.testing.assert_allclose(shown[keep], p[keep], rtol=1e-6)
        assert rank.loc[name, "RankMe"] == pytest.approx(float(np.exp(-((p + 1e-7) * np.log(p + 1e-7)).sum())))
        # Against isotropic Gaussian vectors of the same shape (numpy SVDs of centred normal matrices).
        rng = np.random.default_rng(5)
        iso = []
        for _ in range(20):
            g = rng.normal(size=X.shape)
            sg = np.linalg.svd(g - g.mean(axis=0), compute_uv=False)
            q = sg / sg.sum() + 1e-7
            iso.append(float(np.exp(-(q * np.log(q)).sum())))
        assert rank.loc[name, "Isotropic"] == pytest.approx(np.mean(iso), rel=0.01)
        assert rank.loc[name, "RankMe ÷ isotropic"] == pytest.approx(
            rank.loc[name, "RankMe"] / rank.loc[name, "Isotropic"]
        )
    assert by_folder.loc[names[PIXELS_KEY], "kNN accuracy"] == pytest.approx(1.0)  # three clearly different folders
    ratio_help = next(
        json.loads(d.proto.columns)["RankMe ÷ isotropic"]["help"] for d in at.dataframe if "RankMe" in d.value.columns
    )
    assert "isotropic" in ratio_help and "collapse" in ratio_help

    # The comparison matches core.
    pairs = table_with(at, "Linear CKA")
    assert list(pairs.columns) == ["Encoder A", "Encoder B", "Images", "Linear CKA", "Mutual kNN"]
    expected = diagnostics.compare_encoders(store, DATASET)
    assert pairs["Linear CKA"].iloc[0] == pytest.approx(expected["cka"].iloc[0])
    assert pairs["Mutual kNN"].iloc[0] == pytest.approx(expected["mutual_knn"].iloc[0])

    # Rerunning (any widget change) reads the cache instead of recomputing.
    computed = len(calls)
    assert computed == 2
    at.run()
    assert not at.exception and len(calls) == computed
    assert table_with(at, "RankMe").shape[0] == 2
    # The result is stored with its job: another session shows it without computing anything.
    other = open_page()
    assert len(calls) == computed
    assert not [b for b in other.button if b.key == "dg_go"]  # nothing left to compute for this version
    pd.testing.assert_frame_equal(table_with(other, "RankMe"), table_with(at, "RankMe"))
    jobs = [r for r in store.job_records(dataset=DATASET) if r["kind"] == "diagnostics"]
    assert len(jobs) == 1 and jobs[0]["status"] == "done" and jobs[0]["params"]["encoder_keys"] == keys


def test_metric_helpers() -> None:
    import pandas as pd

    from pages.diagnostics import display_names, pair_matrix

    names = display_names(["a@v1/l/p", "a@v2/l/p", "import:x"])
    assert names == {"a@v1/l/p": "a@v1/l/p", "a@v2/l/p": "a@v2/l/p", "import:x": "import:x"}
    comparison = pd.DataFrame({"a": ["x", "x"], "b": ["y", "z"], "cka": [0.5, 0.25], "mutual_knn": [0.1, 0.2]})
    matrix = pair_matrix(comparison, ["x", "y", "z"], "cka")
    assert matrix.loc["y", "x"] == matrix.loc["x", "y"] == 0.5 and matrix.loc["z", "z"] == 1.0
    assert np.isnan(matrix.loc["y", "z"])  # never compared: no number made up


def test_table_helpers_keep_errors_and_keys_out_of_the_columns() -> None:
    import pandas as pd

    from pages.diagnostics import full_keys_caption, labels_table, metrics_table, problems, rank_table

    results = pd.DataFrame(
        [
            {
                "encoder": "pixels@v1/pixels/none",
                "n_images": 5,
                "dim": 3,
                "rankme": 2.0,
                "rankme_isotropic": 4.0,
                "rankme_ratio": 0.5,
                "uniformity": -1.0,
                "mean_lid": 2.0,
                "hubness": 0.1,
            },
            {"encoder": "import:x", "error": "no spread to measure"},
        ]
    )
    names = {"pixels@v1/pixels/none": "pixels · pixels/none", "import:x": "import:x"}
    assert problems(results, names) == ["import:x: no spread to measure"]
    assert full_keys_caption(list(names), names) == "Full keys: pixels · pixels/none = `pixels@v1/pixels/none`"
    assert full_keys_caption(["import:x"], names) is None
    assert labels_table(results, names) is None  # no folder labels: no table, a caption says why
    assert rank_table(results, names).iloc[0].tolist() == ["pixels · pixels/none", 2.0, 4.0, 0.5]
    table = metrics_table(results, names)
    assert "Problem" not in table.columns and "Key" not in table.columns
    assert np.isnan(table.loc[1, "Uniformity"])


def test_every_table_fits_the_page_in_chromium(tmp_path: Path) -> None:
    """Real browser (issue 10, item 10): no Diagnostics table scrolls sideways, at 1024 and 1440 px.

    The grid's scroller is as wide as its columns; wider than its box means columns are cut off
    on the right. A long encoder key is included on purpose. Screenshots: test-output/diagnostics/.
    """
    from tests.browser import browser_page, settle, streamlit_server

    env = build_store(tmp_path)
    built = Store(env["db"], env["cache"])
    frame, vectors = built.load_embeddings(DATASET, PIXELS_KEY)
    for key in (OTHER_KEY, "clip@openai/ViT-B-32/visual/cls-projection"):
        built.register_encoder(key, key, "imported", "imported", "none", vectors.shape[1], {"id": key})
        order = np.random.default_rng(len(key)).permutation(len(vectors))
        built.write_embeddings(key, frame["content_hash"].tolist(), vectors[order])
    built.close()
    shots = ROOT / "test-output" / "diagnostics"
    shots.mkdir(parents=True, exist_ok=True)
    with streamlit_server(Path(env["db"]), Path(env["cache"]), tmp_path / "server.log") as url:
        for width in (1024, 1440):
            with browser_page(width=width, height=1300) as page:
                page.goto(f"{url}/diagnostics")
                if width == 1024:
                    page.get_by_role("button", name="Compute diagnostics").click()
                page.get_by_role("heading", name="Encoder comparison").wait_for()
                settle(page)
                # Once computed, the result is stored for this dataset version: the second session (1440)
                # shows it without a click, and neither offers to compute it again.
                assert page.get_by_role("button", name="Compute diagnostics").count() == 0
                page.wait_for_function(
                    "() => document.querySelectorAll('[data-testid=\"stDataFrame\"] .dvn-scroller').length >= 2"
                )
                sizes = page.evaluate(
                    """() => [...document.querySelectorAll('[data-testid="stDataFrame"]')].map(el => {
                        const s = el.querySelector('.dvn-scroller');
                        return {scroll: s.scrollWidth, client: s.clientWidth};
                    })"""
                )
                page.mouse.move(0, 0)  # no button tooltip over the shot
                page.screenshot(path=str(shots / f"diagnostics_{width}.png"), full_page=True)
                assert all(s["scroll"] <= s["client"] for s in sizes), (width, sizes)
                assert len(sizes) == 4, sizes  # per encoder, folder labels, rank, comparison
