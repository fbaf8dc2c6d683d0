"""The Snapshots page with Streamlit's AppTest: list and search, the read-only ``?snapshot=``
link (through a router), import of a hostile and of a valid ``.replens`` file, delete with
confirmation, and the diff's ARI checked against scikit-learn."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import build_folder
from core import images, snapshots
from core.cluster import run_clustering
from core.encoders import load_encoder
from core.extract import embed_dataset
from core.store import Store
from ui import resources

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
PAGE = str(ROOT / "pages" / "snapshots.py")
PIXELS_KEY = "pixels@v1/pixels/none"
TIMEOUT = 60


# The routing proposed for app.py, verbatim: a shared link (?snapshot=<id>) on the home page
# (or any other page) switches to the Snapshots page and keeps the parameter.
def build_snapshots(base: Path) -> dict[str, object]:
    """Dataset 'shapes' (8 images, thumbnails cached), pixels embeddings, k-means k=2 and k=3
    runs, one snapshot of each, and a .replens export of the first."""
    db, cache = base / "replens.duckdb", base / "cache"
    store = Store(db, cache)
    try:
        build_folder(base / "images")
        scan = images.scan(base / "images", cache_dir=cache)
        store.ingest("shapes", scan.root, scan.records, scan.skipped)
        embed_dataset(store, "shapes", load_encoder("pixels", "cpu"), workers=1)
        two = run_clustering(store, "shapes", PIXELS_KEY, "kmeans", {"n_clusters": 2})
        three = run_clustering(store, "shapes", PIXELS_KEY, "kmeans", {"n_clusters": 3})
        a = snapshots.save_snapshot(store, two.run_id, title="Two groups", notes="noise squares, *k=2*")
        b = snapshots.save_snapshot(store, three.run_id, title="Three groups", notes="same images, k=3")
        archive = snapshots.export_snapshot(store, a, base / "two.replens").path
        n = snapshots.load_snapshot(store, a).n_points
    finally:
        store.close()
    return {"db": str(db), "cache": str(cache), "a": a, "b": b, "archive": archive, "n": n}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return build_snapshots(tmp_path_factory.mktemp("snapshots_page"))


@pytest.fixture()
def env(world: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The app on the module's store (after conftest's per-test isolation)."""
    monkeypatch.setenv("REPLENS_DB", str(world["db"]))
    monkeypatch.setenv("REPLENS_CACHE", str(world["cache"]))
    return world


def page(script: str = PAGE, **query: str) -> AppTest:
    at = AppTest.from_file(script, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def figure(at: AppTest, nth: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[nth].proto.spec)


def values(data: object) -> list:
    if isinstance(data, dict) and "bdata" in data:  # plotly's typed-array encoding
        import base64

        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)  # type: ignore[arg-type]


def n_points(fig: dict) -> int:
    return sum(len(values(trace["x"])) for trace in fig["data"])


def listed_titles(at: AppTest) -> list[str]:
    tables = [d.value for d in at.dataframe if "Title" in d.value.columns]
    return tables[0]["Title"].tolist() if tables else []


def test_lists_and_searches_snapshots(env: dict[str, object]) -> None:
    at = page()
    assert at.title[0].value == "Snapshots"
    assert sorted(listed_titles(at)) == ["Three groups", "Two groups"]
    at.text_input(key="snap_search").set_value("K=3").run()  # notes, any case
    assert listed_titles(at) == ["Three groups"]
    at.text_input(key="snap_search").set_value("shapes").run()  # dataset name
    assert len(listed_titles(at)) == 2
    at.text_input(key="snap_search").set_value("nothing like this").run()
    assert listed_titles(at) == [] and "No snapshot mentions" in at.info[0].value
    assert not at.exception


def test_link_opens_the_snapshot_read_only(env: dict[str, object], tmp_path: Path) -> None:
    sid = str(env["a"])
    at = page(str(APP), snapshot=sid[:10])  # a unique prefix is enough
    assert [h.value for h in at.header] == ["Two groups"]
    snap = snapshots.load_snapshot(resources.get_store(), sid)
    fig = figure(at)
    assert len(at.get("plotly_chart")) == 1 and n_points(fig) == snap.n_points == env["n"]
    # Hover text: the image's path and its cluster's label.
    names = dict(zip(snap.clusters["cluster"], snap.clusters["label"]))
    trace = fig["data"][0]
    row = int(values(trace["customdata"])[0])
    point = snap.points.iloc[row]
    assert trace["hovertext"][0] == f"{point['rel_path']}<br>cluster {point['cluster']}: {names[point['cluster']]}"
    # Read-only: no list, no inputs that change anything; a copyable link with the full id.
    for kind in ("text_input", "text_area", "data_editor", "file_uploader", "radio"):
        assert len(at.get(kind)) == 0, kind
    assert not [b for b in at.button if "delete" in (b.key or "")]
    assert any(c.value.endswith(f"/?snapshot={sid}") for c in at.code)
    clusters = [d.value for d in at.dataframe if "Label from" in d.value.columns][0]
    assert clusters["Label"].tolist() == snap.clusters["label"].tolist()
    assert clusters["Images"].sum() == snap.n_points


def test_link_to_an_unknown_snapshot_shows_an_error(env: dict[str, object]) -> None:
    at = page(snapshot="0123abcd")
    assert at.error and "No snapshot '0123abcd'" in at.error[0].value
    assert not at.get("plotly_chart")


def test_hostile_import_shows_error_and_adds_nothing(env: dict[str, object]) -> None:
    store = resources.get_store()
    before = store.snapshot_table_counts()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", "{}")
        zf.writestr("../evil", b"owned")
    at = page()
    at.radio(key="snap_section").set_value("Import").run()
    at.file_uploader(key="snap_upload").set_value(("evil.replens", buf.getvalue(), "application/zip")).run()
    assert not at.exception
    assert at.error and "evil.replens was not imported" in at.error[0].value and "Unsafe member" in at.error[0].value
    assert store.snapshot_table_counts() == before
    assert not (Path(str(env["cache"])).parent / "evil").exists()


def test_import_without_the_images_then_delete_with_confirmation(world: dict[str, object]) -> None:
    """On conftest's empty per-test store: what a colleague with another machine sees."""
    at = page()
    assert "No snapshots yet" in at.info[0].value
    at.radio(key="snap_section").set_value("Import").run()
    data = Path(str(world["archive"])).read_bytes()
    at.file_uploader(key="snap_upload").set_value(("two.replens", data, "application/zip")).run()
    assert not at.exception and not at.error
    assert "Imported two.replens" in at.success[0].value
    assert [h.value for h in at.header] == ["Two groups"]
    assert n_points(figure(at)) == world["n"]
    store = resources.get_store()
    snap = snapshots.load_snapshot(store, str(world["a"]))
    assert snap.origin == "imported"
    thumbs = [images.thumbnail_path(store.cache_dir, h) for h in snap.points["content_hash"]]
    assert all(p.is_file() for p in thumbs)
    for p in thumbs:  # an export made where thumbnails were missing: grey tiles, not errors
        p.unlink()
    at.run()
    assert not at.exception and not at.error
    assert any("shown grey" in c.value for c in at.caption)

    at.radio(key="snap_section").set_value("Browse").run()
    assert listed_titles(at) == ["Two groups"]
    at.button(key="snap_delete").click().run()
    assert "cannot be undone" in at.warning[0].value
    assert len(snapshots.list_snapshots(store)) == 1  # asking is not deleting
    at.button(key="snap_delete_no").click().run()
    assert not at.warning and len(snapshots.list_snapshots(store)) == 1
    at.button(key="snap_delete").click().run()
    at.button(key="snap_delete_yes").click().run()
    assert not at.exception
    assert "Deleted “Two groups”" in at.success[0].value
    assert len(snapshots.list_snapshots(store)) == 0 and "No snapshots yet" in at.info[0].value


def test_diff_shows_ari_and_the_confusion_matrix(env: dict[str, object]) -> None:
    from sklearn.metrics import adjusted_rand_score

    store = resources.get_store()
    a, b = (snapshots.load_snapshot(store, str(env[k])) for k in ("a", "b"))
    shared = sorted(a.assignments)
    expected = adjusted_rand_score([a.assignments[h] for h in shared], [b.assignments[h] for h in shared])

    at = page()
    at.radio(key="snap_section").set_value("Compare").run()
    at.selectbox(key="snap_diff_a").set_value(a.id).run()
    at.selectbox(key="snap_diff_b").set_value(b.id).run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["ARI"]) == pytest.approx(expected, abs=5e-5)
    assert metrics["Shared images"] == str(len(shared))
    heatmap = figure(at)["data"][0]
    assert heatmap["type"] == "heatmap"
    assert int(
        np.sum([values(row) for row in heatmap["z"]] if isinstance(heatmap["z"], list) else values(heatmap["z"]))
    ) == len(shared)
    # The same snapshot twice is not a comparison.
    at.selectbox(key="snap_diff_b").set_value(a.id).run()
    assert "Pick two different" in at.info[0].value
