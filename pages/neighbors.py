"""Neighbors: the images an encoder considers closest to a query, optionally for two encoders."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from core import config, images, neighbors
from core.errors import InvalidInputError
from core.extract import embed_images
from core.neighbors import Neighbors, mean_similarity, overlap
from core.store import Store
from core.uploads import check_upload_sizes
from ui.errors import user_errors
from ui.gallery import gallery, thumbnail
from ui.neighbor_jobs import neighbor_index_ready
from ui.resources import DatasetView, get_store, query_encoder
from ui.state import QUERY_KEY
from ui.text import md_escape
from ui.widgets import dataset_and_key, remembered_select, short_key

SOURCE_DATASET = "An image from the dataset"
SOURCE_UPLOAD = "Upload an image"
NONE = "(none)"
_INDEX_JOBS = "nb_index_jobs"  # the panel of an index job a search waits for (one per encoder key)


@dataclass(frozen=True)
class Query:
    """Either a dataset image (content hash) or an uploaded picture."""

    content_hash: str | None
    upload: object | None  # PIL image
    label: str


def query_controls(frame: pd.DataFrame) -> Query | None:
    source = st.radio(
        "Query", [SOURCE_DATASET, SOURCE_UPLOAD], horizontal=True, key="nb_source", label_visibility="collapsed"
    )
    if source == SOURCE_UPLOAD:
        upload = st.file_uploader(
            "Query image",
            type=[e.lstrip(".") for e in sorted(images.SUPPORTED_EXTENSIONS)],
            key="nb_upload",
            help="Embedded on the fly with the same encoder; not added to the dataset.",
            max_upload_size=config.max_file_mb(),
        )
        if upload is None:
            st.caption("Upload an image to find its nearest images in the dataset.")
            return None
        check_upload_sizes([upload])  # the browser enforces the widget's limit; a client may not
        return Query(None, images.decode_rgb(upload.getvalue()), upload.name)
    hashes = frame["content_hash"].tolist()
    paths = dict(zip(frame["content_hash"], frame["rel_path"]))
    chosen = remembered_select(
        "Query image (type to search paths)",
        hashes,
        QUERY_KEY,
        "w_nb_query",
        format_func=lambda h: paths.get(h, h),
        container=st,
    )
    return Query(chosen, None, paths[chosen])


def search(view: DatasetView, key: str, query: Query, k: int) -> tuple[pd.DataFrame, Neighbors] | None:
    """Neighbours of ``query`` under embeddings ``key``; None if the query image has no vector there."""
    frame, index = view.neighbor_index(key)
    if query.content_hash is not None:
        rows = np.flatnonzero(frame["content_hash"].to_numpy() == query.content_hash)
        if len(rows) == 0:
            return None
        return frame, index.search_row(int(rows[0]), k)
    encoder = query_encoder(key)
    with st.spinner(f"Embedding the query with {md_escape(short_key(key))}…"):
        vector = embed_images(encoder, [query.upload])
    return frame, index.search(vector, k)[0]


def results_table(frame: pd.DataFrame, found: Neighbors) -> pd.DataFrame:
    rows = frame.iloc[found.indices]
    return pd.DataFrame(
        {
            "Rank": np.arange(1, len(rows) + 1),
            "Similarity": np.round(found.similarities.astype(float), 4),
            "Path": rows["rel_path"].to_numpy(),
            "Folder": rows["label"].replace("", "(top level)").to_numpy(),
            "content_hash": rows["content_hash"].to_numpy(),
        }
    )


def similarity_summary(found: Neighbors) -> str:
    """The mean similarity, labelled with what it averages: the query image itself never counts."""
    mean, n = mean_similarity(found), len(found.indices)
    if found.query_row is None:
        return f"mean cosine similarity {mean:.3f} over all {n} ranks (the uploaded query is not in the dataset)"
    if len(found.others()) == 0:
        return "no neighbour besides the query image itself"
    return f"mean cosine similarity {mean:.3f} over ranks 2–{n} (rank 1 is the query image itself)"


def show_results(store: Store, frame: pd.DataFrame, found: Neighbors, title: str, key: str) -> pd.DataFrame:
    table = results_table(frame, found)
    st.markdown(f"**{md_escape(title)}**")
    st.caption(f"{len(table)} neighbours · {similarity_summary(found)}")
    captions = [f"{s:.3f} · {p.rsplit('/', 1)[-1]}" for s, p in zip(table["Similarity"], table["Path"])]
    gallery(store, frame.iloc[found.indices], captions, key=f"{key}_gallery")
    with st.expander("As a table"):
        st.dataframe(
            table.drop(columns="content_hash"),
            hide_index=True,
            width="stretch",
            key=f"{key}_table",
            column_config={"Similarity": st.column_config.NumberColumn(format="%.3f")},
        )
    return table


def show_query(store: Store, frame: pd.DataFrame, query: Query) -> None:
    if query.upload is not None:
        st.image(query.upload, width=160, caption=f"Query: {md_escape(query.label)} (uploaded)")
        return
    row = frame.loc[frame["content_hash"] == query.content_hash].iloc[0]
    path = thumbnail(store, row["content_hash"], row["source"], row["rel_path"])
    if path:
        st.image(path, width=160, caption=f"Query: {md_escape(row['rel_path'])}")


def main() -> None:
    st.title("Neighbors")
    st.caption(
        "Which images does this encoder place closest to a query? Cosine similarity on L2-normalised "
        f"vectors; exact search below {neighbors.ANN_THRESHOLD:,} images, an HNSW index (re-scored exactly) above."
    )
    store = get_store()
    picked = dataset_and_key(store)
    if picked is None:
        return
    dataset, key = picked
    others = [k for k in store.embedded_keys(dataset) if k != key]
    k = st.sidebar.slider("Neighbours (k)", 5, 100, 24, key="nb_k")
    compare = st.sidebar.selectbox(
        "Compare with a second encoder",
        [NONE] + others,
        key="nb_compare",
        format_func=lambda x: x if x == NONE else short_key(x),
        disabled=not others,
        help="Side by side, with the overlap of the two lists.",
    )
    with user_errors():
        view = DatasetView(store, dataset)
        frame, _ = view.embeddings(key)
        for needed in [key] if compare == NONE else [key, compare]:
            if not neighbor_index_ready(view, needed, len(view.embeddings(needed)[0]), panel=f"{_INDEX_JOBS}_{needed}"):
                return
        query = query_controls(frame)
        if query is None:
            return
        show_query(store, frame, query)
        first = search(view, key, query, k)
        if first is None:
            raise InvalidInputError(f"{query.label} has no vector under {key}; extract embeddings on the Data page.")
        if compare == NONE:
            show_results(store, *first, title=short_key(key), key="nb_a")
            return
        second = search(view, compare, query, k)
        if second is None:
            st.warning(
                f"{md_escape(query.label)} has no vector under {md_escape(short_key(compare))}; extract that "
                "encoder for the whole dataset to compare."
            )
            show_results(store, *first, title=short_key(key), key="nb_a")
            return
        a_hashes = first[0]["content_hash"].to_numpy()[first[1].indices]
        b_hashes = second[0]["content_hash"].to_numpy()[second[1].indices]
        shared = overlap(a_hashes, b_hashes, k=min(k, len(a_hashes), len(b_hashes)))
        st.metric(
            "Overlap of the two lists |A∩B|/k",
            f"{shared:.0%}",
            help="Share of the top-k images both encoders agree on (a query from the dataset is first in "
            "both lists and counts).",
        )
        left, right = st.columns(2)
        with left:
            show_results(store, *first, title=f"A · {short_key(key)}", key="nb_a")
        with right:
            show_results(store, *second, title=f"B · {short_key(compare)}", key="nb_b")


main()
