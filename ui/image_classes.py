"""The ImageNet vocabulary per image, for the Map and Bias pages: cached top-1 classes, and an
offer to compute the EfficientNet-Lite0 vectors they need (never started without a click)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core.bias_runs import concept_sets
from core.concepts.image_classes import image_top_classes, missing_lite0_images
from core.concepts.imagenet import LABELLER_ENCODER, ConceptTree, imagenet_tree
from core.encoders import BaseEncoder, get_spec
from core.errors import RepLensError
from core.extract import embed_dataset
from core.store import Store
from ui.progress import embed_progress
from ui.resources import data_version, get_encoder


def lite0_encoder() -> BaseEncoder:
    spec = get_spec(LABELLER_ENCODER)
    return get_encoder(spec.id, spec.default_layer, spec.default_pooling)


@st.cache_resource(show_spinner=False, max_entries=4)
def _classes(_store: Store, db: str, dataset: str, version: str) -> pd.DataFrame:
    # ``_store`` is left out of the cache key (leading underscore); ``db`` pins the entry to its database.
    return image_top_classes(_store, dataset, encoder=lite0_encoder(), embed=False)


def top_classes(store: Store, dataset: str, where: Any, key: str) -> tuple[pd.DataFrame, ConceptTree] | None:
    """(per-image top-1 classes, the WordNet tree), or None after saying why on ``where`` (st or
    st.sidebar): the dataset lacks Lite0 vectors (with a button that computes them, showing
    progress), or WordNet / the Lite0 weights are not installed."""
    try:
        tree = imagenet_tree()
        missing = missing_lite0_images(store, dataset)
        if missing:
            n = len(store.dataset_images(dataset))
            where.info(
                f"ImageNet classes come from EfficientNet-Lite0's head on each image's Lite0 vector: {missing:,} "
                f"of {n:,} images of **{dataset}** have none yet. Computing them embeds those images once "
                "(offline; about as long as any extraction on the Data page).",
                icon=":material/info:",
            )
            if where.button("Compute Lite0 vectors", key=key, icon=":material/play_arrow:", type="primary"):
                bar = where.progress(0.0, text="Loading EfficientNet-Lite0…")
                try:
                    embed_dataset(store, dataset, lite0_encoder(), progress=embed_progress(bar, "EfficientNet-Lite0"))
                finally:
                    bar.empty()
                st.rerun()
            return None
        with st.spinner("Reading each image's ImageNet class…"):
            classes = _classes(store, str(store.path), dataset, data_version(store, dataset))
        return classes, tree
    except RepLensError as exc:
        where.error(exc.for_page(), icon=":material/error:")
        return None


@st.cache_resource(show_spinner=False, max_entries=4)
def _concept_sets(
    _store: Store, _classes: pd.DataFrame, db: str, dataset: str, version: str
) -> dict[str, tuple[str, ...]]:
    return concept_sets(_store, dataset, classes=_classes)


def bias_concept_sets(store: Store, dataset: str, where: Any, key: str) -> dict[str, tuple[str, ...]]:
    """The Bias page's "top class under CONCEPT" sets (none, after saying why, as :func:`top_classes`)."""
    found = top_classes(store, dataset, where, key)
    if found is None:
        return {}
    return _concept_sets(store, found[0], str(store.path), dataset, data_version(store, dataset))
