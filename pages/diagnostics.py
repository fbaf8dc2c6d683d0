"""Diagnostics: how good is each representation of this dataset, and how alike are they?

Thin page over ``core.diagnostics``: label-free metrics for every embedded encoder (RankMe,
uniformity, local intrinsic dimension, hubness), kNN accuracy and a linear probe when the
images sit in two or more folders, the eigen-spectrum (dimensional collapse) and the encoder
comparison (linear CKA, mutual-kNN overlap). Computed on request, cached per dataset version.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core import diagnostics
from core.errors import RepLensError
from core.store import Store
from ui.errors import user_errors
from ui.resources import data_version, get_store
from ui.widgets import dataset_picker, short_key

# Normalised singular values below this are floating-point zeros, not structure.
SPECTRUM_FLOOR = 1e-10
_DONE = "dg_done"  # "dataset|version" entries this session asked to diagnose
COLUMN_HELP = {
    "RankMe": "Effective rank of the embedding matrix (Garrido et al. 2023). Higher = more dimensions in use; "
    "far below the dimension = collapse.",
    "Uniformity": "log E exp(-2‖x−y‖²) on unit vectors (Wang & Isola 2020). Lower = spread more evenly on the sphere.",
    "Mean LID": "Mean local intrinsic dimensionality (Levina–Bickel MLE, k=20): how many directions the data "
    "varies in locally.",
    "Hubness": "Skewness of the k-occurrence distribution (k=10). Above 1: a few 'hub' images appear in many "
    "neighbour lists, which hurts retrieval.",
    "kNN accuracy": "Weighted kNN (DINO protocol: k=20, T=0.07, leave-one-out) predicting each image's folder.",
    "Linear probe": "Logistic regression on standardised vectors predicting the folder; stratified k-fold "
    "accuracy, mean ± sd over folds.",
}


# ---------------------------------------------------------------------------------------
# Computation (cached by dataset version: new images or vectors recompute)


@st.cache_data(show_spinner=False, max_entries=8)
def _diagnose(
    _store: Store, where: str, dataset: str, version: str, keys: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """(one row per encoder, pairwise comparison or None, messages to show)."""
    rows: list[dict[str, Any]] = []
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", diagnostics.DiagnosticsWarning)
        for key in keys:
            try:
                found = diagnostics.dataset_diagnostics(_store, dataset, keys=[key], include_spectrum=True)
                rows.append(found.iloc[0].to_dict())
            except RepLensError as exc:
                rows.append({"encoder": key, "error": str(exc)})
        comparison = None
        if len(keys) >= 2:
            try:
                comparison = diagnostics.compare_encoders(_store, dataset, list(keys))
            except RepLensError as exc:
                messages.append(f"Encoder comparison: {exc}")
    messages += [str(w.message) for w in caught if issubclass(w.category, diagnostics.DiagnosticsWarning)]
    return pd.DataFrame(rows), comparison, messages


# ---------------------------------------------------------------------------------------
# Pure helpers (tested without a Streamlit runtime)


def display_names(keys: list[str]) -> dict[str, str]:
    """Short names for encoder keys; the full key wherever two short names would collide."""
    short = {k: short_key(k) for k in keys}
    counts = pd.Series(list(short.values())).value_counts()
    return {k: (s if counts[s] == 1 else k) for k, s in short.items()}


def metrics_table(results: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """The table users read: one row per encoder."""

    def col(name: str) -> pd.Series:
        return results[name] if name in results.columns else pd.Series([np.nan] * len(results))

    table = pd.DataFrame(
        {
            "Encoder": [names.get(k, k) for k in results["encoder"]],
            "Key": results["encoder"],
            "Images": col("n_images"),
            "Dim": col("dim"),
            "RankMe": col("rankme"),
            "Uniformity": col("uniformity"),
            "Mean LID": col("mean_lid"),
            "Hubness": col("hubness"),
        }
    )
    if "knn_accuracy" in results.columns:
        table["kNN accuracy"] = col("knn_accuracy")
        means, sds = col("linear_probe_mean"), col("linear_probe_sd")
        table["Linear probe"] = [f"{m:.3f} ± {s:.3f}" if pd.notna(m) else "" for m, s in zip(means, sds)]
    if "error" in results.columns:
        table["Problem"] = results["error"].fillna("")
    return table


def spectrum_figure(results: pd.DataFrame, names: dict[str, str]) -> Any:
    """One line per encoder: normalised singular values on a log scale."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, spectrum in zip(results["encoder"], results.get("spectrum", pd.Series([None] * len(results)))):
        if not isinstance(spectrum, (list, np.ndarray)) or len(spectrum) == 0:
            continue
        values = np.asarray(spectrum, dtype=float)
        values[values < SPECTRUM_FLOOR] = np.nan  # rounding noise (centring leaves one ~1e-16 value): off the chart
        fig.add_trace(
            go.Scatter(
                x=np.arange(1, len(values) + 1),
                y=values,
                mode="lines",
                name=names.get(key, key),
                hovertemplate="component %{x}<br>%{y:.2e}<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_layout(
        height=380,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        hovermode="x unified",
        xaxis={"title": {"text": "component (largest first)"}},
        yaxis={"title": {"text": "normalised singular value"}, "type": "log", "exponentformat": "power"},
        legend={"title": {"text": "Encoder"}},
    )
    return fig


def pair_matrix(comparison: pd.DataFrame, keys: list[str], column: str) -> pd.DataFrame:
    """Symmetric encoder × encoder matrix of ``column`` (diagonal 1, NaN where a pair was not compared)."""
    values = np.full((len(keys), len(keys)), np.nan)
    np.fill_diagonal(values, 1.0)
    matrix = pd.DataFrame(values, index=keys, columns=keys)
    for row in comparison.itertuples(index=False):
        value = float(getattr(row, column))
        matrix.loc[row.a, row.b] = matrix.loc[row.b, row.a] = value
    return matrix


def heatmap(matrix: pd.DataFrame, names: dict[str, str], title: str) -> Any:
    import plotly.graph_objects as go

    labels = [names.get(k, k) for k in matrix.index]
    fig = go.Figure(
        go.Heatmap(
            z=matrix.to_numpy(),
            x=labels,
            y=labels,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            texttemplate="%{z:.2f}",
            hovertemplate="%{y} × %{x}: %{z:.3f}<extra></extra>",
            colorbar={"thickness": 12},
        )
    )
    fig.update_layout(
        height=120 + 60 * len(labels),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": title},
        yaxis={"autorange": "reversed"},
    )
    return fig


# ---------------------------------------------------------------------------------------
# Page


def render(results: pd.DataFrame, comparison: pd.DataFrame | None, messages: list[str], keys: list[str]) -> None:
    names = display_names(keys)
    for message in messages:
        st.warning(message, icon=":material/warning:")
    st.subheader("Per encoder")
    table = metrics_table(results, names)
    config = {
        name: st.column_config.NumberColumn(help=text, format="%.3f")
        for name, text in COLUMN_HELP.items()
        if name != "Linear probe"
    }
    config["Linear probe"] = st.column_config.TextColumn(help=COLUMN_HELP["Linear probe"])
    config["Key"] = st.column_config.TextColumn(help="The full encoder key (id@version/layer/pooling).")
    st.dataframe(table, hide_index=True, width="stretch", key="dg_table", column_config=config)
    if "kNN accuracy" not in table.columns:
        st.caption(
            "kNN accuracy and the linear probe need images in two or more folders (the folders are the "
            "labels); this dataset has fewer."
        )

    st.subheader("Eigen-spectrum")
    st.caption(
        "Singular values of each centred embedding matrix, normalised to sum 1, on a log scale. "
        "A curve that plunges after a few components is dimensional collapse: the encoder uses few "
        "directions, whatever its nominal dimension."
    )
    st.plotly_chart(spectrum_figure(results, names), key="dg_spectrum", config={"displaylogo": False})

    st.subheader("Encoder comparison")
    if comparison is None or comparison.empty:
        st.caption("Embed this dataset with a second encoder to compare representations.")
        return
    st.caption(
        "On the images embedded under both encoders. **Linear CKA** (Kornblith et al. 2019): 1 = the "
        "same geometry up to rotation and scale. **Mutual kNN** (Huh et al. 2024): share of each image's "
        "10 nearest neighbours the two encoders agree on."
    )
    pairs = comparison.assign(
        a=[names.get(k, k) for k in comparison["a"]], b=[names.get(k, k) for k in comparison["b"]]
    )
    st.dataframe(
        pairs.rename(
            columns={
                "a": "Encoder A",
                "b": "Encoder B",
                "n_images": "Images",
                "cka": "Linear CKA",
                "mutual_knn": "Mutual kNN",
            }
        ),
        hide_index=True,
        width="stretch",
        key="dg_pairs",
        column_config={
            "Linear CKA": st.column_config.NumberColumn(format="%.3f"),
            "Mutual kNN": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    left, right = st.columns(2)
    with left:
        st.plotly_chart(
            heatmap(pair_matrix(comparison, keys, "cka"), names, "Linear CKA"),
            key="dg_cka",
            config={"displaylogo": False},
        )
    with right:
        st.plotly_chart(
            heatmap(pair_matrix(comparison, keys, "mutual_knn"), names, "Mutual kNN overlap (k=10)"),
            key="dg_mknn",
            config={"displaylogo": False},
        )


def main() -> None:
    st.title("Diagnostics")
    st.caption(
        "How good is each representation of this dataset, and how alike are they? Label-free metrics "
        "for any folder; kNN accuracy and a linear probe when the images sit in folders."
    )
    store = get_store()
    dataset = dataset_picker(store)
    if dataset is None:
        return
    keys = store.embedded_keys(dataset)
    if not keys:
        st.info(f"**{dataset}** has no embeddings yet. Extract them on the **Data** page.", icon=":material/info:")
        return
    with user_errors():
        version = data_version(store, dataset)
        wanted = f"{dataset}|{version}"
        if st.button(
            "Compute diagnostics",
            key="dg_go",
            type="primary",
            icon=":material/monitoring:",
            help="Runs once per dataset version (new images or embeddings recompute); then cached.",
        ):
            st.session_state[_DONE] = [*st.session_state.get(_DONE, []), wanted][-20:]
        if wanted not in st.session_state.get(_DONE, []):
            st.caption(
                f"{len(keys)} encoder(s) embedded: "
                + ", ".join(short_key(k) for k in keys)
                + ". Press **Compute diagnostics** (the linear probe and kNN scale with the number of images)."
            )
            return
        with st.spinner(f"Diagnosing {len(keys)} encoder(s)…"):
            results, comparison, messages = _diagnose(store, str(store.path), dataset, version, tuple(keys))
        render(results, comparison, messages, keys)


if __name__ == "__main__":  # Streamlit runs pages as __main__; tests import the helpers
    main()
