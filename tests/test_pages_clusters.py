"""The Clusters page driven headlessly with AppTest, checked against what core stored."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import cluster  # noqa: E402
from core.datasets import ingest_path  # noqa: E402
from core.encoders import load_encoder  # noqa: E402
from core.extract import embed_dataset  # noqa: E402
from core.store import Store  # noqa: E402

PAGE = str(ROOT / "pages" / "clusters.py")
DATASET = "shapes3"
PIXELS_KEY = "pixels@v1/pixels/none"
TIMEOUT = 90
FOLDERS = {"reds": (210, 40, 40), "greens": (40, 190, 60), "blues": (40, 60, 210)}


def make_images(root: Path, per_class: int = 6) -> Path:
    """3 folders x ``per_class`` images: a clearly different colour and shape per folder."""
    rng = np.random.default_rng(0)
    for shape, (folder, base) in enumerate(FOLDERS.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = tuple(int(v) for v in np.clip(np.array(base) + rng.integers(-25, 25, 3), 0, 255))
            img = Image.new("RGB", (48, 48), (235, 235, 235))
            draw = ImageDraw.Draw(img)
            box = (6 + i, 6, 42 - i // 2, 42)
            [
                draw.rectangle,
                draw.ellipse,
                lambda b, fill, draw=draw: draw.polygon(
                    [(b[0], b[3]), (b[2], b[3]), ((b[0] + b[2]) // 2, b[1])], fill=fill
                ),
            ][shape](box, fill=colour)
            img.save(root / folder / f"{folder}_{i:02d}.png")
    return root


def build_store(base: Path) -> dict[str, str]:
    """A store with DATASET (18 images) embedded with the instant pixels encoder, through core."""
    db, cache = base / "replens.duckdb", base / "cache"
    store = Store(db, cache)
    ingest_path(store, DATASET, make_images(base / "images"))
    embed_dataset(store, DATASET, load_encoder("pixels", "cpu"))
    store.close()
    return {"db": str(db), "cache": str(cache)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_store(tmp_path_factory.mktemp("clusters_page"))


@pytest.fixture()
def store(prepared: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Store:
    """The page's own Store (one DuckDB connection per file in this process)."""
    monkeypatch.setenv("REPLENS_DB", prepared["db"])
    monkeypatch.setenv("REPLENS_CACHE", prepared["cache"])
    from ui import resources

    return resources.get_store()


def kmeans_run(store: Store, k: int = 3) -> cluster.ClusterRun:
    """A fresh run for one test (reuse=False: tests rename and label it, others must not see that)."""
    return cluster.run_clustering(store, DATASET, PIXELS_KEY, "kmeans", {"n_clusters": k, "reduce": None}, reuse=False)


def open_page(run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state["rl_dataset"] = DATASET
    at.session_state["rl_encoder_key"] = PIXELS_KEY
    at.session_state["cl_layout"] = "PCA"  # instant layout: UMAP is not what these tests check
    if run_id is not None:
        at.session_state["rl_cluster_run"] = run_id
    at.run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def finish_jobs(at: AppTest, timeout: float = 60) -> None:
    """After a click that started background jobs: wait until every job the session watches has
    ended on the runner (this process), then rerun the page until it has noticed each end."""
    from ui.jobs import WATCHED_KEY, get_runner

    for _ in range(5):
        watched = dict(at.session_state.get(WATCHED_KEY) or {})
        if not watched:
            return
        for job_id in watched:
            get_runner().wait(job_id, timeout=timeout)
        at.run()
    raise AssertionError(f"the page never noticed its jobs end: {at.session_state.get(WATCHED_KEY)}")


def cluster_jobs(store: Store) -> list[dict]:
    return [r for r in store.job_records(dataset=DATASET) if r["kind"] == "cluster"]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def table_with(at: AppTest, column: str) -> pd.DataFrame:
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no dataframe with column {column!r}"
    return found[0]


def test_kmeans_from_the_page_stores_a_run_whose_metrics_are_shown(store: Store) -> None:
    before = set(cluster.list_runs(store, DATASET)["run_id"])
    at = open_page()
    at.selectbox(key="cl_method").set_value("kmeans").run()
    at.radio(key="cl_k_mode").set_value("Fixed k").run()
    at.number_input(key="cl_k").set_value(3).run()
    at.toggle(key="cl_umap_kmeans").set_value(False).run()
    jobs_before = len(cluster_jobs(store))
    at.button(key="cl_go").click().run()
    finish_jobs(at)  # the clustering runs as a job on the server; the page selects its run when it ends
    assert_clean(at)

    new = set(cluster.list_runs(store, DATASET)["run_id"]) - before
    assert len(new) == 1
    run_id = new.pop()
    jobs = cluster_jobs(store)
    assert len(jobs) == jobs_before + 1 and jobs[0]["status"] == "done" and jobs[0]["result"]["run_id"] == run_id
    assert jobs[0]["params"] == {
        "encoder_key": PIXELS_KEY,
        "method": "kmeans",
        "params": {"n_clusters": 3, "reduce": "pca", "random_state": 0},
    }
    assert any(f"New run `{run_id}`: 3 clusters" in s.value for s in at.success)
    assert at.session_state["rl_cluster_run"] == run_id
    assert at.selectbox(key="w_cl_run").value == run_id
    meta, _, labels = store.load_cluster_run(run_id)
    stored = meta["metrics"]
    assert meta["method"] == "kmeans" and meta["params"]["n_clusters"] == 3 and meta["params"]["reduce"] == "pca"
    shown = metrics(at)
    assert shown["Clusters"] == str(stored["n_clusters"]) == "3"
    assert shown["Noise"] == f"{stored['noise_fraction']:.1%}"
    assert shown["Silhouette"] == f"{stored['silhouette']:.3f}"
    assert shown["ARI vs folders"] == f"{stored['ari']:.3f}"
    assert shown["NMI vs folders"] == f"{stored['nmi']:.3f}"
    assert shown["Hungarian acc."] == f"{stored['hungarian_accuracy']:.3f}"
    assert stored["hungarian_accuracy"] == pytest.approx(1.0)  # the three folders are easy to separate
    # The map has one trace per cluster, sized as stored.
    import json

    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    sizes = sorted(int(t["name"].rsplit("(", 1)[1].rstrip(")")) for t in figure["data"])
    assert sizes == sorted(np.bincount(labels).tolist())

    # Reopening the stored run reads it back: no new run, the same numbers.
    again = open_page(run_id)
    assert set(cluster.list_runs(store, DATASET)["run_id"]) - before == {run_id}
    assert metrics(again) == shown


def test_user_error_is_shown_not_raised(store: Store) -> None:
    at = open_page()
    at.selectbox(key="cl_method").set_value("kmeans").run()
    at.radio(key="cl_k_mode").set_value("Fixed k").run()
    at.number_input(key="cl_k").set_value(50).run()  # more clusters than the 18 images
    at.button(key="cl_go").click().run()
    finish_jobs(at)
    assert not at.exception
    assert at.error and "n_clusters=50" in at.error[0].value
    assert cluster_jobs(store)[0]["status"] == "failed"


def test_rename_persists(store: Store) -> None:
    run = kmeans_run(store)
    at = open_page(run.run_id)
    at.selectbox(key="cl_cluster").set_value(1).run()
    at.text_input(key="cl_rename").set_value("  my favourites ").run()
    at.button(key="cl_rename_go").click().run()
    assert_clean(at)
    labels = store.load_cluster_labels(run.run_id).set_index("cluster")
    assert labels.loc[1, "label"] == "my favourites" and bool(labels.loc[1, "edited"])
    assert labels.loc[1, "method"] == "user"
    assert table_with(at, "cohesion").set_index("cluster").loc[1, "label"] == "my favourites"


def test_label_edited_inline_persists_and_a_later_rename_wins(store: Store) -> None:
    run = kmeans_run(store)
    at = open_page(run.run_id)
    editor = next(k for k in at.session_state if k.startswith(f"cl_label_editor_{run.run_id}"))
    row = table_with(at, "candidates").reset_index(drop=True)
    target = int(row.loc[2, "cluster"])
    at.session_state[editor] = {"edited_rows": {2: {"label": "circles"}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert_clean(at)
    labels = store.load_cluster_labels(run.run_id).set_index("cluster")
    assert labels.loc[target, "label"] == "circles" and bool(labels.loc[target, "edited"])
    # The saved edit does not linger in the editor: a rename afterwards is not overwritten by it.
    at.selectbox(key="cl_cluster").set_value(target).run()
    at.text_input(key="cl_rename").set_value("discs").run()
    at.button(key="cl_rename_go").click().run()
    at.run()
    assert_clean(at)
    assert store.load_cluster_labels(run.run_id).set_index("cluster").loc[target, "label"] == "discs"


def test_merge_and_split_make_child_runs_that_become_selected(store: Store) -> None:
    run = kmeans_run(store)
    at = open_page(run.run_id)
    at.multiselect(key="cl_merge").set_value([0, 2]).run()
    at.button(key="cl_merge_go").click().run()
    assert_clean(at)
    merged_id = at.session_state["rl_cluster_run"]
    assert merged_id != run.run_id
    merged = cluster.load_run(store, merged_id)
    assert merged.parent_run_id == run.run_id and merged.method == "merge"
    assert merged.n_clusters == run.n_clusters - 1 == 2
    assert metrics(at)["Clusters"] == "2"

    at.selectbox(key="cl_cluster").set_value(0).run()
    at.number_input(key="cl_split_k").set_value(2).run()
    at.button(key="cl_split_go").click().run()
    assert_clean(at)
    split = cluster.load_run(store, at.session_state["rl_cluster_run"])
    assert split.parent_run_id == merged_id and split.method == "split" and split.n_clusters == 3


def test_text_labels_name_the_reds_cluster(store: Store) -> None:
    run = kmeans_run(store)
    images = store.dataset_images(DATASET)
    folder = dict(zip(images["content_hash"], images["rel_path"].str.split("/").str[0]))
    reds = {int(c) for h, c in zip(run.hashes, run.labels) if folder[h] == "reds"}
    assert len(reds) == 1
    red = reds.pop()

    at = open_page(run.run_id)
    clip = at.button(key="cl_label_clip")
    assert clip.disabled and any("no CLIP embeddings" in c.value for c in at.caption)
    at.button(key="cl_label_text").click().run()
    assert_clean(at)
    stored = store.load_cluster_labels(run.run_id).set_index("cluster")
    assert stored.loc[red, "method"] == "text"
    words = [c["word"] for c in stored.loc[red, "candidates"]]
    assert "reds" in words and stored.loc[red, "label"] == "reds"
    # The page shows the label and the candidates with their z-scores.
    shown = table_with(at, "candidates").set_index("cluster")
    assert shown.loc[red, "label"] == "reds"
    z = next(c["score"] for c in stored.loc[red, "candidates"] if c["word"] == "reds")
    assert f"reds ({z:.2f})" in shown.loc[red, "candidates"]


def test_snapshot_saves_and_loads(store: Store) -> None:
    from core.reduce import project
    from core.snapshots import load_snapshot

    run = kmeans_run(store)
    at = open_page(run.run_id)  # draws (and stores) the PCA map with the default seed 0
    # A newer stored layout: a snapshot saved without the page's projection key would take this one.
    project(store, DATASET, PIXELS_KEY, "pca", {"random_state": 1})
    at.text_input(key="cl_snap_title").set_value("Three colours").run()
    at.text_area(key="cl_snap_notes").set_value("k-means finds the folders").run()
    at.button(key="cl_snap_save").click().run()
    assert_clean(at)
    saved = [s.value for s in at.success if "Snapshot saved" in s.value]
    assert saved
    sid = saved[0].split("`")[1]
    snap = load_snapshot(store, sid)
    assert snap.title == "Three colours" and snap.notes == "k-means finds the folders"
    assert snap.clustering["run_id"] == run.run_id
    assert snap.projection["method"] == "pca" and snap.projection["params"]["random_state"] == 0  # the map shown here
    links = [m.value for m in at.markdown if f"?snapshot={sid}" in m.value]
    assert links


def test_snapshot_link_opens_the_snapshots_page_when_routed(store: Store, tmp_path: Path) -> None:
    """In a router that lists a Snapshots page (url "snapshots"), the link is a page link with ?snapshot=<id>."""
    run = kmeans_run(store)
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "clusters.py").symlink_to(PAGE)
    (tmp_path / "pages" / "snapshots.py").write_text("import streamlit as st\nst.title('Snapshots')\n")
    (tmp_path / "router.py").write_text(
        "import streamlit as st\n"
        "st.navigation([st.Page('pages/clusters.py', title='Clusters', url_path='clusters', default=True),\n"
        "               st.Page('pages/snapshots.py', title='Snapshots', url_path='snapshots')]).run()\n"
    )
    at = AppTest.from_file(str(tmp_path / "router.py"), default_timeout=TIMEOUT)
    for key, value in {
        "rl_dataset": DATASET,
        "rl_encoder_key": PIXELS_KEY,
        "cl_layout": "PCA",
        "rl_cluster_run": run.run_id,
    }.items():
        at.session_state[key] = value
    at.run()
    assert_clean(at)
    assert at.title[0].value == "Clusters"
    at.button(key="cl_snap_save").click().run()  # an empty title falls back to a descriptive one
    assert_clean(at)
    sid = next(s.value for s in at.success if "Snapshot saved" in s.value).split("`")[1]
    links = at.get("page_link")
    assert [(p.proto.page, p.proto.query_string) for p in links] == [("snapshots", f"snapshot={sid}")]


def test_label_edits_only_changed_nonempty_rows() -> None:
    from pages.clusters import label_edits

    before = pd.DataFrame({"cluster": [0, 1, 2], "label": ["a", "", "c"]})
    after = pd.DataFrame({"cluster": [0, 1, 2], "label": ["a", " new ", None]})
    assert label_edits(before, after) == [(1, "new")]


def test_seed_stability_is_stored_and_shown_to_the_next_session(store: Store) -> None:
    run = kmeans_run(store, k=2)
    at = open_page(run.run_id)
    assert "Stability (mean ARI between seeds)" not in metrics(at)
    at.button(key="cl_stability_go").click().run()
    assert_clean(at)
    stored = cluster.load_run(store, run.run_id).metrics["stability"]
    data = cluster.run_data(store, run)
    assert stored == cluster.stability(data.vectors, "kmeans", run.params, seeds=(0, 1, 2))
    assert metrics(at)["Stability (mean ARI between seeds)"] == f"{stored['mean_ari']:.3f}"
    fresh = open_page(run.run_id)  # another browser tab: read back from DuckDB, nothing recomputed
    assert metrics(fresh)["Stability (mean ARI between seeds)"] == f"{stored['mean_ari']:.3f}"


def shown_in_browser(box: object, before: tuple[str, str] | None) -> str:
    """What the browser's selectbox displays after a run of the page, modelled on Streamlit's frontend.

    The browser keeps the option text it last displayed for a widget (same element id) unless the
    server sends a value (``set_value`` with ``raw_value``); a new widget shows ``options[default]``.
    ``before`` is (element id, text displayed) after the previous run.
    """
    proto = box.proto  # type: ignore[attr-defined]
    if proto.set_value:
        return str(proto.raw_value)
    if before is not None and before[0] == box.id:  # type: ignore[attr-defined]
        return before[1]
    return str(box.options[proto.default])  # type: ignore[attr-defined]


def test_cluster_picker_shows_the_selected_runs_sizes_after_switching_runs(store: Store) -> None:
    """Issue 10 item 5: after switching runs the picker showed the previous run's sizes ("cluster 0 (76)")."""
    three = kmeans_run(store)
    two = cluster.run_clustering(
        store, DATASET, PIXELS_KEY, "agglomerative", {"n_clusters": 2, "reduce": None}, reuse=False
    )
    sizes = {r.run_id: np.bincount(store.load_cluster_run(r.run_id)[2]) for r in (three, two)}
    # A cluster id both runs have, with a different size in each: the stale text would be visible.
    common = [c for c in range(2) if sizes[three.run_id][c] != sizes[two.run_id][c]]
    assert common, sizes
    c = common[0]

    at = open_page(three.run_id)
    at.selectbox(key="cl_cluster").set_value(c).run()
    assert_clean(at)
    box = at.selectbox(key="cl_cluster")
    seen = (box.id, box.options[box.index])  # the option the user clicked
    assert seen[1] == f"cluster {c} ({sizes[three.run_id][c]})"

    for run_id in (two.run_id, three.run_id):  # there and back again
        at.selectbox(key="w_cl_run").set_value(run_id).run()
        assert_clean(at)
        box = at.selectbox(key="cl_cluster")
        assert box.value == c  # the same cluster id stays selected
        assert box.options == [f"cluster {i} ({n})" for i, n in enumerate(sizes[run_id])]
        seen = (box.id, shown_in_browser(box, seen))
        assert seen[1] == f"cluster {c} ({sizes[run_id][c]})"


def test_cluster_picker_shows_a_new_name_after_a_rename(store: Store) -> None:
    run = cluster.run_clustering(
        store, DATASET, PIXELS_KEY, "kmeans", {"n_clusters": 3, "reduce": None, "random_state": 7}
    )
    size = np.bincount(store.load_cluster_run(run.run_id)[2])
    at = open_page(run.run_id)
    at.selectbox(key="cl_cluster").set_value(1).run()
    box = at.selectbox(key="cl_cluster")
    seen = (box.id, box.options[box.index])  # the option the user clicked
    assert seen[1] == f"cluster 1 ({size[1]})"
    at.text_input(key="cl_rename").set_value("stripes").run()
    at.button(key="cl_rename_go").click().run()
    assert_clean(at)
    box = at.selectbox(key="cl_cluster")
    assert shown_in_browser(box, seen) == f"1 · stripes ({size[1]})"


def test_clustering_twice_with_the_same_settings_reopens_the_stored_run(store: Store) -> None:
    at = open_page()
    at.selectbox(key="cl_method").set_value("kmeans").run()
    at.radio(key="cl_k_mode").set_value("Fixed k").run()
    at.number_input(key="cl_k").set_value(4).run()
    at.toggle(key="cl_umap_kmeans").set_value(False).run()
    at.number_input(key="cl_seed").set_value(11).run()
    before = set(cluster.list_runs(store, DATASET)["run_id"])
    at.button(key="cl_go").click().run()
    finish_jobs(at)
    assert_clean(at)
    new = set(cluster.list_runs(store, DATASET)["run_id"]) - before
    assert len(new) == 1
    run_id = new.pop()
    at.button(key="cl_go").click().run()
    finish_jobs(at)
    assert_clean(at)
    assert set(cluster.list_runs(store, DATASET)["run_id"]) - before == {run_id}  # no second run
    assert at.session_state["rl_cluster_run"] == run_id
    assert any(f"stored run `{run_id}`" in i.value and "nothing was recomputed" in i.value for i in at.info)


# --------------------------------------------------------------------------- the k-choice curve (issue 10 item 10)


def k_curve_chart(at: AppTest) -> dict | None:
    """The k-choice chart's plotly spec (the map is the page's first chart), or None when not drawn."""
    import json

    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    found = [s for s in specs if s["layout"].get("meta") == "k-curve"]
    assert len(found) <= 1
    return found[0] if found else None


def auto_run(store: Store, method: str = "kmeans", **params: object) -> cluster.ClusterRun:
    return cluster.run_clustering(
        store, DATASET, PIXELS_KEY, method, {"n_clusters": None, "reduce": None, "k_max": 8, **params}, reuse=False
    )


def test_automatic_k_shows_the_stored_silhouette_curve_with_the_chosen_k_marked(store: Store) -> None:
    run = auto_run(store, random_state=23)
    stored = cluster.load_run(store, run.run_id).metrics
    assert stored["k_selection"] == "silhouette"
    scores = {int(k): float(v) for k, v in stored["k_scores"].items()}
    assert sorted(scores) == list(range(2, 9))

    at = open_page(run.run_id)
    spec = k_curve_chart(at)
    assert spec is not None
    line, chosen = spec["data"]
    assert line["x"] == sorted(scores) and line["y"] == pytest.approx([scores[k] for k in sorted(scores)])
    best = max(scores, key=lambda k: (scores[k], -k))  # the rule, computed here from the stored scores
    assert run.n_clusters == best
    assert chosen["x"] == [best] and chosen["y"] == pytest.approx([scores[best]])
    assert chosen["name"] == f"chosen k = {best}"
    # The three folders as a dotted line, the picker over the scored ks starting at the chosen k.
    assert [s["x0"] for s in spec["layout"]["shapes"]] == [3]
    picker = at.select_slider(key=f"cl_k_pick_{run.run_id}")
    assert picker.options == [str(k) for k in sorted(scores)] and picker.value == best


def test_eigengap_curve_is_the_gaps_of_the_stored_eigenvalues(store: Store) -> None:
    run = auto_run(store, "agglomerative", k_selection="eigengap", n_neighbors=5)
    stored = cluster.load_run(store, run.run_id).metrics
    values = np.asarray(stored["eigenvalues"])
    at = open_page(run.run_id)
    spec = k_curve_chart(at)
    assert spec is not None
    line, chosen = spec["data"]
    assert line["x"] == list(range(2, len(values)))
    np.testing.assert_allclose(line["y"], np.diff(values)[1:], atol=1e-12)
    assert chosen["x"] == [run.n_clusters] == [2 + int(np.argmax(np.diff(values)[1:]))]


def test_no_curve_when_k_was_given(store: Store) -> None:
    at = open_page(kmeans_run(store).run_id)
    assert k_curve_chart(at) is None


def test_picking_k_on_the_curve_and_rerunning_stores_a_run_with_that_k(store: Store) -> None:
    run = auto_run(store, random_state=29)
    picked = 5 if run.n_clusters != 5 else 6
    at = open_page(run.run_id)
    assert at.button(key="cl_k_rerun").disabled  # the chosen k is this run's own
    at.select_slider(key=f"cl_k_pick_{run.run_id}").set_value(picked).run()
    assert not at.button(key="cl_k_rerun").disabled
    before = set(cluster.list_runs(store, DATASET)["run_id"])
    at.button(key="cl_k_rerun").click().run()
    finish_jobs(at)
    assert_clean(at)

    new = set(cluster.list_runs(store, DATASET)["run_id"]) - before
    assert len(new) == 1
    new_id = new.pop()
    meta, _, labels = store.load_cluster_run(new_id)
    assert meta["method"] == "kmeans" and meta["params"]["n_clusters"] == picked
    assert meta["metrics"]["n_clusters"] == picked and len(np.unique(labels)) == picked
    assert meta["params"]["random_state"] == 29 and meta["params"]["reduce"] is None  # same space and seed
    # The new run is selected and shown.
    assert at.selectbox(key="w_cl_run").value == new_id and at.session_state["rl_cluster_run"] == new_id
    assert metrics(at)["Clusters"] == str(picked)
    assert any(f"`{new_id}`" in s.value and f"k = {picked}" in s.value for s in at.success)


def test_labels_keep_the_user_on_the_concepts_tab_and_sets_can_be_switched(store: Store) -> None:
    run = kmeans_run(store)
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state["rl_dataset"] = DATASET
    at.session_state["rl_encoder_key"] = PIXELS_KEY
    at.session_state["cl_layout"] = "PCA"
    at.session_state["rl_cluster_run"] = run.run_id
    at.session_state["cl_section"] = "Concepts"
    at.run()
    assert_clean(at)
    at.button(key="cl_label_text").click().run()
    assert_clean(at)
    assert at.session_state["cl_section"] == "Concepts"  # the action's rerun kept the tab
    at.button(key="cl_label_visual").click().run()
    assert_clean(at)
    assert at.session_state["cl_section"] == "Concepts"
    sets = store.list_label_sets(run.run_id).set_index("label_set")
    assert set(sets.index) == {"text", "visual"} and bool(sets.loc["visual", "shown"])
    text_names = dict(zip(*store.load_cluster_labels(run.run_id, "text")[["cluster", "label"]].T.values))
    picker = f"cl_label_set_{run.run_id}"
    at.segmented_control(key=picker).set_value("text").run()
    assert_clean(at)
    assert store.shown_label_set(run.run_id) == "text"
    shown = table_with(at, "candidates").set_index("cluster")["label"].to_dict()
    assert shown == {int(c): n for c, n in text_names.items()}


def test_imagenet_labels_from_the_page_are_their_own_set(store: Store) -> None:
    from core import concepts

    run = kmeans_run(store)
    at = open_page(run.run_id)
    at.button(key="cl_label_text").click().run()
    at.button(key="cl_label_imagenet").click().run()
    assert_clean(at)
    sets = store.list_label_sets(run.run_id).set_index("label_set")
    assert {"text", "imagenet"} <= set(sets.index) and bool(sets.loc["imagenet", "shown"])
    # Independent check: the labels shown are what the labeller computes without saving.
    expected = {c.cluster: c.label for c in concepts.label_run(store, run.run_id, "imagenet", save=False)}
    shown = table_with(at, "candidates").set_index("cluster")["label"].to_dict()
    assert {int(c): n for c, n in shown.items()} == expected


def test_a_fixed_k_run_does_not_list_k_search_settings(store: Store) -> None:
    run = kmeans_run(store)
    assert run.params.get("n_clusters") == 3 and "k_selection" in run.params  # stored, with defaults
    at = open_page(run.run_id)
    caption = next(c.value for c in at.caption if c.value.startswith("Run "))
    assert "n_clusters=3" in caption
    assert "k_selection" not in caption and "k_max" not in caption and "k_min" not in caption


def test_the_engines_warnings_reach_the_page_from_the_job(store: Store) -> None:
    at = open_page()
    at.selectbox(key="cl_method").set_value("hdbscan").run()
    at.toggle(key="cl_umap_hdbscan").set_value(False).run()
    at.number_input(key="cl_mcs").set_value(10).run()  # larger than each folder's 6 images: all noise
    at.button(key="cl_go").click().run()
    finish_jobs(at)
    assert not at.exception, [e.message for e in at.exception]
    job = cluster_jobs(store)[0]
    said = job["result"]["warnings"]  # what the clusterer warned, recorded in the job's thread
    assert job["status"] == "done" and len(said) == 1 and "called all n_samples=18 points noise" in said[0]
    from ui.text import md_escape

    assert md_escape(said[0]) in [w.value for w in at.warning]  # shown as the page showed it inline
    assert at.session_state["rl_cluster_run"] == job["result"]["run_id"]
