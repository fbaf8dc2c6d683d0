"""The one map figure: a Plotly WebGL scatter used by the Map, Clusters and Snapshots pages and the
HTML export. Plotly only (no Streamlit), so benches and the exporter build it without a server.

Clusters are coloured by id through ``core.palette``, so a cluster is the same colour in every view.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.palette import NOISE, OTHER_COLOUR, category_colour, cluster_colour

MAX_MAP_POINTS = 50_000
MAX_LEGEND_GROUPS = 20
TOOLBAR_MARGIN = 40  # px above the plot, where Plotly draws its toolbar
NOISE_NAME = "noise"
NOT_IN_RUN = "not in this run"
_OUTSIDE_RUN = int(np.iinfo(np.int64).min)


@dataclass(frozen=True)
class Colouring:
    """How points are coloured: categories (one trace each) or one numeric field.

    ``colours`` fixes a category's colour (clusters); categories without one are coloured by
    legend rank, and past ``MAX_LEGEND_GROUPS`` such categories share one grey "other" trace.
    """

    title: str
    categories: np.ndarray | None = None  # one label per row
    values: np.ndarray | None = None  # one number per row
    colours: Mapping[str, str] = field(default_factory=dict)


def colour_by_folder(frame: pd.DataFrame) -> Colouring:
    labels = frame["label"].fillna("").astype(str).replace("", "(top level)").to_numpy()
    return Colouring("Folder", categories=labels)


def colour_by_keyword(frame: pd.DataFrame, keyword: str, negate: bool) -> Colouring:
    captions = frame["caption"].fillna("").astype(str)
    hit = captions.str.contains(keyword, case=False, regex=False).to_numpy() if keyword else np.zeros(len(frame), bool)
    if negate:
        hit = ~hit
    word = f"“{keyword}”"
    yes, no = (f"no {word}", f"has {word}") if negate else (f"has {word}", f"no {word}")
    return Colouring(f"Caption {'without' if negate else 'with'} {word}", categories=np.where(hit, yes, no))


def colour_by_number(frame: pd.DataFrame, column: str, title: str) -> Colouring:
    return Colouring(title, values=frame[column].to_numpy(dtype=float))


def cluster_names(ids: Sequence[int] | np.ndarray, labels: Mapping[int, str]) -> dict[int, str]:
    """What a cluster is called on the map and in pickers: "3 · sunsets", "cluster 3", "noise"."""
    names = {}
    for c in (int(i) for i in ids):
        if c == NOISE:
            names[c] = NOISE_NAME
        else:
            names[c] = f"{c} · {labels[c]}" if labels.get(c) else f"cluster {c}"
    return names


def colour_by_cluster(
    frame: pd.DataFrame,
    run_hashes: Sequence[str],
    run_labels: np.ndarray,
    names: Mapping[int, str],
    title: str = "Cluster",
) -> Colouring:
    """Each row of ``frame`` named by its cluster in a run (images outside the run named so, in grey)."""
    position = pd.Index(list(run_hashes)).get_indexer(pd.Index(frame["content_hash"]))
    ids = np.where(position >= 0, np.asarray(run_labels)[np.maximum(position, 0)], _OUTSIDE_RUN)
    lookup = {**{int(c): n for c, n in names.items()}, _OUTSIDE_RUN: NOT_IN_RUN}
    # Named per distinct id, then spread by index: a million points cost one lookup per cluster.
    distinct, inverse = np.unique(ids, return_inverse=True)
    distinct_names = np.array([lookup.get(int(c), f"cluster {c}") for c in distinct], dtype=object)
    categories = distinct_names[inverse.reshape(-1)]
    colours = {str(name): cluster_colour(int(c)) for c, name in zip(distinct, distinct_names)}
    colours[NOT_IN_RUN] = OTHER_COLOUR
    return Colouring(title, categories=categories, colours=colours)


def display_rows(frame: pd.DataFrame, limit: int = MAX_MAP_POINTS) -> np.ndarray:
    """Rows drawn on the map: all of them, or a per-folder stratified sample above ``limit``."""
    from core.reduce import stratified_sample

    return stratified_sample(frame["label"].fillna("").to_numpy(), limit, seed=0)


def build_map_figure(
    coords: np.ndarray,
    frame: pd.DataFrame,
    colouring: Colouring,
    rows: np.ndarray,
    height: int = 640,
    *,
    hover: np.ndarray | None = None,
    uirevision: str = "map",
) -> Any:
    """A WebGL scatter of ``coords[rows]``; every point's customdata is its row in ``frame``.

    ``hover`` (one escaped HTML line per row of ``frame``) replaces the default "path, folder" text;
    ``uirevision`` keeps zoom and pan while only the colouring changes.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    hover = hover if hover is not None else default_hover(frame)
    marker_size = 7 if len(rows) < 2_000 else 4 if len(rows) < 20_000 else 3
    if colouring.values is not None:
        fig.add_trace(
            go.Scattergl(
                x=coords[rows, 0],
                y=coords[rows, 1],
                mode="markers",
                customdata=rows,
                hovertext=hover[rows].tolist(),
                name=colouring.title,
                showlegend=False,
                marker={
                    "size": marker_size,
                    "color": colouring.values[rows],
                    "colorscale": "Viridis",
                    "colorbar": {"title": {"text": colouring.title}, "thickness": 12},
                    "opacity": 0.85,
                },
                hovertemplate="%{hovertext}<br>" + colouring.title + ": %{marker.color:,.0f}<extra></extra>",
            )
        )
    else:
        for name, members, colour in _groups(colouring, len(frame), rows):
            fig.add_trace(
                go.Scattergl(
                    x=coords[members, 0],
                    y=coords[members, 1],
                    mode="markers",
                    # Plotly renders a pseudo-HTML subset in names: user labels are escaped to show as typed.
                    name=html.escape(f"{name} ({len(members):,})"),
                    customdata=members,
                    hovertext=hover[members].tolist(),
                    marker={"size": marker_size, "color": colour, "opacity": 0.85},
                    hovertemplate="%{hovertext}<extra></extra>",
                )
            )
    fig.update_layout(
        height=height,
        # The top margin is the toolbar's (modebar, ~30 px high, drawn over the figure's top right):
        # the plot and the legend start below it, so the toolbar never covers the legend title.
        margin={"l": 10, "r": 10, "t": TOOLBAR_MARGIN, "b": 10},
        # Pan, not box select: Streamlit sends a click on one point as a selection only when the drag
        # mode is not select or lasso (it then sets clickmode "event+select"; with dragmode "select"
        # a click is dropped). Box and lasso stay one toolbar click away.
        dragmode="pan",
        hovermode="closest",
        legend={
            "itemsizing": "constant",
            "title": {"text": colouring.title},
            "x": 1.01,
            "xanchor": "left",
            "y": 1,
            "yanchor": "top",
        },
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
        plot_bgcolor="#FAFAFC",
        uirevision=uirevision,
    )
    return fig


def _groups(colouring: Colouring, n_rows: int, rows: np.ndarray) -> list[tuple[str, np.ndarray, str]]:
    """(legend name, member rows, colour) per trace, largest first."""
    cats = colouring.categories if colouring.categories is not None else np.full(n_rows, "images")
    shown = cats[rows]
    names, counts = np.unique(shown, return_counts=True)
    ordered = [str(n) for n in names[np.argsort(-counts, kind="stable")]]
    ranked = [n for n in ordered if n not in colouring.colours]
    colour = {n: category_colour(i) for i, n in enumerate(ranked[:MAX_LEGEND_GROUPS])} | dict(colouring.colours)
    groups = [(n, rows[shown == n], colour[n]) for n in ordered if n in colour]
    rest = ranked[MAX_LEGEND_GROUPS:]
    if rest:
        groups.append((f"other ({len(rest)} groups)", rows[np.isin(shown, rest)], OTHER_COLOUR))
    return groups


@dataclass(frozen=True)
class CategoryLegend:
    """Categories of a colouring as the big map draws them: one code per row, one legend entry per group.

    ``names`` are the distinct categories, largest first (``codes`` index them). Each category has an
    ``entry`` in ``entries`` (name, colour, count): its own, or the shared grey "other (k groups)" one,
    by the same rule as the Plotly traces (``_groups``): fixed colours kept, the rest coloured by rank.
    """

    codes: np.ndarray  # int64, one per row
    names: list[str]
    entry_of: np.ndarray  # int64, one per category
    entries: list[tuple[str, str, int]]


def category_legend(colouring: Colouring, n_rows: int) -> CategoryLegend:
    """The legend of a categorical colouring (or of no colouring: one "images" group) for all rows."""
    cats = colouring.categories if colouring.categories is not None else np.full(n_rows, "images", dtype=object)
    raw_codes, uniques = pd.factorize(np.asarray(cats), sort=False)  # categories are text already
    uniques = np.asarray([str(u) for u in uniques], dtype=object)
    counts = np.bincount(raw_codes, minlength=len(uniques))
    order = np.lexsort((uniques.astype(str), -counts))  # largest first, ties by name
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    names = [str(uniques[i]) for i in order]
    sorted_counts = counts[order]
    ranked = [n for n in names if n not in colouring.colours]
    colour = {n: category_colour(i) for i, n in enumerate(ranked[:MAX_LEGEND_GROUPS])} | dict(colouring.colours)
    entries: list[tuple[str, str, int]] = []
    entry_of = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        if name in colour:
            entry_of[i] = len(entries)
            entries.append((name, colour[name], int(sorted_counts[i])))
    rest = [i for i, name in enumerate(names) if name not in colour]
    if rest:
        entry_of[rest] = len(entries)
        entries.append((f"other ({len(rest)} groups)", OTHER_COLOUR, int(sorted_counts[rest].sum())))
    return CategoryLegend(rank_of[raw_codes], names, entry_of, entries)


def default_hover(frame: pd.DataFrame) -> np.ndarray:
    """ "path<br>folder: label" for every row, escaped."""
    paths = frame["rel_path"].fillna("").astype(str).to_numpy()
    labels = frame["label"].fillna("").astype(str).to_numpy()
    return np.array(
        [f"{html.escape(p)}<br>folder: {html.escape(lab or '(top level)')}" for p, lab in zip(paths, labels)],
        dtype=object,
    )


def trace_colours(fig: Any) -> dict[str, str]:
    """``{legend name without its count: colour}`` of a built figure (for tests and exports)."""
    out = {}
    for trace in fig.data:
        name = html.unescape(str(trace.name))
        out[name.rsplit(" (", 1)[0]] = str(trace.marker.color)
    return out
