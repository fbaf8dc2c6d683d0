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
    # No embeddings of these images here: the gallery keeps the stored order, and says why.
    assert any(c.value.startswith("In stored order") for c in at.caption)
    pick = next(s for s in at.selectbox if s.label == "Images of cluster").value
    members = snap.points[snap.points["cluster"] == pick]
    assert [c for c, _ in gallery_tiles(at)] == [p.rsplit("/", 1)[-1] for p in members["rel_path"]]
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


# --------------------------------------------------------------------------- the cluster gallery (issue 10, item 10)


@pytest.fixture(scope="module")
def mixed_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Dataset 'mixed': wide, tall and square images (ragged thumbnails), pixels embeddings, one
    k-means k=2 snapshot."""
    from PIL import Image

    base = tmp_path_factory.mktemp("snapshots_gallery")
    rng = np.random.default_rng(3)
    shapes = [(120, 40), (40, 120), (64, 64), (150, 30), (30, 90), (80, 80)]
    for folder in ("light", "dark"):
        (base / "images" / folder).mkdir(parents=True)
        for i, size in enumerate(shapes):
            low, high = (150, 256) if folder == "light" else (0, 110)
            pixels = rng.integers(low, high, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "images" / folder / f"{folder[0]}_{i}.png")
    db, cache = base / "replens.duckdb", base / "cache"
    store = Store(db, cache)
    try:
        scan = images.scan(base / "images", cache_dir=cache)
        store.ingest("mixed", scan.root, scan.records, scan.skipped)
        embed_dataset(store, "mixed", load_encoder("pixels", "cpu"), workers=1)
        run = run_clustering(store, "mixed", PIXELS_KEY, "kmeans", {"n_clusters": 2, "reduce": None})
        sid = snapshots.save_snapshot(store, run.run_id, title="Mixed shapes")
        frame, vectors = store.load_embeddings("mixed", PIXELS_KEY)
    finally:
        store.close()
    return {"db": str(db), "cache": str(cache), "id": sid, "vectors": dict(zip(frame["content_hash"], vectors))}


@pytest.fixture()
def media(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The in-memory media stores AppTest's runs create (where st.image puts the bytes it serves)."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    made: list[object] = []

    class Recording(MemoryMediaFileStorage):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    return made


def gallery_tiles(at: AppTest) -> list[tuple[str, str]]:
    """(caption, media url) of each tile of the cluster gallery (the last image list on the page)."""
    lists = at.get("image")
    assert lists, "no gallery"
    return [(img.caption, img.url) for img in lists[-1].proto.imgs]


def expected_typical_order(snap: snapshots.Snapshot, cluster: int, vectors: dict[str, np.ndarray]) -> list[str]:
    """File names of the cluster's members by cosine to the centroid of their unit vectors (numpy, by hand)."""
    members = snap.points[snap.points["cluster"] == cluster]
    X = np.stack([vectors[h] for h in members["content_hash"]]).astype(np.float64)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    centre = X.mean(axis=0)
    centre /= np.linalg.norm(centre)
    order = np.argsort(-(X @ centre), kind="stable")
    return [members["rel_path"].iloc[i].rsplit("/", 1)[-1] for i in order]


def test_cluster_gallery_is_ordered_by_typicality_in_uniform_tiles(
    mixed_world: dict[str, object], media: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    monkeypatch.setenv("REPLENS_DB", str(mixed_world["db"]))
    monkeypatch.setenv("REPLENS_CACHE", str(mixed_world["cache"]))
    sid = str(mixed_world["id"])
    at = page(str(APP), snapshot=sid)
    snap = snapshots.load_snapshot(resources.get_store(), sid)
    picker = next(s for s in at.selectbox if s.label == "Images of cluster")
    vectors = mixed_world["vectors"]
    for cluster in sorted(set(snap.points["cluster"].astype(int))):
        picker = next(s for s in at.selectbox if s.label == "Images of cluster")
        picker.set_value(cluster).run()
        assert not at.exception
        tiles = gallery_tiles(at)
        assert [caption for caption, _ in tiles] == expected_typical_order(snap, cluster, vectors)  # type: ignore[arg-type]
        assert any(c.value.startswith("Most typical first") for c in at.caption)
        # Every tile is the same square, whatever the image's shape (the thumbnails are not square).
        sizes = set()
        for _, url in tiles:
            name = url.rsplit("/", 1)[-1]
            data = next(m.get_file(name).content for m in media if name.split(".")[0] in m._files_by_id)  # type: ignore[attr-defined]
            sizes.add(Image.open(io.BytesIO(data)).size)
        assert len(sizes) == 1, sizes
        width, height = sizes.pop()
        assert width == height
    thumbs = [images.thumbnail_path(str(mixed_world["cache"]), h) for h in snap.points["content_hash"]]
    assert len({Image.open(p).size for p in thumbs}) > 1  # the thumbnails themselves are ragged
