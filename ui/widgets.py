"""Sidebar pickers and small displays every page shares: dataset/encoder pickers, encoder keys
and spec cards, and the rows of a Plotly selection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from core.encoders import EncoderSpec
from core.keys import EncoderKey
from core.store import Store
from ui.state import DATASET_KEY, ENCODER_KEY, PAGE_DATA


def short_key(key: str) -> str:
    """An encoder key as pickers and legends show it ("dinov2-vits14 · block9/mean")."""
    parsed = EncoderKey.try_parse(key)
    return key if parsed is None else parsed.display()


def describe_spec(spec: EncoderSpec) -> str:
    """Markdown card: what the encoder is, named by what it is."""
    where = "needs network on first use (weights download from a hub)" if spec.needs_network else "offline"
    lines = [
        f"**{spec.name}**  \n`{spec.id}` · version `{spec.version}`",
        f"- **Family:** {spec.family}",
        f"- **Architecture:** {spec.architecture or 'n/a'} · **dim** {spec.dim} · input {spec.input_size}px",
        f"- **Licence:** {spec.licence}",
        f"- **Availability:** {where}",
    ]
    if spec.has_text_tower:
        lines.append("- **Text tower:** yes (image and text share one space)")
    if spec.fine_tuned:
        lines.append(f"- **Fine-tuned:** {spec.fine_tuned}")
    if spec.description:
        lines.append(f"\n{spec.description}")
    return "\n".join(lines)


def remembered_select(
    label: str,
    options: list[str],
    shared_key: str,
    widget_key: str,
    format_func: Any = str,
    container: Any = None,
    *,
    stored: str | None = None,
    remember: Callable[[str], None] | None = None,
) -> str:
    """A selectbox whose choice is also kept under ``shared_key`` so other pages start from it.

    Its first value: the widget's own, else the session's ``shared_key``, else ``stored`` (what the
    store remembers from an earlier session, so a reload or restart reopens it), else the first
    option. ``remember`` is called with the choice so the store keeps it for the next session.
    """
    where = container if container is not None else st.sidebar
    if st.session_state.get(widget_key) not in options:
        remembered = st.session_state.get(shared_key)
        if remembered not in options:
            remembered = stored
        st.session_state[widget_key] = remembered if remembered in options else options[0]
    choice = where.selectbox(label, options, key=widget_key, format_func=format_func)
    st.session_state[shared_key] = choice
    if remember is not None:
        remember(choice)
    return choice


def pick_dataset(
    store: Store, names: list[str], widget_key: str = "w_dataset", container: Any = None, label: str = "Dataset"
) -> str:
    """The dataset selectbox every page shares: opens the dataset last used, and remembers the pick."""
    return remembered_select(
        label,
        names,
        DATASET_KEY,
        widget_key,
        container=container,
        stored=store.last_dataset(),
        remember=store.remember_dataset,
    )


def dataset_picker(store: Store) -> str | None:
    names = store.dataset_names()
    if not names:
        st.info("No datasets yet. Add an image folder on the **Data** page.", icon=":material/info:")
        st.page_link(PAGE_DATA, label="Go to Data", icon=":material/folder_open:")
        return None
    return pick_dataset(store, names)


def encoder_key_picker(store: Store, dataset: str, label: str = "Embeddings") -> str | None:
    """The embeddings selectbox: opens the key last used (this session, else the one the store
    remembers for ``dataset``), and remembers the pick per dataset."""
    keys = store.embedded_keys(dataset)
    if not keys:
        st.info(f"**{dataset}** has no embeddings yet. Extract them on the **Data** page.", icon=":material/info:")
        st.page_link(PAGE_DATA, label="Go to Data", icon=":material/folder_open:")
        return None
    return remembered_select(
        label,
        keys,
        ENCODER_KEY,
        "w_encoder_key",
        format_func=short_key,
        stored=store.last_encoder_key(dataset),
        remember=lambda key: store.remember_encoder_key(dataset, key),
    )


def dataset_and_key(store: Store) -> tuple[str, str] | None:
    """The sidebar's dataset and embeddings pickers; None (with a pointer to Data) when either is missing."""
    dataset = dataset_picker(store)
    if dataset is None:
        return None
    key = encoder_key_picker(store, dataset)
    return None if key is None else (dataset, key)


def selected_rows(event: Any) -> list[int]:
    """Frame rows of the points in a Streamlit plotly selection event (order kept, no repeats)."""
    if event is None:
        return []
    selection = event.get("selection", {}) if isinstance(event, dict) else getattr(event, "selection", {})
    rows: list[int] = []
    for point in selection.get("points", []) or []:
        data = point.get("customdata")
        if isinstance(data, list):
            data = data[0] if data else None
        if data is not None:
            rows.append(int(data))
    return list(dict.fromkeys(rows))
