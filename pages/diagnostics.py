"""Diagnostics: how good is each representation of this dataset, and how alike are they?

Thin page over ``core.diagnostics``: label-free metrics for every embedded encoder (uniformity,
local intrinsic dimension, hubness), kNN accuracy and a linear probe when the images sit in two
or more folders, the effective rank (RankMe against its isotropic reference) with the
eigen-spectrum it is computed from (dimensional collapse), and the encoder comparison (linear
CKA, mutual-kNN overlap). Computed on request by a ``diagnostics`` job on the server, whose stored
result every session shows for that dataset version. Each table keeps to a few narrow columns so
that it fits the page without scrolling sideways.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.jobs import Job
from ui.errors import user_errors
from ui.jobs import page_jobs, submit_job, watch_jobs
from ui.resources import data_version, get_store
from ui.text import md_code, md_escape
from ui.widgets import dataset_picker, short_key

# Normalised singular values below this are floating-point zeros, not structure.
SPECTRUM_FLOOR = 1e-10
_JOBS = "dg_jobs"  # the diagnostics jobs' panel
_FLASH = "dg_flash"  # (kind, message) of how a job this session watched ended
COLUMN_HELP = {
    "Encoder": "Short encoder name; the full keys are listed under the table when they differ.",
    "Images": "Images embedded under this encoder.",
    "Dim": "Dimensions of the vectors.",
    "Uniformity": "log E exp(-2‖x−y‖²) on unit vectors (Wang & Isola 2020). Lower = spread more evenly on the sphere.",
    "Mean LID": "Mean local intrinsic dimensionality (Levina–Bickel MLE, k=20, cosine): how many directions the "
    "data varies in locally. Images with identical vectors count once.",
    "Hubness": "Skewness of the k-occurrence distribution (k=10). Above 1: a few 'hub' images appear in many "
    "neighbour lists, which hurts retrieval.",
    "kNN accuracy": "Weighted kNN (DINO protocol: k=20, T=0.07, leave-one-out) predicting each image's folder.",
    "Linear probe": "Logistic regression on standardised vectors predicting the folder; stratified k-fold "
    "accuracy, mean ± sd over folds.",
    "RankMe": "Effective rank (Garrido et al. 2023): exp of the entropy of the normalised singular values of the "
    "centred embedding matrix, the values the spectrum below plots. It cannot exceed min(images − 1, dim), so "
    "read it against the isotropic reference, not against the dimension.",
    "Isotropic": "RankMe of isotropic Gaussian vectors with the same number of images and dimensions (seeded): "
    "what vectors with no preferred direction score at this size.",
    "RankMe ÷ isotropic": "RankMe divided by the isotropic reference. About 1: the variance spreads over as many "
    "directions as an isotropic random cloud of this size; far below 1: it sits in a few directions "
    "(dimensional collapse). Compare encoders and datasets by this ratio: raw RankMe grows with the number "
    "of images.",
}
NUMBER_FORMAT = {
    "Images": "%d",
    "Dim": "%d",
    "RankMe": "%.1f",
    "Isotropic": "%.1f",
    "RankMe ÷ isotropic": "%.3f",
}
# Minimum column widths in pixels (width="stretch" widens them to fill the page): every table
# fits the main area of a 1024-px window with the sidebar open without a sideways scroll bar.
ENCODER_WIDTH = 170
NUMBER_WIDTH = 80
WIDTHS = {"Images": 70, "Dim": 70, "Linear probe": 110, "kNN accuracy": 100, "RankMe ÷ isotropic": 130}


# ---------------------------------------------------------------------------------------
# Computation: a ``diagnostics`` job per dataset version (new images or vectors: a new job). Its
# stored result is what every session shows for that version, so nothing is computed twice.


def job_params(keys: list[str], version: str) -> dict[str, Any]:
    """The job's parameters: every embedded encoder with its spectrum, the comparison, and the
    dataset version (so a changed dataset is a new job, not the old result)."""
    return {"encoder_keys": keys, "options": {"include_spectrum": True}, "compare": True, "version": version}


def latest_result(dataset: str, params: dict[str, Any]) -> Job | None:
    """The newest finished diagnostics job of ``dataset`` with these parameters, if any."""
    for record in get_store().job_records(dataset=dataset, limit=200):
        job = Job.from_record(record)
        if job.kind == "diagnostics" and job.status == "done" and job.params == params:
            return job
    return None


def diagnostics_ended(job: Job) -> None:
    if job.status == "failed":
        st.session_state[_FLASH] = ("error", job.error or "The diagnostics failed.")
    elif job.status == "cancelled":
        st.session_state[_FLASH] = ("info", "The diagnostics were cancelled.")


def from_result(result: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """(one row per encoder, pairwise comparison or None, messages) from a job's stored result."""
    comparison = result.get("comparison")
    return (
        pd.DataFrame(result.get("rows") or []),
        None if comparison is None else pd.DataFrame(comparison, columns=result.get("comparison_columns") or None),
        [str(m) for m in result.get("messages") or []],
    )


# ---------------------------------------------------------------------------------------
# Pure helpers (tested without a Streamlit runtime)


def display_names(keys: list[str]) -> dict[str, str]:
    """Short names for encoder keys; the full key wherever two short names would collide."""
    short = {k: short_key(k) for k in keys}
    counts = pd.Series(list(short.values())).value_counts()
    return {k: (s if counts[s] == 1 else k) for k, s in short.items()}


def _col(results: pd.DataFrame, name: str) -> pd.Series:
    return results[name] if name in results.columns else pd.Series([np.nan] * len(results), index=results.index)


def _encoders(results: pd.DataFrame, names: dict[str, str]) -> list[str]:
    return [names.get(k, k) for k in results["encoder"]]


def metrics_table(results: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """Label-free geometry, one row per encoder."""
    return pd.DataFrame(
        {
            "Encoder": _encoders(results, names),
            "Images": _col(results, "n_images").to_numpy(),
            "Dim": _col(results, "dim").to_numpy(),
            "Uniformity": _col(results, "uniformity").to_numpy(),
            "Mean LID": _col(results, "mean_lid").to_numpy(),
            "Hubness": _col(results, "hubness").to_numpy(),
        }
    )


def labels_table(results: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame | None:
    """Folder-label metrics, one row per encoder; None when the dataset has fewer than two folders."""
    if "knn_accuracy" not in results.columns:
        return None
    means, sds = _col(results, "linear_probe_mean"), _col(results, "linear_probe_sd")
    return pd.DataFrame(
        {
            "Encoder": _encoders(results, names),
            "kNN accuracy": _col(results, "knn_accuracy").to_numpy(),
            "Linear probe": [f"{m:.3f} ± {s:.3f}" if pd.notna(m) else "" for m, s in zip(means, sds)],
        }
    )


def rank_table(results: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """RankMe, its isotropic reference and their ratio, one row per encoder."""
    return pd.DataFrame(
        {
            "Encoder": _encoders(results, names),
            "RankMe": _col(results, "rankme").to_numpy(),
            "Isotropic": _col(results, "rankme_isotropic").to_numpy(),
            "RankMe ÷ isotropic": _col(results, "rankme_ratio").to_numpy(),
        }
    )


def problems(results: pd.DataFrame, names: dict[str, str]) -> list[str]:
    """One line per encoder whose diagnostics failed (shown above the tables, not as a column)."""
    if "error" not in results.columns:
        return []
    return [f"{names.get(k, k)}: {e}" for k, e in zip(results["encoder"], results["error"]) if isinstance(e, str) and e]


def column_config(table: pd.DataFrame) -> dict[str, Any]:
    """Help texts, number formats and narrow fixed widths for ``table``'s columns."""
    config: dict[str, Any] = {}
    for name in table.columns:
        text = COLUMN_HELP.get(name)
        if name == "Encoder":
            config[name] = st.column_config.TextColumn(help=text, width=ENCODER_WIDTH, pinned=True)
        elif name == "Linear probe":
            config[name] = st.column_config.TextColumn(help=text, width=WIDTHS[name])
        else:
            config[name] = st.column_config.NumberColumn(
                help=text, format=NUMBER_FORMAT.get(name, "%.3f"), width=WIDTHS.get(name, NUMBER_WIDTH)
            )
    return config


def show_table(table: pd.DataFrame, key: str) -> None:
    st.dataframe(table, hide_index=True, width="stretch", key=key, column_config=column_config(table))


def full_keys_caption(keys: list[str], names: dict[str, str]) -> str | None:
    """'short = full key' for every encoder whose shown name is not its key."""
    pairs = [f"{md_escape(names[k])} = {md_code(k)}" for k in keys if names.get(k, k) != k]
    return "Full keys: " + "; ".join(pairs) if pairs else None


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
                name=html.escape(names.get(key, key)),  # Plotly renders legend names as HTML
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

    labels = [html.escape(names.get(k, k)) for k in matrix.index]  # tick labels are rendered as HTML
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
        st.warning(md_escape(message), icon=":material/warning:")
    for problem in problems(results, names):
        st.error(md_escape(problem), icon=":material/error:")
    st.subheader("Per encoder")
    show_table(metrics_table(results, names), "dg_table")
    caption = full_keys_caption(keys, names)
    if caption:
        st.caption(caption)
    by_folder = labels_table(results, names)
    if by_folder is None:
        st.caption(
            "kNN accuracy and the linear probe need images in two or more folders (the folders are the "
            "labels); this dataset has fewer."
        )
    else:
        st.markdown("**Predicting the folder** (the folders are the labels)")
        show_table(by_folder, "dg_labels")

    st.subheader("Effective rank and eigen-spectrum")
    st.caption(
        "Both come from one matrix per encoder: the vectors as stored, centred (the mean vector subtracted). "
        "RankMe cannot exceed min(images − 1, dim) — isotropic random vectors score well below the "
        "dimension when there are few images — so it is shown next to the RankMe of isotropic Gaussian "
        "vectors of the same size. **RankMe ÷ isotropic** near 1: the variance spreads like an isotropic "
        "cloud's; far below 1: dimensional collapse."
    )
    show_table(rank_table(results, names), "dg_rank")
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
            "Encoder A": st.column_config.TextColumn(width=ENCODER_WIDTH - 10),
            "Encoder B": st.column_config.TextColumn(width=ENCODER_WIDTH - 10),
            "Images": st.column_config.NumberColumn(format="%d", width=WIDTHS["Images"]),
            "Linear CKA": st.column_config.NumberColumn(format="%.3f", width=NUMBER_WIDTH),
            "Mutual kNN": st.column_config.NumberColumn(format="%.3f", width=NUMBER_WIDTH),
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
        st.info(
            f"**{md_escape(dataset)}** has no embeddings yet. Extract them on the **Data** page.",
            icon=":material/info:",
        )
        return
    with user_errors():
        flash = st.session_state.pop(_FLASH, None)
        if flash:
            (st.error if flash[0] == "error" else st.info)(md_escape(flash[1]))
        params = job_params(keys, data_version(store, dataset))
        done = latest_result(dataset, params)
        if done is None and st.button(
            "Compute diagnostics",
            key="dg_go",
            type="primary",
            icon=":material/monitoring:",
            help="Runs on the server once per dataset version (new images or embeddings recompute); every "
            "session then reads the stored result.",
        ):
            submit_job("diagnostics", dataset, params, key=_JOBS)
            st.rerun()
        watch_jobs(
            lambda: [j.job_id for j in page_jobs(dataset, "diagnostics", match=lambda j: j.params == params)],
            key=_JOBS,
            on_end=diagnostics_ended,
        )
        if done is None or not done.result:
            st.caption(
                f"{len(keys)} encoder(s) embedded: "
                + md_escape(", ".join(short_key(k) for k in keys))
                + ". Press **Compute diagnostics** (the linear probe and kNN scale with the number of images)."
            )
            return
        if done.finished_at is not None:
            st.caption(f"Computed {done.finished_at:%Y-%m-%d %H:%M} for the dataset as it is now.")
        results, comparison, messages = from_result(done.result)
        render(results, comparison, messages, keys)


if __name__ == "__main__":  # Streamlit runs pages as __main__; tests import the helpers
    main()
