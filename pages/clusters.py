"""Clusters: run or reopen a clustering, read its metrics, browse and edit clusters, name them
(concept labels with provenance) and freeze the result as a snapshot.

Thin page: widgets -> ``core.cluster`` / ``core.concepts`` / ``core.snapshots`` -> render.
Clustering (the sidebar's Cluster button, a re-run with k picked on the curve) runs as a ``cluster``
job on the server; the page selects the run when the job ends.
The selected run is shared with other pages under ``st.session_state["rl_cluster_run"]``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core import cluster, concepts
from core.cluster import NOISE, ClusterRun, KCurve, RunData
from core.jobs import Job
from core.mapfigure import NOISE_NAME, build_map_figure, cluster_names, colour_by_cluster, display_rows
from core.snapshots import save_snapshot
from core.store import Store
from ui.clusters import run_description
from ui.errors import user_errors
from ui.gallery import gallery
from ui.jobs import page_jobs, submit_job, watch_jobs
from ui.layouts import page_layout
from ui.resources import DatasetView, get_store, query_encoder
from ui.state import CLUSTER_RUN_KEY, PAGE_SNAPSHOTS
from ui.text import md_escape
from ui.widgets import dataset_and_key, short_key

RUN_KEY = CLUSTER_RUN_KEY  # shared with other pages (plain key, survives page switches)
_RUN_WIDGET = "w_cl_run"
_PENDING = "cl_pending_run"  # a run made in this session, to select on the next run of the script
_FLASH = "cl_flash"  # messages to show once after an action's rerun
_SNAPSHOT = "cl_last_snapshot"  # (run_id, snapshot_id) of the last snapshot saved here
_JOBS = "cl_jobs"  # the clustering jobs' panel
_LAYOUT_JOBS = "cl_layout_jobs"  # the panel of the layout job a big dataset's cluster map waits for
_FROM_CURVE = "cl_from_curve"  # job id -> the run whose k-curve it refits (for its message)

METHOD_LABELS = {
    "hdbscan": "HDBSCAN (density, finds noise)",
    "kmeans": "k-means",
    "agglomerative": "Agglomerative (Ward)",
    "leiden": "Leiden (kNN graph)",
}
# The space a method clusters when "Reduce with UMAP" is off (its own default otherwise).
NO_UMAP = {"hdbscan": None, "kmeans": "pca", "agglomerative": "pca", "leiden": None}
K_MODES = {"Fixed k": None, "Auto · silhouette": "silhouette", "Auto · eigengap": "eigengap"}
LAYOUTS = {"UMAP": "umap", "PCA": "pca"}
SCORE_MEANING = {
    "text": "log-odds z-score (Monroe et al. 2008) of the word in this cluster against the rest",
    "visual": "z-score of the pixel descriptor in this cluster against the rest",
    "clip": "TAC probability: softmax over clusters of CLIP word-centre similarity",
    "imagenet": "share of the cluster's ImageNet class probability under the concept minus the rest's",
}


# ---------------------------------------------------------------------------------------
# Pure helpers (tested without a Streamlit runtime)


def metric_items(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, shown value, help) for the metrics panel; folder scores only when stored."""

    def num(value: Any, fmt: str = "{:.3f}") -> str:
        return "n/a" if value is None else fmt.format(float(value))

    items = [
        ("Clusters", str(int(metrics["n_clusters"])), "Clusters found (noise excluded)."),
        ("Noise", num(metrics.get("noise_fraction", 0.0), "{:.1%}"), "Share of images left unclustered (-1)."),
        (
            "Silhouette",
            num(metrics.get("silhouette")),
            "Cosine silhouette of the non-noise images: near 1 compact and separated, near 0 overlapping.",
        ),
    ]
    if "ari" in metrics:
        items += [
            (
                "ARI vs folders",
                num(metrics["ari"]),
                "Adjusted Rand index against the top-level folders (noise = one group).",
            ),
            ("NMI vs folders", num(metrics["nmi"]), "Normalised mutual information against the folders."),
            (
                "Hungarian acc.",
                num(metrics["hungarian_accuracy"]),
                "Best one-to-one match of clusters to folders; noise counts as wrong.",
            ),
        ]
    return items


def browser_table(table: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    """cluster_table joined with the stored labels: cluster, label, size, share, cohesion, label method, edited."""
    labels = stored.set_index("cluster") if len(stored) else pd.DataFrame(columns=["label", "method", "edited"])
    out = table.copy()
    out["label"] = [str(labels.at[c, "label"]) if c in labels.index else "" for c in out["cluster"]]
    out["label method"] = [str(labels.at[c, "method"]) if c in labels.index else "" for c in out["cluster"]]
    out["edited"] = [bool(labels.at[c, "edited"]) if c in labels.index else False for c in out["cluster"]]
    out.loc[out["cluster"] == NOISE, "label"] = NOISE_NAME
    return out[["cluster", "label", "size", "share", "cohesion", "label method", "edited"]]


def k_curve_figure(curve: KCurve, n_folders: int | None = None) -> Any:
    """The k-choice curve: one point per k tried, the chosen k marked, the folder count as a dotted line."""
    import plotly.graph_objects as go

    chosen_score = curve.scores[curve.ks.index(curve.chosen)] if curve.chosen in curve.ks else None
    fig = go.Figure(
        go.Scatter(
            x=curve.ks,
            y=curve.scores,
            mode="lines+markers",
            name=curve.score_name,
            hovertemplate="k = %{x}<br>" + curve.score_name + " = %{y:.4f}<extra></extra>",
        )
    )
    if chosen_score is not None:
        fig.add_trace(
            go.Scatter(
                x=[curve.chosen],
                y=[chosen_score],
                mode="markers",
                name=f"chosen k = {curve.chosen}",
                marker={"size": 14, "symbol": "star", "color": "#d62728"},
                hovertemplate="chosen k = %{x}<br>" + curve.score_name + " = %{y:.4f}<extra></extra>",
            )
        )
    if n_folders and curve.ks[0] <= n_folders <= curve.ks[-1]:
        fig.add_vline(
            x=n_folders,
            line_dash="dot",
            line_color="grey",
            annotation_text=f"{n_folders} folders",
            annotation_position="top left",
        )
    fig.update_layout(
        height=300,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis_title="k (number of clusters)",
        yaxis_title=curve.score_name,
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
        meta="k-curve",
    )
    return fig


def candidates_text(candidates: list[dict[str, Any]], top: int = concepts.DEFAULT_TOP) -> str:
    return ", ".join(f"{c.get('word', '?')} ({float(c.get('score', float('nan'))):.2f})" for c in candidates[:top])


def label_editor_frame(table: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    """One row per (non-noise) cluster: cluster, size, label (editable), method, edited, top-5 candidates."""
    by_cluster = {int(r.cluster): r for r in stored.itertuples(index=False)} if len(stored) else {}
    rows = []
    for c, size in zip(table["cluster"], table["size"]):
        if c == NOISE:
            continue
        row = by_cluster.get(int(c))
        rows.append(
            {
                "cluster": int(c),
                "size": int(size),
                "label": str(row.label) if row is not None else "",
                "method": str(row.method) if row is not None else "",
                "edited": bool(row.edited) if row is not None else False,
                "candidates": candidates_text(row.candidates) if row is not None else "",
            }
        )
    return pd.DataFrame(rows, columns=["cluster", "size", "label", "method", "edited", "candidates"])


def label_edits(before: pd.DataFrame, after: pd.DataFrame) -> list[tuple[int, str]]:
    """(cluster, new label) for rows whose label the user changed to a non-empty name."""
    old = dict(zip(before["cluster"].astype(int), before["label"].fillna("").astype(str)))
    out = []
    for c, label in zip(after["cluster"].astype(int), after["label"]):
        new = "" if label is None or (isinstance(label, float) and np.isnan(label)) else str(label).strip()
        if new and new != old.get(c, "").strip():
            out.append((c, new))
    return out


# ---------------------------------------------------------------------------------------
# State and messages


def _flash(kind: str, message: str) -> None:
    st.session_state.setdefault(_FLASH, []).append((kind, message))


def _show_flash() -> None:
    for kind, message in st.session_state.pop(_FLASH, []):
        getattr(st, kind)(message)


def _done(message: str, new_run: str | None = None) -> None:
    """After an edit: remember the message (and the run to select) and draw the page again."""
    _flash("success", message)
    if new_run is not None:
        st.session_state[_PENDING] = new_run
    st.rerun()


@contextmanager
def _shown_warnings() -> Iterator[None]:
    """Show the engine's warnings (e.g. "HDBSCAN left 60% noise") as st.warning after the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", cluster.ClusteringWarning)
        warnings.simplefilter("always", concepts.LabellingWarning)
        try:
            yield
        finally:  # also when the block ends with st.rerun()
            for item in caught:
                if issubclass(item.category, (cluster.ClusteringWarning, concepts.LabellingWarning)):
                    _flash("warning", md_escape(str(item.message)))


@st.cache_resource(show_spinner=False, max_entries=16)
def _load_run(_store: Store, where: str, run_id: str) -> ClusterRun:
    """A stored run (runs never change once saved; edits make new runs), read once."""
    return cluster.load_run(_store, run_id)


# A run's aligned vectors are a copy of the embedding matrix: few entries.
@st.cache_resource(show_spinner=False, max_entries=3)
def _run_view(
    _store: Store, _view: DatasetView, where: str, run_id: str, key: str, version: str
) -> tuple[RunData, pd.DataFrame]:
    """(the run's images/vectors/labels, its cluster_table), shared read-only by reruns and sessions."""
    frame, vectors = _view.embeddings(key)
    data = cluster.run_data(_store, _load_run(_store, where, run_id), images=frame, vectors=vectors)
    return data, cluster.cluster_table(data.vectors, data.labels)


@st.cache_data(show_spinner=False, max_entries=64)
def _cluster_rows(
    _data: RunData, where: str, run_id: str, version: str, chosen: int, n: int = 24
) -> dict[str, np.ndarray]:
    """Rows (into the run's images) of a cluster's typical, borderline (with margins) and outlier images."""
    if chosen == NOISE:
        return {"outliers": cluster.outlier_images(_data.vectors, _data.labels, None, n=n)}
    borderline, margins = cluster.borderline_images(_data.vectors, _data.labels, chosen, n=n)
    return {
        "typical": cluster.typical_images(_data.vectors, _data.labels, chosen, n=n),
        "borderline": borderline,
        "margins": margins,
        "outliers": cluster.outlier_images(_data.vectors, _data.labels, chosen, n=n),
    }


def keep_shown_options_current(key: str, options: list[int], shown: list[str], multi: bool = False) -> None:
    """Before drawing the keyed picker ``key``: keep its value valid and the browser's text current.

    The browser keeps displaying the option text it last showed ("cluster 0 (76)") as long as the
    value stays valid, even when the text of that option changes (another run with other sizes, a
    renamed cluster); only a value sent from the server redraws it. So when the options' texts
    change, the value is set again (the same cluster, or the first one when it is gone).
    """
    seen_key = f"{key}__shown"
    current = st.session_state.get(key)
    if multi:
        kept = [c for c in (current or []) if c in options]
        if kept != (current or []) or (current and st.session_state.get(seen_key) != shown):
            st.session_state[key] = kept
    elif current not in options:
        st.session_state[key] = options[0]
    elif st.session_state.get(seen_key) != shown:
        st.session_state[key] = current
    st.session_state[seen_key] = shown


# ---------------------------------------------------------------------------------------
# Sidebar


def method_params(method: str) -> dict[str, Any]:
    """The chosen method's main parameters (only those its clusterer takes)."""
    side = st.sidebar
    accepted = set(cluster.make_clusterer(method).get_params())
    params: dict[str, Any] = {}
    if {"n_clusters", "k_selection"} <= accepted:
        mode = K_MODES[side.radio("Number of clusters", list(K_MODES), key="cl_k_mode", horizontal=True)]
        if mode is None:
            params["n_clusters"] = int(side.number_input("k", 2, 1000, 8, key="cl_k"))
        else:
            params.update(
                n_clusters=None,
                k_selection=mode,
                k_max=int(
                    side.number_input(
                        "Largest k tried", 3, 200, 30, key="cl_k_max", help="k is chosen among 2 … this value."
                    )
                ),
            )
    if method == "hdbscan" and "min_cluster_size" in accepted:
        size = int(
            side.number_input(
                "min_cluster_size (0 = auto)",
                0,
                100_000,
                0,
                key="cl_mcs",
                help="Smallest group HDBSCAN calls a cluster; auto = max(5, n/100).",
            )
        )
        params["min_cluster_size"] = size or None
    if "resolution" in accepted:
        params["resolution"] = float(
            side.slider(
                "Resolution", 0.05, 5.0, 1.0, 0.05, key="cl_resolution", help="Higher gives more, smaller communities."
            )
        )
        if "n_neighbors" in accepted:
            params["n_neighbors"] = int(side.number_input("Neighbours in the graph", 2, 200, 15, key="cl_nn"))
    if "reduce" in accepted:
        default = cluster.make_clusterer(method).get_params()["reduce"]
        umap = side.toggle(
            "Reduce with UMAP first",
            value=default == "umap",
            key=f"cl_umap_{method}",
            help="UMAP to 10 dimensions (cosine, n_neighbors=30, min_dist=0): the recipe that "
            "works for clustering self-supervised features. Slower the first time.",
        )
        params["reduce"] = "umap" if umap else NO_UMAP.get(method, None if default == "umap" else default)
        if umap and "n_components" in accepted:
            params["n_components"] = 10
    if "random_state" in accepted:
        params["random_state"] = int(side.number_input("Seed", 0, 2**31 - 1, 0, key="cl_seed"))
    return params


def run_controls(dataset: str, key: str) -> None:
    """Sidebar: choose a method and its parameters, and cluster."""
    st.sidebar.divider()
    st.sidebar.subheader("Run a clustering")
    methods = cluster.clustering_methods()
    method = st.sidebar.selectbox("Method", methods, key="cl_method", format_func=lambda m: METHOD_LABELS.get(m, m))
    with user_errors():
        params = method_params(method)
        if st.sidebar.button("Cluster", key="cl_go", type="primary", icon=":material/hub:", width="stretch"):
            start_clustering(dataset, key, method, params)


def start_clustering(dataset: str, key: str, method: str, params: dict[str, Any], curve_of: str | None = None) -> None:
    """Cluster as a job on the server (joining the same one if it runs) and rerun; its panel shows it,
    and when it ends the new (or reopened) run is selected. ``curve_of``: the run whose k-curve asked."""
    job_id = submit_job("cluster", dataset, {"encoder_key": key, "method": method, "params": params}, key=_JOBS)
    if curve_of is not None:
        st.session_state.setdefault(_FROM_CURVE, {})[job_id] = curve_of
    st.rerun()


def clustering_jobs(dataset: str, key: str) -> list[Job]:
    """Clusterings of this dataset × encoder that run or are queued, or were interrupted (to resume)."""
    return page_jobs(dataset, "cluster", keep=("interrupted",), match=lambda job: job.params.get("encoder_key") == key)


def clustering_ended(job: Job) -> None:
    """Select the run a clustering job made (or reopened) and say so; or say why it did not."""
    curve_of = st.session_state.get(_FROM_CURVE, {}).pop(job.job_id, None)
    if job.status == "cancelled":
        _flash("info", "The clustering was cancelled.")
    if job.status != "done" or not job.result:
        if job.status == "failed":
            _flash("error", md_escape(job.error or "The clustering failed."))
        return
    result = job.result
    for message in result.get("warnings") or []:
        _flash("warning", md_escape(str(message)))
    run_id, n_clusters = str(result["run_id"]), int(result.get("n_clusters") or 0)
    st.session_state[_PENDING] = run_id
    if curve_of is not None:
        again = f" Reopen `{curve_of}` under Stored runs to see this curve again."
        if result.get("reused"):
            _flash("info", f"Reopened stored run `{run_id}` with k = {n_clusters}.{again}")
        else:
            _flash("success", f"New run `{run_id}` with k = {n_clusters} from the curve.{again}")
    elif result.get("reused"):
        _flash(
            "info",
            f"Same method, parameters and images as stored run `{run_id}` ({n_clusters} clusters): "
            "reopened it, nothing was recomputed. Change a parameter or the seed for a new run.",
        )
    else:
        seconds = float((result.get("metrics") or {}).get("seconds") or 0)
        _flash("success", f"New run `{run_id}`: {n_clusters} clusters in {seconds:.1f}s.")


def run_picker(runs: pd.DataFrame) -> str:
    """Sidebar: the stored runs for this dataset × encoder, newest first; a new run is selected."""
    options = runs["run_id"].tolist()
    pending = st.session_state.pop(_PENDING, None)
    if pending in options:
        st.session_state[_RUN_WIDGET] = pending
    elif st.session_state.get(_RUN_WIDGET) not in options:
        remembered = st.session_state.get(RUN_KEY)
        st.session_state[_RUN_WIDGET] = remembered if remembered in options else options[0]
    described = {row["run_id"]: run_description(row) for _, row in runs.iterrows()}
    st.sidebar.divider()
    choice = st.sidebar.selectbox(
        f"Stored runs ({len(options)})",
        options,
        key=_RUN_WIDGET,
        format_func=lambda r: described.get(r, r),
        help="Reopening a stored run reads it back; nothing is recomputed.",
    )
    st.session_state[RUN_KEY] = choice
    return choice


# ---------------------------------------------------------------------------------------
# Main sections


def metrics_panel(run: ClusterRun, vectors_for_stability: Callable[[], np.ndarray]) -> None:
    items = metric_items(run.metrics)
    for column, (label, value, help_text) in zip(st.columns(len(items)), items):
        column.metric(label, value, help=help_text)
    details = []
    if run.metrics.get("k_selection") and run.metrics["k_selection"] != "given":
        details.append(f"k chosen by {run.metrics['k_selection']}")
    if "seconds" in run.metrics:
        details.append(f"fitted in {float(run.metrics['seconds']):.2f}s")
    if run.parent_run_id:
        details.append(f"{run.method} of run `{run.parent_run_id}`")
    # With k given, the k-choice settings played no part: listing them would say k was searched.
    unused = {"k_selection", "k_min", "k_max"} if run.params.get("n_clusters") is not None else set()
    shown = ", ".join(
        f"{k}={v}" for k, v in run.params.items() if v is not None and k != "parent_run_id" and k not in unused
    )
    st.caption(
        f"Run `{run.run_id}` · {md_escape(run.method)}"
        + (f" ({md_escape(shown)})" if shown else "")
        + (" · " + " · ".join(details) if details else "")
    )
    stable = run.metrics.get("stability")
    editable = run.method in cluster.clustering_methods()
    left, right = st.columns([1, 3])
    if left.button(
        "Seed stability",
        key="cl_stability_go",
        icon=":material/casino:",
        disabled=not editable,
        help="Refit with seeds 0, 1, 2 and report the ARI between every pair (1 = identical)."
        if editable
        else "A merge or split is an edit, not a fit: there is no seed to vary.",
    ):
        with st.spinner("Refitting with seeds 0, 1, 2…"), user_errors(), _shown_warnings():
            stable = cluster.record_stability(get_store(), run, vectors_for_stability(), seeds=(0, 1, 2))
            _load_run.clear()  # the stored run now carries it; every session reads it back
    if stable:
        right.metric(
            "Stability (mean ARI between seeds)",
            f"{stable['mean_ari']:.3f}",
            help=f"min {stable['min_ari']:.3f} over seeds {stable['seeds']}",
        )


def cluster_map(view: DatasetView, key: str, run: ClusterRun, names: dict[int, str], layout: str) -> str | None:
    """The map coloured by cluster (noise grey); returns the projection's key for snapshots."""
    frame, _ = view.embeddings(key)
    proj = page_layout(view, key, layout, {}, len(frame), panel=_LAYOUT_JOBS)
    if proj is None:
        return None
    colouring = colour_by_cluster(frame, run.hashes, run.labels, names)
    rows = display_rows(frame)
    fig = build_map_figure(proj.coords, frame, colouring, rows, height=520)
    st.plotly_chart(fig, key="cl_map", config={"scrollZoom": True, "displaylogo": False})
    if len(rows) < len(frame):
        st.caption(f"Drawing a stratified sample of {len(rows):,} of {len(frame):,} points.")
    covered = set(frame["content_hash"])
    return proj.key if all(h in covered for h in run.hashes) else None


def k_choice_section(dataset: str, key: str, run: ClusterRun) -> None:
    """The curve an automatic k came from, the chosen k marked, and a refit with another k picked from it."""
    curve = cluster.k_curve(run.metrics, run.params)
    if curve is None or run.method not in cluster.clustering_methods():
        return
    n_folders = run.metrics.get("n_classes")
    with st.expander(f"k = {curve.chosen} was chosen by {curve.selection}: the curve, and another k", expanded=True):
        st.caption(
            (
                "Mean silhouette of the clustering at each k, in the space clustered (highest wins)."
                if curve.selection == "silhouette"
                else "Gap after the k-th smallest eigenvalue of the kNN graph's normalized Laplacian (largest wins)."
            )
            + " Folders and clusters need not agree: a folder whose images form distinct visual groups "
            "scores higher split up. A plateau means several k fit about as well — pick one below."
        )
        st.plotly_chart(
            k_curve_figure(curve, int(n_folders) if n_folders else None),
            key="cl_k_curve",
            config={"displaylogo": False},
        )
        if curve.at_largest_k:
            st.warning(
                f"The best score is at the largest k tried ({curve.chosen}): the curve may still rise. "
                "Raise **Largest k tried** in the sidebar and cluster again to see more of it.",
                icon=":material/trending_up:",
            )
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        picked = left.select_slider(
            "Pick k from the curve",
            options=curve.ks,
            value=curve.chosen,
            key=f"cl_k_pick_{run.run_id}",
            help="Refits the same method, space and seed with this k (no sweep).",
        )
        if right.button(
            f"Re-run with k = {picked}",
            key="cl_k_rerun",
            icon=":material/replay:",
            disabled=picked == run.n_clusters,
            help="This run already has that k." if picked == run.n_clusters else None,
        ):
            with user_errors():
                start_clustering(
                    dataset, key, run.method, cluster.fixed_k_params(run.params, int(picked)), curve_of=run.run_id
                )


def browser(
    store: Store, run: ClusterRun, data: RunData, table: pd.DataFrame, names: dict[int, str], version: str
) -> None:
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="cl_table",
        column_config={
            "share": st.column_config.NumberColumn(format="percent"),
            "cohesion": st.column_config.NumberColumn(format="%.3f", help="Mean cosine of members to their centroid."),
            "label method": st.column_config.TextColumn(help="Where the label came from: text, visual, clip or user."),
        },
    )
    ids = table["cluster"].astype(int).tolist()
    sizes = dict(zip(ids, table["size"]))

    def picked_name(c: int) -> str:
        return f"{names.get(c, c)} ({sizes[c]})"

    keep_shown_options_current("cl_cluster", ids, [picked_name(c) for c in ids])
    chosen = st.selectbox("Cluster", ids, key="cl_cluster", format_func=picked_name)
    found = _cluster_rows(data, str(store.path), run.run_id, version, int(chosen))
    name_of = data.images["rel_path"].map(lambda p: str(p).rsplit("/", 1)[-1]).to_numpy()

    def show(rows: np.ndarray, key: str, captions: list[str] | None = None) -> None:
        gallery(store, data.images.iloc[rows], captions or list(name_of[rows]), key=key)

    if chosen == NOISE:
        st.markdown("**Noise points, least like any cluster first**")
        show(found["outliers"], "cl_noise")
    else:
        # Keyed tabs keep their place in session state: after an action's rerun the user stays put.
        typical, borderline, outliers = st.tabs(
            ["Most typical", "Borderline", "Outliers"], key="cl_browse_view", on_change="rerun"
        )
        with typical:
            st.caption("Members nearest the cluster's centroid (cosine): what the cluster is about.")
            show(found["typical"], "cl_typical")
        with borderline:
            st.caption(
                "Members almost as close to another cluster's centroid (margin = difference of the two "
                "cosines, smallest first): where the cluster blurs into its neighbours."
            )
            rows = found["borderline"]
            if len(rows):
                show(rows, "cl_borderline", [f"{m:.3f} · {n}" for m, n in zip(found["margins"], name_of[rows])])
            else:
                st.caption("Needs at least two clusters.")
        with outliers:
            st.caption("Members least similar to their own centroid.")
            show(found["outliers"], "cl_outliers")
    edit_controls(store, run, data, chosen, ids, names)


def edit_controls(
    store: Store, run: ClusterRun, data: RunData, chosen: int, ids: list[int], names: dict[int, str]
) -> None:
    st.markdown("**Edit**")
    rename, merge, split = st.columns(3)
    real = [c for c in ids if c != NOISE]
    keep_shown_options_current("cl_merge", real, [names.get(c, str(c)) for c in real], multi=True)
    with rename:
        new_name = st.text_input(
            "Rename this cluster",
            key="cl_rename",
            disabled=chosen == NOISE,
            placeholder="e.g. sunsets",
            help="Your name wins over labels computed later.",
        )
        if st.button("Rename", key="cl_rename_go", disabled=chosen == NOISE, icon=":material/edit:"):
            with user_errors():
                cluster.rename_cluster(store, run.run_id, chosen, new_name)
                _done(f"Cluster {chosen} is now called “{md_escape(new_name.strip())}”.")
    with merge:
        picked = st.multiselect(
            "Merge clusters",
            real,
            key="cl_merge",
            format_func=lambda c: names.get(c, str(c)),
            help="A new run where these clusters become one (the parent run is kept).",
        )
        if st.button("Merge", key="cl_merge_go", disabled=len(picked) < 2, icon=":material/merge:"):
            with user_errors():
                new = cluster.merge_clusters(store, run.run_id, picked, images=data.images, vectors=data.vectors)
                _done(f"Merged {sorted(picked)} into new run `{new.run_id}` ({new.n_clusters} clusters).", new.run_id)
    with split:
        how = st.radio(
            "Split with", ["kmeans", "hdbscan"], key="cl_split_method", horizontal=True, disabled=chosen == NOISE
        )
        k = int(st.number_input("Parts", 2, 50, 2, key="cl_split_k", disabled=chosen == NOISE or how != "kmeans"))
        if st.button("Split this cluster", key="cl_split_go", disabled=chosen == NOISE, icon=":material/call_split:"):
            frame, vectors = data.images, data.vectors
            with user_errors(), _shown_warnings():
                new = cluster.split_cluster(store, run.run_id, chosen, method=how, k=k, images=frame, vectors=vectors)
                _done(f"Split cluster {chosen} into new run `{new.run_id}` ({new.n_clusters} clusters).", new.run_id)


def concepts_section(store: Store, dataset: str, run: ClusterRun, table: pd.DataFrame) -> None:
    st.caption(
        "Name clusters with their provenance: every label keeps its ranked candidates and scores. "
        "A name you type wins over any recomputation."
    )
    clip_keys = [k for k in store.embedded_keys(dataset) if k.startswith("clip-")]
    text, visual, imagenet, clip = st.columns(4)
    method = None
    if text.button(
        "Text labels",
        key="cl_label_text",
        icon=":material/text_fields:",
        width="stretch",
        help="Folder names, file-name words and captions, ranked by log-odds z-score (no model).",
    ):
        method, options = "text", {}
    if visual.button(
        "Visual labels",
        key="cl_label_visual",
        icon=":material/palette:",
        width="stretch",
        help="Pixel descriptors (brightness, colour, detail …) as z-scores against the rest.",
    ):
        method, options = "visual", {}
    if imagenet.button(
        "ImageNet labels",
        key="cl_label_imagenet",
        icon=":material/category:",
        width="stretch",
        help="ImageNet-1k classes from EfficientNet-Lite0, rolled up WordNet to the concept that covers most of "
        "the cluster (offline; embeds the dataset with efficientnet-lite0 once).",
    ):
        method, options = "imagenet", {}
    clip_help = (
        "CLIP vocabulary labels (TAC-style) from the dataset's CLIP embeddings."
        if clip_keys
        else f"Off: {md_escape(dataset)} has no CLIP embeddings. Extract clip-vitb32 on the Data page to enable it."
    )
    if clip.button(
        "CLIP labels",
        key="cl_label_clip",
        icon=":material/translate:",
        width="stretch",
        disabled=not clip_keys,
        help=clip_help,
    ):
        method, options = "clip", {"encoder_key": clip_keys[0]}
    if not clip_keys:
        st.caption(
            f"CLIP labels are off: **{md_escape(dataset)}** has no CLIP embeddings (a key starting with `clip-`). "
            "Extract them with clip-vitb32 on the Data page."
        )
    if method is not None:
        with st.spinner(f"Computing {method} labels…"), user_errors(), _shown_warnings():
            if method == "clip":
                options["encoder"] = query_encoder(options["encoder_key"])
            found = concepts.label_run(store, run.run_id, method, **options)
            renamed = sum(1 for c in found if c.computed_label and not c.edited)
            _done(
                f"{method} labels for {len(found)} cluster(s), now shown"
                + (f"; {renamed} name(s) made unique" if renamed else "")
                + "."
            )

    label_set_picker(store, run)
    stored = store.load_cluster_labels(run.run_id)
    before = label_editor_frame(table, stored)
    if before.empty:
        st.caption("No clusters to label in this run.")
        return
    methods = sorted(set(stored["method"]) & set(SCORE_MEANING)) if len(stored) else []
    st.markdown("**Labels** · edit a name in the *label* column to rename the cluster.")
    if methods:
        st.caption("Candidates (score): " + "; ".join(f"{m}: {SCORE_MEANING[m]}" for m in methods) + ".")
    # Keyed by the stored labels too: once an edit is saved (or labels change elsewhere) the editor
    # starts afresh, so a stale pending edit can never overwrite a later rename.
    version = hashlib.sha1(before[["cluster", "label"]].to_json().encode()).hexdigest()[:10]
    after = st.data_editor(
        before,
        key=f"cl_label_editor_{run.run_id}_{store.shown_label_set(run.run_id)}_{version}",
        hide_index=True,
        width="stretch",
        disabled=["cluster", "size", "method", "edited", "candidates"],
        column_config={
            "label": st.column_config.TextColumn("label", help="Type a name; it is saved as your edit."),
            "candidates": st.column_config.TextColumn(f"top-{concepts.DEFAULT_TOP} candidates (score)"),
            "edited": st.column_config.CheckboxColumn("edited by you"),
        },
    )
    changes = label_edits(before, after)
    if changes:
        with user_errors():
            for c, label in changes:
                store.set_cluster_label(run.run_id, c, label)
            _done("Saved " + ", ".join(f"cluster {c} → “{md_escape(label)}”" for c, label in changes) + ".")
    provenance(stored)


def label_set_picker(store: Store, run: ClusterRun) -> None:
    """Which label set the run shows (map, pickers, snapshot); edits go into the shown set."""
    sets = store.list_label_sets(run.run_id)
    if sets.empty:
        return
    counts = dict(zip(sets["label_set"], sets["n_labels"]))
    key = f"cl_label_set_{run.run_id}"
    st.session_state[key] = store.shown_label_set(run.run_id)  # mirror the store (label_run may have changed it)

    def show_picked() -> None:
        store.set_shown_label_set(run.run_id, st.session_state[key])

    st.segmented_control(
        "Labels shown",
        list(counts),
        key=key,
        required=True,
        on_change=show_picked,
        format_func=lambda name: f"{md_escape(name)} ({counts[name]})",
        help="Each method keeps its own names; pick which the map, pickers and snapshots show. "
        "Renames go into this set.",
    )


def provenance(stored: pd.DataFrame) -> None:
    """Every candidate with all its numbers, for one cluster at a time."""
    with_candidates = stored[[bool(c) for c in stored["candidates"]]] if len(stored) else stored
    if with_candidates.empty:
        return
    with st.expander("Provenance: candidates and scores per cluster"):
        options = with_candidates["cluster"].astype(int).tolist()
        if st.session_state.get("cl_prov_cluster") not in options:
            st.session_state["cl_prov_cluster"] = options[0]
        c = st.selectbox("Cluster", options, key="cl_prov_cluster")
        row = with_candidates[with_candidates["cluster"] == c].iloc[0]
        st.caption(f"Computed by **{md_escape(row['method'])}**" + (" (since renamed by you)" if row["edited"] else ""))
        computed = row.get("computed_label")
        if isinstance(computed, str) and computed != row["label"]:
            st.caption(f"The labeller said “{md_escape(computed)}”.")
        st.dataframe(pd.DataFrame(row["candidates"]), hide_index=True, width="stretch", key="cl_prov_table")


def snapshot_section(store: Store, dataset: str, run: ClusterRun, projection_key: str | None) -> None:
    st.caption("Freeze this run (clusters, labels, map, metrics) as a shareable snapshot.")
    default_title = f"{dataset} · {run.method} · {run.n_clusters} clusters"
    title = st.text_input("Title", key="cl_snap_title", placeholder=default_title)
    notes = st.text_area("Notes", key="cl_snap_notes", placeholder="What did you find?")
    if st.button("Save snapshot", key="cl_snap_save", type="primary", icon=":material/photo_camera:"):
        with st.spinner("Saving the snapshot…"), user_errors():
            sid = save_snapshot(
                store, run.run_id, title=title.strip() or default_title, notes=notes, projection_key=projection_key
            )
            st.session_state[_SNAPSHOT] = (run.run_id, sid)
    saved = st.session_state.get(_SNAPSHOT)
    if saved and saved[0] == run.run_id:
        sid = saved[1]
        st.success(f"Snapshot saved: `{sid}`", icon=":material/check_circle:")
        snapshot_link(sid)


def snapshot_link(sid: str) -> None:
    """A link to the Snapshots page opening this snapshot (plain link where that page is not routed)."""
    try:
        st.page_link(
            PAGE_SNAPSHOTS,
            label="Open on the Snapshots page",
            icon=":material/photo_library:",
            query_params={"snapshot": sid},
        )
    except Exception:  # StreamlitPageNotFoundError & co.: the page is not in this app's router
        st.markdown(f"[Open on the Snapshots page](snapshots?snapshot={sid})")


# ---------------------------------------------------------------------------------------


def main() -> None:
    st.title("Clusters")
    st.caption("Which groups does this encoder form? Cluster, check against folders, look inside, name, edit, share.")
    store = get_store()
    picked = dataset_and_key(store)
    if picked is None:
        return
    dataset, key = picked
    view = DatasetView(store, dataset)
    run_controls(dataset, key)
    runs = cluster.list_runs(store, dataset)
    runs = runs[runs["encoder_key"] == key].reset_index(drop=True)
    layout = LAYOUTS[
        st.sidebar.radio(
            "Map layout",
            list(LAYOUTS),
            key="cl_layout",
            horizontal=True,
            help="UMAP with the Map page's defaults (shared cache), or PCA.",
        )
    ]
    _show_flash()
    watch_jobs(lambda: [job.job_id for job in clustering_jobs(dataset, key)], key=_JOBS, on_end=clustering_ended)
    if runs.empty:
        st.info(
            f"No clustering of **{md_escape(dataset)}** with {md_escape(short_key(key))} yet. Pick a method in "
            "the sidebar and press **Cluster**.",
            icon=":material/info:",
        )
        return
    run_id = run_picker(runs)
    with user_errors():
        run = _load_run(store, str(store.path), run_id)
        data, clusters = _run_view(store, view, str(store.path), run_id, key, view.version)
        stored = store.load_cluster_labels(run.run_id)
        table = browser_table(clusters, stored)
        names = cluster_names(
            table["cluster"].tolist(), {int(c): str(name) for c, name in zip(stored["cluster"], stored["label"])}
        )
        metrics_panel(run, lambda: data.vectors)
        projection_key = cluster_map(view, key, run, names, layout)
        k_choice_section(dataset, key, run)
        tab_browse, tab_concepts, tab_snapshot = st.tabs(
            ["Browse clusters", "Concepts", "Save snapshot"], key="cl_section", on_change="rerun"
        )
        with tab_browse:
            browser(store, run, data, table, names, view.version)
        with tab_concepts:
            concepts_section(store, dataset, run, table)
        with tab_snapshot:
            snapshot_section(store, dataset, run, projection_key)


if __name__ == "__main__":  # Streamlit runs pages as __main__; tests import the helpers
    main()
