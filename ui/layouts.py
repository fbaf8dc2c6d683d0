"""How a page gets a 2-D layout: from the cache, computed in the page when that takes seconds, or
as a job on the server when it takes minutes (so it outlives the tab and shows progress).

UMAP above :data:`core.reduce.LARGE_MAP_THRESHOLD` points becomes the sampled UMAP (a full fit
would run for hours); the page says so.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from core.reduce import Projection, layout_for_size
from ui.jobs import await_job, unwatch
from ui.resources import DatasetView
from ui.text import md_escape

METHOD_NAMES = {
    "umap": "UMAP",
    "umap-sampled": "UMAP (sampled)",
    "umap-gpu": "UMAP (GPU, cuML)",
    "pca": "PCA",
    "tsne": "t-SNE",
}
# Up to this many points a layout is computed in the page (seconds to a minute of UMAP on 2 cores);
# above, as a job. REPLENS_LAYOUT_JOB_ABOVE changes it (a server with many cores may want more).
# PCA is always quick enough (a few seconds at 1M points).
INLINE_MAX_POINTS = 20_000
ALWAYS_INLINE = frozenset({"pca"})


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def inline_max_points() -> int:
    value = os.environ.get("REPLENS_LAYOUT_JOB_ABOVE", "").strip()
    return int(value) if value.isdigit() else INLINE_MAX_POINTS


def runs_in_page(method: str, n_points: int) -> bool:
    return method in ALWAYS_INLINE or n_points <= inline_max_points()


def page_layout(
    view: DatasetView, key: str, method: str, params: dict[str, Any], n_points: int, *, panel: str
) -> Projection | None:
    """The layout of ``view``'s dataset under ``key``; None while the job computing it runs (its
    progress is shown under panel key ``panel``, and the page reruns when it ends)."""
    choice = layout_for_size(method, params, n_points)
    if choice.note:
        st.info(choice.note, icon=":material/info:")
    stored = view.stored_projection(key, choice.method, choice.params)
    if stored is not None:
        unwatch(panel)  # a layout job this page waited for has made it
        return stored
    if runs_in_page(choice.method, n_points):
        with st.spinner(
            f"Laying out {n_points:,} points with {method_name(choice.method)} (computed once, then cached)…"
        ):
            return view.projection(key, choice.method, choice.params)
    layout_job_panel(view.dataset, key, choice.method, choice.params, n_points, panel=panel)
    return None


def layout_job_panel(dataset: str, key: str, method: str, params: dict[str, Any], n_points: int, *, panel: str) -> None:
    await_job(
        dataset,
        "layout",
        {"encoder_key": key, "method": method, "params": params},
        f"Laying out **{n_points:,} points** of {md_escape(dataset)} with {method_name(method)} takes a while, so it "
        "runs on the server as a job: it goes on if you leave this page or close the tab (the Jobs page lists it), "
        "and the map appears here when it ends.",
        key=panel,
    )
