"""The big map: a Streamlit component that draws every point of a layout in the browser.

A million points travel as typed arrays (float32 coordinates, 1-2 byte colour codes, deflated
file names) in binary blobs (``ui.bigmap.encoding``), each cut into chunks of at most
``chunk_bytes()`` so no websocket message nears ``server.maxMessageSize`` whatever the size of the
dataset. A blob is named by a hash of its bytes; the browser keeps it under that name, and this
session remembers what it sent, so reruns (a click, a new page of the gallery, a new colouring)
send only what the browser lacks: panning and zooming never ask the server at all.

Selections (a click, a box, a lasso) come back as point indices (base64 of uint32), checked
against the points they were made on.

Components v2 (``st.components.v2.component``): the map lives in the page, not an iframe, so the
blobs are not copied through ``postMessage``. The JavaScript is plain (``frontend/``), with no
build step and nothing fetched at run time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.mapfigure import Colouring
from ui.bigmap.encoding import content_id, indices_from_b64, split
from ui.bigmap.payloads import colours_blob, points_blob

FRONTEND = Path(__file__).resolve().parent / "frontend"
MAX_CHUNK_BYTES = 8_000_000  # a 1M-point layout is ~12 MB: two chunks
KEEP_SENT = 6  # blobs this session assumes the browser still holds (it keeps 8)
_SENT_KEY = "_rl_bigmap_sent"

_map = st.components.v2.component("replens_bigmap", js=(FRONTEND / "bigmap.js").read_text(encoding="utf-8"))
_chunk = st.components.v2.component("replens_bigmap_chunk", js=(FRONTEND / "chunk.js").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Blob:
    """A payload and its content id (the name the browser keeps it under)."""

    id: str
    data: bytes
    n: int  # points it describes


_RECENT: OrderedDict[str, Blob] = OrderedDict()  # the last blobs drawn in this process, by id
_RECENT_LOCK = threading.Lock()
KEEP_RECENT = 4


def recent_blob(blob_id: str) -> Blob | None:
    """A blob a map in this process drew lately (AppTest helpers read what a browser would hold)."""
    with _RECENT_LOCK:
        return _RECENT.get(blob_id)


def _remember(blob: Blob) -> None:
    with _RECENT_LOCK:
        _RECENT.pop(blob.id, None)
        _RECENT[blob.id] = blob
        while len(_RECENT) > KEEP_RECENT:
            _RECENT.popitem(last=False)


@dataclass(frozen=True)
class MapSelection:
    """What the user picked on the map: rows of the points (sorted), and how ("click", "box", "lasso")."""

    rows: np.ndarray
    kind: str


def make_blob(data: bytes, n: int) -> Blob:
    return Blob(content_id(data), data, n)


@st.cache_resource(show_spinner=False, max_entries=4)
def _points(cache_key: str, _coords: np.ndarray, _names: Sequence[str]) -> Blob:
    return make_blob(points_blob(_coords, _names), len(_coords))


def points_payload(cache_key: str, coords: np.ndarray, names: Sequence[str]) -> Blob:
    """The points blob, built once per ``cache_key`` (which must change whenever coords or names do)."""
    return _points(cache_key, coords, names)


def colours_payload(colouring: Colouring, n: int) -> Blob:
    """The colours blob (built each run: ~0.1 s for a million categories, and keyed by content)."""
    return make_blob(colours_blob(colouring, n), n)


def chunk_bytes() -> int:
    """The largest chunk sent: 8 MB, or half the server's websocket message limit if that is lower."""
    limit_mb = int(st.get_option("server.maxMessageSize"))
    return min(MAX_CHUNK_BYTES, limit_mb * 1_000_000 // 2)


def _noop() -> None:
    """Selections and requests are read from the component's return value; no callback work."""


def big_map(points: Blob, colours: Blob, *, key: str, height: int = 640, renderer: str = "auto") -> MapSelection | None:
    """Draw the map; the current selection (None before any, or after "Clear selection")."""
    sent: dict[str, bool] = st.session_state.setdefault(_SENT_KEY, {})
    _remember(points)
    _remember(colours)
    sending = [blob for blob in dict.fromkeys((points, colours)) if blob.id not in sent]
    result = _map(
        key=key,
        data={
            "name": key,
            "points": points.id,
            "colours": colours.id,
            "sending": [blob.id for blob in sending],
            "height": height,
            "renderer": renderer,
        },
        height=height + 70,  # toolbar and status line
        on_selection_change=_noop,
        on_missing_change=_noop,
    )
    missing = getattr(result, "missing", None)
    for blob in (points, colours):
        if blob.id == missing and blob not in sending:  # the browser dropped it (a reload of the map element)
            sending.append(blob)
    limit = chunk_bytes()
    for blob in sending:
        for k, chunk in enumerate(split(blob.data, blob.id, limit)):
            _chunk(key=f"{key}-blob-{blob.id}-{k}", data=chunk, height="content")
        sent.pop(blob.id, None)
        sent[blob.id] = True
    while len(sent) > KEEP_SENT:
        sent.pop(next(iter(sent)))
    return selection_of(getattr(result, "selection", None), points.id, points.n)


def selection_of(value: Any, points_id: str, n: int) -> MapSelection | None:
    """The selection the browser reported, if it was made on these points (a new layout drops it)."""
    if not isinstance(value, dict) or value.get("points") != points_id:
        return None
    rows = indices_from_b64(str(value.get("indices", "")), n)
    return MapSelection(rows, str(value.get("kind", "box")))
