"""Map: a 2-D layout of a dataset's embeddings; select points to see and export the images."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core import images
from core.concepts.image_classes import concept_groups, concept_names, options_from_classes
from core.errors import RepLensError
from core.exports import files_zip, paths_csv
from core.mapfigure import (
    Colouring,
    colour_by_cluster,
    colour_by_folder,
    colour_by_keyword,
    colour_by_number,
)
from core.palette import OTHER_COLOUR
from core.reduce import UMAP_METRICS
from core.store import Store
from ui import state
from ui.bigmap import Blob, big_map, colours_payload, points_payload
from ui.clusters import run_cluster_names, run_description
from ui.errors import user_errors
from ui.gallery import gallery
from ui.image_classes import top_classes
from ui.layouts import method_name, page_layout
from ui.resources import DatasetView, get_store
from ui.widgets import dataset_and_key, remembered_select

METHOD_LABELS = {"UMAP": "umap", "PCA": "pca", "t-SNE": "tsne"}
_LAYOUT_JOBS = "map_layout_jobs"  # the panel of the layout job a big map waits for
COLOUR_OPTIONS = ("Folder", "Cluster", "ImageNet class", "Caption keyword", "Width", "Height", "File size", "None")
IMAGENET_LEVELS = ("Top-1 class", "Concepts with at least N images", "Under one concept")
NO_CLASS = "no ImageNet class"
NUMERIC = {"Width": ("width", "Width (px)"), "Height": ("height", "Height (px)"), "File size": ("n_bytes", "Bytes")}
MAP_HEIGHT = 640
DENSE_NOTE_ABOVE = 50_000  # points; from here on many share a screen pixel at the first view


def layout_controls() -> tuple[str, dict[str, Any]]:
    """Method and its parameters from the sidebar."""
    st.sidebar.divider()
    label = st.sidebar.radio("Layout", list(METHOD_LABELS), horizontal=True, key="map_method")
    method = METHOD_LABELS[label]
    params: dict[str, Any] = {}
    if method == "umap":
        with st.sidebar.expander("UMAP parameters", expanded=False):
            params["n_neighbors"] = st.slider(
                "n_neighbors", 2, 100, 15, key="umap_nn", help="Small: local detail. Large: global structure."
            )
            params["min_dist"] = st.slider(
                "min_dist", 0.0, 1.0, 0.1, 0.05, key="umap_md", help="How tightly points may pack together."
            )
            params["metric"] = st.selectbox("metric", UMAP_METRICS, key="umap_metric")
            params["random_state"] = int(st.number_input("seed", 0, 2**31 - 1, 42, key="umap_seed"))
    elif method == "pca":
        with st.sidebar.expander("PCA parameters", expanded=False):
            params["normalize"] = st.toggle(
                "L2-normalise vectors first",
                value=True,
                key="pca_normalize",
                help="On: PCA of the unit-length vectors, the cosine geometry UMAP, neighbours and clusters use. "
                "Off: PCA of the raw vectors, where vectors with larger norms dominate the first components.",
            )
    elif method == "tsne":
        with st.sidebar.expander("t-SNE parameters", expanded=False):
            params["perplexity"] = float(st.slider("perplexity", 5, 100, 30, key="tsne_perp"))
            params["random_state"] = int(st.number_input("seed", 0, 2**31 - 1, 42, key="tsne_seed"))
    return method, params


def colour_controls(store: Store, dataset: str, key: str, frame: pd.DataFrame) -> Colouring:
    """The colouring picked in the sidebar (hover shows each point's category or value)."""
    st.sidebar.divider()
    choice = st.sidebar.selectbox("Colour by", COLOUR_OPTIONS, key="map_colour")
    if choice == "ImageNet class":
        return imagenet_colouring(store, dataset, frame)
    return other_colouring(store, dataset, key, frame, choice)


def other_colouring(store: Store, dataset: str, key: str, frame: pd.DataFrame, choice: str) -> Colouring:
    if choice == "Folder":
        return colour_by_folder(frame)
    if choice == "Cluster":
        return cluster_colouring(store, dataset, key, frame)
    if choice == "Caption keyword":
        keyword = st.sidebar.text_input("Keyword in caption", key="map_keyword", placeholder="e.g. red")
        negate = (
            st.sidebar.radio("Match", ["contains", "does not contain"], horizontal=True, key="map_keyword_mode")
            == "does not contain"
        )
        if frame["caption"].isna().all():
            st.sidebar.caption("This dataset has no captions (.txt files next to the images).")
        return colour_by_keyword(frame, keyword.strip(), negate)
    if choice in NUMERIC:
        column, title = NUMERIC[choice]
        return colour_by_number(frame, column, title)
    return Colouring("All images")


def cluster_colouring(store: Store, dataset: str, key: str, frame: pd.DataFrame) -> Colouring:
    """Colour by a stored cluster run of these embeddings (default: the one picked on Clusters)."""
    runs = store.list_cluster_runs(dataset)
    runs = runs[runs["encoder_key"] == key]
    if runs.empty:
        st.sidebar.caption("No clustering of these embeddings yet: run one on the **Clusters** page.")
        return Colouring("All images")
    described = {row["run_id"]: run_description(row) for _, row in runs.iterrows()}
    run_id = remembered_select(
        "Cluster run",
        runs["run_id"].tolist(),
        state.CLUSTER_RUN_KEY,
        "map_cluster_run",
        format_func=described.__getitem__,
    )
    from core import cluster  # scikit-learn comes with it: only when colouring by cluster

    run = cluster.load_run(store, run_id)
    return colour_by_cluster(frame, run.hashes, run.labels, run_cluster_names(store, run))


def imagenet_colouring(store: Store, dataset: str, frame: pd.DataFrame) -> Colouring:
    """Colour by each image's top-1 ImageNet class (EfficientNet-Lite0's head), or by a WordNet concept above it."""
    found = top_classes(store, dataset, st.sidebar, key="map_lite0_compute")
    if found is None:
        return Colouring("All images")
    classes, tree = found
    level = st.sidebar.selectbox(
        "Concept level",
        IMAGENET_LEVELS,
        key="map_imagenet_level",
        help="Top-1 class: the ImageNet class EfficientNet-Lite0 rates highest. Concepts: each image's class "
        "rolled up the WordNet hierarchy to the most specific concept holding at least N images. Under one "
        "concept: whether the image's top class is under it (the sets the Bias page can use).",
    )
    names = np.array(concept_names(tree), dtype=object)
    index = classes["class_index"].to_numpy(dtype=np.int64)
    colours: dict[str, str] = {NO_CLASS: OTHER_COLOUR}
    if level == IMAGENET_LEVELS[1]:
        default = max(1, -(-len(classes) // 20))  # about 20 groups
        n = int(
            st.sidebar.number_input(
                "At least N images per concept",
                1,
                max(1, len(classes)),
                min(default, max(1, len(classes))),
                key="map_imagenet_min",
            )
        )
        labels = names[concept_groups(tree, index, n)]
        title = f"ImageNet concept (≥ {n} images)"
    elif level == IMAGENET_LEVELS[2]:
        options = options_from_classes(classes, tree, 1)
        proper = np.flatnonzero(options["n_images"].to_numpy() < len(classes))
        counted = dict(zip(options["synset"], options["n_images"]))
        shown = dict(zip(options["synset"], options["concept"]))
        synset = st.sidebar.selectbox(
            "Concept",
            options["synset"].tolist(),
            index=int(proper[0]) if len(proper) else 0,
            format_func=lambda s: f"{shown[s]} ({counted[s]:,} images)",
            key="map_imagenet_concept",
        )
        node = tree.nodes.index(synset)
        yes, no = f"under {shown[synset]}", f"not under {shown[synset]}"
        labels = np.where(tree.members[node, index], yes, no).astype(object)
        title = f"Top class under {shown[synset]}"
        colours[no] = OTHER_COLOUR
    else:
        labels = classes["class"].to_numpy(dtype=object)
        title = "ImageNet top-1 class"
    position = pd.Index(classes["content_hash"]).get_indexer(pd.Index(frame["content_hash"]))
    found_row = position >= 0
    safe = np.maximum(position, 0)
    categories = np.where(found_row, labels[safe], NO_CLASS).astype(object)
    return Colouring(title, categories=categories, colours=colours)


PCA_INPUT = {
    True: "PCA of the L2-normalised vectors (cosine geometry, as UMAP, neighbours and clusters use)",
    False: "PCA of the raw vectors (not normalised: large-norm vectors dominate; UMAP, neighbours and "
    "clusters use cosine)",
}


def describe_layout(method: str, params: dict[str, Any], n: int, cached: bool, seconds: float) -> str:
    if method == "pca":
        origin = "loaded from cache" if cached else f"computed in {seconds:.1f}s, now cached"
        return f"**{n:,} points** · {PCA_INPUT[bool(params.get('normalize', False))]} · {origin}"
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "random_state")
    seed = f", seed {params['random_state']}" if "random_state" in params and method != "pca" else ""
    origin = "loaded from cache" if cached else f"computed in {seconds:.1f}s, now cached"
    return f"**{n:,} points** · {method_name(method)}{f' ({shown}{seed})' if shown else ''} · {origin}"


def inspect_panel(store: Store, frame: pd.DataFrame, rows: np.ndarray) -> None:
    """The image behind a clicked point (the map's hover names it; this panel shows it)."""
    if not len(rows):
        st.caption(
            "Click a point to see its image here. To select a group, pick Box or Lasso select in the "
            "toolbar and drag; pick Pan to click single points again."
        )
        return
    row = frame.iloc[rows[0]]
    try:
        st.image(images.read_bytes(row["source"], row["rel_path"]), width="stretch")
    except RepLensError as exc:
        st.error(exc.for_page())
    st.markdown(f"**{row['rel_path']}**")
    details = [
        f"folder: {row['label'] or '(top level)'}",
        f"{int(row['width'])}×{int(row['height'])} px",
        f"{int(row['n_bytes']):,} bytes",
    ]
    st.caption(" · ".join(details))
    if isinstance(row["caption"], str) and row["caption"]:
        st.caption(f"“{row['caption']}”")
    if len(rows) > 1:
        st.caption(f"First of {len(rows):,} selected points.")
    if st.button("Find neighbours", icon=":material/join_inner:", key="to_neighbors", type="primary"):
        st.session_state[state.QUERY_KEY] = row["content_hash"]
        st.switch_page(state.PAGE_NEIGHBORS)


def selection_section(store: Store, frame: pd.DataFrame, rows: np.ndarray) -> None:
    if not len(rows):
        return
    chosen = frame.iloc[rows]
    # Other pages (Bias: "Map selection" as a stimulus set) read the selection by image hash.
    st.session_state[state.SELECTION_KEY] = chosen["content_hash"].tolist()
    st.session_state[state.SELECTION_DATASET_KEY] = st.session_state.get(state.DATASET_KEY)
    st.subheader(f"Selection · {len(chosen):,} images")
    counts = chosen["label"].replace("", "(top level)").value_counts()
    st.caption(
        "By folder: "
        + ", ".join(f"{name} {n}" for name, n in counts.head(8).items())
        + (" …" if len(counts) > 8 else "")
    )
    c1, c2, _ = st.columns([1, 1, 3])
    c1.download_button(
        "Paths (CSV)",
        lambda: paths_csv(chosen),  # built when clicked: 100k rows cost a rerun nothing
        file_name="selection.csv",
        mime="text/csv",
        icon=":material/download:",
        key="dl_csv",
    )
    c2.download_button(
        "Files (zip)",
        lambda: files_zip(chosen),
        file_name="selection.zip",
        mime="application/zip",
        icon=":material/folder_zip:",
        key="dl_zip",
    )
    captions = [p.rsplit("/", 1)[-1] for p in chosen["rel_path"]]
    gallery(store, chosen, captions, key="map_gallery")


def main() -> None:
    st.title("Map")
    store = get_store()
    picked = dataset_and_key(store)
    if picked is None:
        return
    dataset, key = picked
    method, params = layout_controls()
    with user_errors():
        view = DatasetView(store, dataset)
        frame, _ = view.embeddings(key)
        colouring = colour_controls(store, dataset, key, frame)
        n = len(frame)
        proj = page_layout(view, key, method, params, n, panel=_LAYOUT_JOBS)
        if proj is None:
            return
        st.caption(describe_layout(proj.method, proj.params, n, proj.cached, proj.seconds))
        if n > DENSE_NOTE_ABOVE:
            st.caption(
                f"All {n:,} points are drawn, none sampled. Where several share a screen pixel the map blends "
                "their colours into a density (the line under the map counts them); zoom in to separate them."
            )
        # The points are sent once per layout (keyed by it), the colours once per colouring; the
        # browser keeps both, so a rerun (a click, a page of the gallery) sends neither again.
        points = points_payload(
            f"{store.path}|{dataset}|{key}|{proj.key}|{view.version}", proj.coords, frame["rel_path"]
        )
        colours = colours_payload(colouring, n)
        map_and_selection(store, frame, points, colours)


@st.fragment  # a click or a box reruns the map and its gallery, not the pickers and the layout lookup
def map_and_selection(store: Store, frame: pd.DataFrame, points: Blob, colours: Blob) -> None:
    with user_errors():
        chart_col, panel_col = st.columns([3, 1])
        with chart_col:
            picked = big_map(points, colours, key="map_chart", height=MAP_HEIGHT)
        selected = picked.rows if picked is not None else np.zeros(0, dtype=np.int64)
        with panel_col:
            inspect_panel(store, frame, selected)
        selection_section(store, frame, selected)


main()
