"""The Diagnostics page driven headlessly with AppTest, checked against core.diagnostics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from test_pages_clusters import DATASET, PIXELS_KEY, build_store  # noqa: E402

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


def test_diagnostics_table_matches_core_and_is_cached(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

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
    assert not at.exception and not at.error, [e.message for e in at.exception]

    table = next(d.value for d in at.dataframe if "RankMe" in d.value.columns).set_index("Key")
    keys = store.embedded_keys(DATASET)
    assert sorted(table.index) == sorted(keys) == sorted([PIXELS_KEY, OTHER_KEY])
    for key in keys:
        images, vectors = store.load_embeddings(DATASET, key)
        truth = folder_truth(images)
        assert table.loc[key, "kNN accuracy"] == pytest.approx(diagnostics.knn_accuracy(vectors, truth))
        assert table.loc[key, "RankMe"] == pytest.approx(diagnostics.rankme(vectors))
        probe = diagnostics.linear_probe(vectors, truth)
        assert table.loc[key, "Linear probe"] == f"{probe['mean']:.3f} ± {probe['sd']:.3f}"
    assert table.loc[PIXELS_KEY, "kNN accuracy"] == pytest.approx(1.0)  # three clearly different folders

    # One spectrum line per encoder; the comparison matches core.
    spectrum = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(spectrum["data"]) == 2 and spectrum["layout"]["yaxis"]["type"] == "log"
    pairs = next(d.value for d in at.dataframe if "Linear CKA" in d.value.columns)
    expected = diagnostics.compare_encoders(store, DATASET)
    assert pairs["Linear CKA"].iloc[0] == pytest.approx(expected["cka"].iloc[0])
    assert pairs["Mutual kNN"].iloc[0] == pytest.approx(expected["mutual_knn"].iloc[0])

    # Rerunning (any widget change) reads the cache instead of recomputing.
    computed = len(calls)
    assert computed == 2
    at.run()
    assert not at.exception and len(calls) == computed
    assert next(d.value for d in at.dataframe if "RankMe" in d.value.columns).shape[0] == 2


def test_metric_helpers() -> None:
    import pandas as pd

    from pages.diagnostics import display_names, pair_matrix

    names = display_names(["a@v1/l/p", "a@v2/l/p", "import:x"])
    assert names == {"a@v1/l/p": "a@v1/l/p", "a@v2/l/p": "a@v2/l/p", "import:x": "import:x"}
    comparison = pd.DataFrame({"a": ["x", "x"], "b": ["y", "z"], "cka": [0.5, 0.25], "mutual_knn": [0.1, 0.2]})
    matrix = pair_matrix(comparison, ["x", "y", "z"], "cka")
    assert matrix.loc["y", "x"] == matrix.loc["x", "y"] == 0.5 and matrix.loc["z", "z"] == 1.0
    assert np.isnan(matrix.loc["y", "z"])  # never compared: no number made up
