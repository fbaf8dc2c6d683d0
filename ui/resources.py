"""Cached resources: the Store, loaded encoders, embedding matrices, neighbour indexes, layouts.

Heavy objects (embedding matrices, neighbour indexes, layouts) are cached with
``st.cache_resource``, not ``st.cache_data``: cache_data would pickle-copy a 150 MB matrix
on every rerun. They are treated as read-only. Cache keys include a cheap *version* of the
dataset (its update time and embedding counts), so new images or vectors are never hidden
by a stale cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core import config
from core.encoders import BaseEncoder, load_encoder
from core.errors import EncoderUnavailableError, InvalidInputError
from core.extract import weights_of_key
from core.keys import FP32, EncoderKey
from core.neighbors import NeighborIndex
from core.reduce import Projection, cached_projection, project
from core.store import Store
from core.weights import check_page_weights


@st.cache_resource(show_spinner=False)
def _store_at(db_path: str, cache_dir: str) -> Store:
    return Store(db_path, cache_dir)


def get_store() -> Store:
    """The Store for REPLENS_DB / REPLENS_CACHE (one per location, shared by all sessions)."""
    return _store_at(str(config.db_path()), str(config.cache_dir()))


def get_encoder(
    encoder_id: str, layer: str, pooling: str, weights: str | None = None, precision: str = FP32
) -> BaseEncoder:
    """A loaded encoder, shared by sessions (forward passes are serialised inside the encoder).

    ``weights``: a local weights file for a hub encoder (an upload kept by ``core.weights``);
    part of the cache key, so each file is its own encoder. A page loads a file (this one, or the
    one a ``timm-file:``/``onnx-file:`` id names) only when it was uploaded here or lies inside a
    data root: anything else is refused before it is read.
    """
    check_page_weights(encoder_id, weights, config.cache_dir(), config.data_roots())
    if weights and not Path(weights).is_file():
        raise EncoderUnavailableError(
            f"Weights file {weights} does not exist.",
            page_message="The weights file given for this encoder is no longer on the server; upload it again.",
        )
    return _loaded_encoder(encoder_id, layer, pooling, weights or None, precision)


@st.cache_resource(show_spinner=False, max_entries=4)
def _loaded_encoder(encoder_id: str, layer: str, pooling: str, weights: str | None, precision: str) -> BaseEncoder:
    return load_encoder(encoder_id, "auto", layer=layer, pooling=pooling, weights=weights, precision=precision)


def query_encoder(key: str) -> BaseEncoder:
    """The encoder that produced ``key``, to embed a new image into the same space (with the
    weights file its extraction recorded, for a key made from an uploaded checkpoint)."""
    parsed = EncoderKey.try_parse(key)
    if parsed is None or parsed.is_imported:
        raise InvalidInputError(
            f"{key} holds imported vectors: RepLens cannot embed a new image into that space. "
            "Pick an image from the dataset instead, or choose an extracted encoder."
        )
    # At the precision the stored vectors were computed at: a bf16 dataset gets a bf16 query.
    encoder = get_encoder(
        parsed.encoder_id, parsed.layer, parsed.pooling, weights_of_key(get_store(), key), parsed.precision
    )
    if encoder.key != key:
        raise InvalidInputError(
            f"The stored vectors came from {key}, but this RepLens has {encoder.key}. An uploaded image "
            "would land in a different space; re-extract the dataset on the Data page first."
        )
    return encoder


def data_version(store: Store, dataset: str) -> str:
    """Changes whenever the dataset's images or any of its embeddings change (milliseconds at 1M rows)."""
    return store.dataset_version(dataset)


# The cached loaders take the store's location (db, cache) rather than the Store itself:
# plain strings hash cheaply and pin each entry to one database.


@st.cache_resource(show_spinner=False, max_entries=6)
def _embeddings(db: str, cache: str, dataset: str, key: str, version: str) -> tuple[pd.DataFrame, np.ndarray]:
    return _store_at(db, cache).load_embeddings(dataset, key)


@st.cache_resource(show_spinner=False, max_entries=6)
def _neighbor_index(db: str, cache: str, dataset: str, key: str, version: str) -> NeighborIndex:
    frame, vectors = _embeddings(db, cache, dataset, key, version)
    return NeighborIndex(
        vectors, encoder_key=key, hashes=frame["content_hash"].tolist(), cache_dir=cache, scope=dataset
    )


@st.cache_resource(show_spinner=False, max_entries=8)
def _projection(db: str, cache: str, dataset: str, key: str, method: str, params_json: str, version: str) -> Projection:
    frame, vectors = _embeddings(db, cache, dataset, key, version)
    return project(_store_at(db, cache), dataset, key, method, json.loads(params_json), images=frame, vectors=vectors)


class _NotCached(Exception):
    """Raised (so not cached) by :func:`_stored_projection` when the layout has not been computed."""


@st.cache_resource(show_spinner=False, max_entries=8)
def _stored_projection(
    db: str, cache: str, dataset: str, key: str, method: str, params_json: str, version: str
) -> Projection:
    frame, _ = _embeddings(db, cache, dataset, key, version)
    found = cached_projection(_store_at(db, cache), key, method, json.loads(params_json), frame)
    if found is None:
        raise _NotCached
    return found


class DatasetView:
    """One page run's handle on a dataset: its version is read once, then every cached
    lookup (embeddings, layouts, neighbour indexes) is keyed by it."""

    def __init__(self, store: Store, dataset: str) -> None:
        self.store, self.dataset = store, dataset
        self.version = data_version(store, dataset)
        self._where = (str(store.path), str(store.cache_dir))

    def embeddings(self, key: str) -> tuple[pd.DataFrame, np.ndarray]:
        return _embeddings(*self._where, self.dataset, key, self.version)

    def neighbor_index(self, key: str) -> tuple[pd.DataFrame, NeighborIndex]:
        frame, _ = self.embeddings(key)
        return frame, _neighbor_index(*self._where, self.dataset, key, self.version)

    def stored_projection(self, key: str, method: str, params: dict[str, Any]) -> Projection | None:
        """The layout if it was computed before (by this page, another session, a job or the CLI), else None."""
        try:
            return _stored_projection(
                *self._where, self.dataset, key, method, json.dumps(params, sort_keys=True), self.version
            )
        except _NotCached:
            return None

    def projection(self, key: str, method: str, params: dict[str, Any]) -> Projection:
        return _projection(*self._where, self.dataset, key, method, json.dumps(params, sort_keys=True), self.version)
