"""The snapshot as one self-contained HTML page: map, hover panel and per-cluster galleries.

The page needs no network: plotly.js is inline, thumbnails are data: URIs, and a
Content-Security-Policy forbids every fetch and every script but the page's own (by hash).
The page itself is ``templates/snapshot.html.j2`` (autoescaped) and its script
``templates/snapshot.js``; the map's traces come from the one figure builder,
``core.mapfigure.build_map_figure``, coloured by cluster id through ``core.palette``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from core.fsutil import atomic_write_text
from core.mapfigure import Colouring, build_map_figure, cluster_names
from core.palette import cluster_colour
from core.snapshots.export import cached_thumbnail
from core.snapshots.model import EXPORT_THUMB_SIZE, Snapshot
from core.snapshots.records import load_snapshot
from core.store import Store

GALLERY_TILES = 200  # per cluster in the page; the rest are counted, not shown
SVG_MAX_POINTS = 5_000  # up to here the map is SVG (crisp, no WebGL needed); above, WebGL
LEGEND_LABEL_CHARS = 60


def snapshot_html(store: Store, snapshot_id: str, out_path: str | os.PathLike[str]) -> Path:
    """Write one self-contained HTML page for a snapshot; returns its path.

    The page needs no network: plotly.js is inline, thumbnails are data: URIs, and a
    Content-Security-Policy forbids every fetch and every script but the page's own (by
    hash). All text (title, notes, labels, paths) is escaped; the JSON the page reads sits
    in a ``<script type="application/json">`` with ``<``, ``>`` and ``&`` escaped.
    """
    from plotly.offline import get_plotlyjs

    snap = load_snapshot(store, snapshot_id)
    plotly_js, app_js = get_plotlyjs(), _template_text("snapshot.js")
    page = (
        _environment()
        .get_template("snapshot.html.j2")
        .render(
            csp=_content_security_policy(plotly_js, app_js),
            title=snap.title,
            notes=snap.notes,
            meta=_meta(snap),
            clusters=_cluster_items(snap),
            data_json=Markup(script_safe_json(_payload(store, snap))),
            plotly_js=Markup(plotly_js),
            app_js=Markup(app_js),
        )
    )
    return atomic_write_text(out_path, page)


def script_safe_json(value: Any) -> str:
    """JSON to inline in ``<script>``: every ``<``, ``>``, ``&`` escaped, so "</script" or "<!--"
    in a label can neither end nor confuse the block."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def csp_hash(script: str) -> str:
    """The CSP source that allows exactly this inline script text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


def _content_security_policy(*scripts: str) -> str:
    return (
        "default-src 'none'; "
        f"script-src {' '.join(csp_hash(s) for s in scripts)}; "
        "style-src 'unsafe-inline'; img-src data:; font-src data:; connect-src 'none'; "
        "base-uri 'none'; form-action 'none'"
    )


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("core.snapshots", "templates"),
        autoescape=True,
        finalize=_as_text,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _as_text(value: Any) -> Any:
    # Escape with html.escape (quotes as &quot;, &#x27;), as the page always has, rather than
    # markupsafe's &#34;: what was escaped reads the same before and after. Markup passes as is.
    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


def _template_text(name: str) -> str:
    return (files("core.snapshots") / "templates" / name).read_text(encoding="utf-8")


def _meta(snap: Snapshot) -> dict[str, Any]:
    return {
        "dataset": snap.dataset["name"],
        "n_points": snap.n_points,
        "encoder": snap.encoder["key"],
        "clustering": snap.clustering["method"],
        "n_clusters": len(snap.clusters),
        "projection": snap.projection["method"],
        "created": snap.created,
        "version": snap.replens_version,
        "id": snap.id[:12],
    }


def _cluster_items(snap: Snapshot) -> list[dict[str, Any]]:
    cls = snap.clusters
    return [
        {
            "id": c,
            "colour": cluster_colour(c),
            "label": label,
            "size": size,
            "provenance": f"{method}{', edited' if edited else ''}",
        }
        for c, label, size, method, edited in zip(
            cls["cluster"].astype(int).tolist(),
            cls["label"],
            cls["size"].astype(int).tolist(),
            cls["method"],
            cls["edited"],
        )
    ]


def _payload(store: Store, snap: Snapshot) -> dict[str, Any]:
    """What the page's script reads: the map's traces and layout, and per-point text and thumbnails."""
    pts, cls = snap.points, snap.clusters
    label_of = dict(zip(cls["cluster"].tolist(), cls["label"].tolist()))
    cluster_col = pts["cluster"].to_numpy()
    members = {int(c): np.flatnonzero(cluster_col == c).tolist() for c in cls["cluster"]}
    figure = _map_figure(snap)
    return {
        "traces": figure["data"],
        "layout": figure["layout"],
        "thumbs": _thumbnail_uris(store, pts["content_hash"]),
        "hashes": pts["content_hash"].tolist(),
        "paths": pts["rel_path"].tolist(),
        "folders": ["/".join(v) for v in pts["labels"]],
        "cluster": cluster_col.astype(int).tolist(),
        "labels": {str(c): label_of[c] for c in label_of},
        "members": {str(c): m for c, m in members.items()},
        "galleryTiles": GALLERY_TILES,
    }


def _thumbnail_uris(store: Store, hashes: pd.Series) -> dict[str, str]:
    uris = {}
    for content_hash in hashes:
        data = cached_thumbnail(store, content_hash, EXPORT_THUMB_SIZE)
        if data is not None:
            uris[content_hash] = "data:image/webp;base64," + base64.b64encode(data).decode("ascii")
    return uris


def _map_figure(snap: Snapshot) -> dict[str, Any]:
    """The map as Plotly JSON (data, layout) from the shared builder; customdata is the point index."""
    pts, cls = snap.points, snap.clusters
    frame = pd.DataFrame({"rel_path": pts["rel_path"], "label": ["/".join(v) for v in pts["labels"]]})
    fig = build_map_figure(snap.coords, frame, _cluster_colouring(pts, cls), np.arange(len(pts)))
    fig.update_layout(height=None, dragmode="pan")  # the page's CSS sizes the map; nothing here to select
    plain = _plain_arrays(fig.to_plotly_json())
    for trace in plain["data"]:
        # The side panel shows each point; Plotly's own hover label would render the path as HTML.
        trace.pop("hovertemplate", None)
        trace.pop("hovertext", None)
        trace["hoverinfo"] = "none"
        if len(pts) <= SVG_MAX_POINTS:
            trace["type"] = "scatter"
    return {"data": plain["data"], "layout": plain["layout"]}


def _cluster_colouring(pts: pd.DataFrame, cls: pd.DataFrame) -> Colouring:
    """One legend entry per cluster, named as on the Clusters page and coloured by its id.

    The figure builder HTML-escapes legend names (Plotly renders a pseudo-HTML subset in them),
    so they are passed as plain text here. Default labels ("cluster 3") are left to ``cluster_names``.
    """
    ids = cls["cluster"].astype(int).tolist()
    labels = {
        int(c): _short(str(label), LEGEND_LABEL_CHARS)
        for c, label, method in zip(cls["cluster"], cls["label"], cls["method"])
        if method != "default"
    }
    names = cluster_names(ids, labels)
    categories = np.array([names[int(c)] for c in pts["cluster"]], dtype=object)
    return Colouring("Cluster", categories=categories, colours={names[c]: cluster_colour(c) for c in ids})


def _plain_arrays(value: Any) -> Any:
    """Plotly JSON with its base64 typed-array specs ({"dtype", "bdata"}) decoded to plain lists.

    plotly.py >= 6 packs numeric arrays that way; the page's script and anything reading
    ``gd.data`` expect ordinary arrays, as the page always had.
    """
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]).newbyteorder("<"))
            if "shape" in value:  # "rows, columns", as plotly.py writes it
                array = array.reshape([int(n) for n in str(value["shape"]).split(",") if n.strip()])
            return array.tolist()
        return {k: _plain_arrays(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_arrays(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
