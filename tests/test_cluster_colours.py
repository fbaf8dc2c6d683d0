"""A cluster has one colour everywhere: the Map and Clusters pages, the Snapshots page and the
HTML export all colour a cluster by its id (core.palette), whatever its size or legend rank.

The run is written with ids that are not in size order (cluster 7 is the largest, 2 the
smallest, plus noise), so colouring by legend rank, as the pages once did, would fail here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import cluster, snapshots
from core.palette import OTHER_COLOUR, cluster_colour
from core.store import Store
from tests.test_pages_clusters import DATASET, PIXELS_KEY, build_store
from ui.bigmap.sent import legend_traces

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 90
LABELS = {7: "big & bold", 4: "middle", 2: "small"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    paths = build_store(tmp_path_factory.mktemp("colours"))
    store = Store(paths["db"], paths["cache"])
    frame, vectors = store.load_embeddings(DATASET, PIXELS_KEY)
    hashes = frame["content_hash"].tolist()
    n = len(hashes)
    assigned = np.array([7] * (n - 6) + [4, 4, 4, 2, -1, -1])
    metrics = cluster.cluster_metrics(vectors, assigned)
    store.save_cluster_run(
        "colours1", DATASET, PIXELS_KEY, "kmeans", {}, hashes, assigned, metrics, n_clusters=3, noise_fraction=2 / n
    )
    for cluster_id, label in LABELS.items():
        store.set_cluster_label("colours1", cluster_id, label)
    snapshot_id = snapshots.save_snapshot(store, "colours1", title="colours")
    store.close()
    return {**paths, "snapshot": snapshot_id}


@pytest.fixture()
def env(prepared: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("REPLENS_DB", prepared["db"])
    monkeypatch.setenv("REPLENS_CACHE", prepared["cache"])
    return prepared


def expected() -> dict[int, str]:
    return {**{c: cluster_colour(c) for c in LABELS}, -1: OTHER_COLOUR}


def colours_by_cluster(traces: list[dict]) -> dict[int, str]:
    """Trace colours keyed by the cluster id their legend name starts with ("7 · …", "cluster 7", "noise")."""
    out: dict[int, str] = {}
    for trace in traces:
        name = trace["name"]
        if name.startswith("noise"):
            out[-1] = trace["marker"]["color"]
            continue
        match = re.match(r"(?:cluster )?(\d+)", name)
        assert match, name
        out[int(match.group(1))] = trace["marker"]["color"]
    return out


def chart(at: AppTest) -> list[dict]:
    assert not at.exception, [e.message for e in at.exception]
    return json.loads(at.get("plotly_chart")[0].proto.spec)["data"]


def test_the_clusters_page(env: dict[str, str]) -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "clusters.py"), default_timeout=TIMEOUT)
    at.session_state["rl_dataset"] = DATASET
    at.session_state["rl_encoder_key"] = PIXELS_KEY
    at.session_state["rl_cluster_run"] = "colours1"
    at.session_state["cl_layout"] = "PCA"
    at.run()
    assert colours_by_cluster(chart(at)) == expected()


def test_the_map_page(env: dict[str, str]) -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "map.py"), default_timeout=TIMEOUT)
    at.session_state["rl_dataset"] = DATASET
    at.session_state["rl_encoder_key"] = PIXELS_KEY
    at.session_state["rl_cluster_run"] = "colours1"
    at.session_state["map_method"] = "PCA"
    at.session_state["map_colour"] = "Cluster"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    # The legend the big map is sent (its colours blob, decoded as the browser reads it).
    traces = [{"name": t["name"], "marker": {"color": t["colour"]}} for t in legend_traces(at)]
    assert colours_by_cluster(traces) == expected()


def test_the_snapshots_page(env: dict[str, str]) -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "snapshots.py"), default_timeout=TIMEOUT)
    at.query_params["snapshot"] = env["snapshot"]
    at.run()
    assert colours_by_cluster(chart(at)) == expected()


def test_the_html_export(env: dict[str, str], tmp_path: Path) -> None:
    store = Store(env["db"], env["cache"])
    try:
        out = snapshots.snapshot_html(store, env["snapshot"], tmp_path / "s.html")
    finally:
        store.close()
    page = out.read_text(encoding="utf-8")
    data = re.search(r'<script type="application/json" id="snapshot-data">(.*?)</script>', page, re.S)
    assert data is not None
    traces = json.loads(data.group(1))["traces"]
    # Legend names in the export are HTML-escaped text ("big &amp; bold").
    assert any("big &amp; bold" in t["name"] for t in traces)
    assert colours_by_cluster(traces) == expected()
