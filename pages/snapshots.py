"""Snapshots: frozen clusterings to browse, open by link, export, import and compare.

A snapshot carries its own map, clusters and labels, and its thumbnails live in the cache
(written by the scan, or by the import of a ``.replens`` file), so nothing here reads the
original images: a colleague's imported snapshot shows the same as it did on their machine.

``?snapshot=<id>`` (the full id or a unique prefix of at least 4 hex characters) opens one
snapshot read-only, with no list and no controls that change anything.
"""

from __future__ import annotations

import html
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageOps

from core import config, images, mapfigure, snapshots
from core.errors import RepLensError
from core.fsutil import safe_relative_path
from core.mapfigure import MAX_MAP_POINTS
from core.palette import cluster_colour
from core.reduce import stratified_sample
from core.snapshots import Snapshot, SnapshotDiff
from core.store import Store
from core.uploads import check_single_upload
from ui.errors import show_error, user_errors
from ui.gallery import THUMB_WIDTH
from ui.resources import DatasetView, get_store
from ui.text import md_code, md_escape
from ui.widgets import selected_rows, short_key

LINK_PARAM = "snapshot"  # ?snapshot=<id or prefix>
URL_PATH = "snapshots"  # this page's url path in app.py's PAGES
GALLERY_LIMIT = 60  # thumbnails per cluster gallery / selection
MOVED_THUMBS = 12  # thumbnails of images that changed cluster, in a diff
SECTIONS = ("Browse", "Import", "Compare")
PROVENANCE = {  # how a cluster got its label (core.concepts labellers, a person, or none)
    "clip": "CLIP vocabulary",
    "text": "file names & captions",
    "visual": "pixel descriptors",
    "user": "named by hand",
    "default": "default name",
}
# Keys kept in session state (plain keys, set before their widgets exist).
PICK_KEY, CONFIRM_KEY, FLASH_KEY, IMPORTS_KEY = "snap_pick", "snap_confirm_delete", "snap_flash", "snap_imports"
SECTION_KEY = "snap_section"
TILE_PX = 2 * THUMB_WIDTH  # gallery tiles are TILE_PX squares shown THUMB_WIDTH wide (sharp on HiDPI screens)
TILE_BACKGROUND = (244, 244, 245)  # around a thumbnail that is not square
CAPTION_CHARS = 16  # a caption longer than this is shortened to one line, so tiles stay aligned
PLACEHOLDER = np.full((TILE_PX, TILE_PX, 3), 226, dtype=np.uint8)  # a grey tile where a thumbnail is missing


# ---------------------------------------------------------------------------------------
# Loading (snapshots are immutable and content-addressed: a cached copy never goes stale)


@st.cache_resource(show_spinner=False, max_entries=6)
def _load(_store: Store, where: str, snapshot_id: str) -> Snapshot:
    return snapshots.load_snapshot(_store, snapshot_id)


@st.cache_resource(show_spinner=False, max_entries=4)
def _diff(_store: Store, where: str, id_a: str, id_b: str) -> SnapshotDiff:
    return snapshots.diff_snapshots(_store, id_a, id_b)


def load(store: Store, id_or_prefix: str) -> Snapshot:
    """The snapshot named by an id or unique prefix (resolved against the database every run)."""
    return _load(store, str(store.path), snapshots.resolve_snapshot_id(store, id_or_prefix))


def export_bytes(store: Store, snapshot_id: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="replens-export-") as tmp:
        return snapshots.export_snapshot(store, snapshot_id, Path(tmp) / "s.replens").path.read_bytes()


def html_bytes(store: Store, snapshot_id: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="replens-html-") as tmp:
        return snapshots.snapshot_html(store, snapshot_id, Path(tmp) / "s.html").read_bytes()


def import_upload(store: Store, name: str, data: bytes) -> str:
    """Import an uploaded ``.replens`` file (core validates everything) and return its id."""
    with tempfile.TemporaryDirectory(prefix="replens-import-") as tmp:
        # The server-side file is named as the user named it, so messages name their file.
        path = Path(tmp) / (safe_relative_path(Path(name).name) or "upload.replens")
        path.write_bytes(data)
        return snapshots.import_snapshot(store, path)


# ---------------------------------------------------------------------------------------
# Small formatters


def file_stem(snap: Snapshot) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", snap.title).strip(".-")[:60] or "snapshot"
    return f"{slug}-{snap.id[:8]}"


def share_link(snapshot_id: str, page_url: str | None = None) -> str:
    """``<app root>/?snapshot=<id>``: absolute when the browser told us the app's URL.

    ``st.context.url`` ends with this page's path (``…/snapshots``); the link points at the
    app's root, which the router sends to this page (so it survives a renamed page).
    """
    base = (page_url if page_url is not None else getattr(st.context, "url", None) or "").rstrip("/")
    base = base.removesuffix(f"/{URL_PATH}")
    return f"{base}/?{LINK_PARAM}={snapshot_id}"


def fmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def scalar_items(values: dict[str, Any]) -> str:
    """``k=v`` for the plain values of a params/metrics dict (nested ones are in the JSON view)."""
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in values.items() if not isinstance(v, (dict, list)))


def provenance(method: str, edited: bool) -> str:
    text = PROVENANCE.get(method, method)
    return f"{text}, edited" if edited and method != "user" else text


def candidates_text(candidates: Any, n: int = 3) -> str:
    out = []
    for cand in (candidates or [])[:n]:
        if isinstance(cand, dict):
            word = cand.get("word", cand.get("label", ""))
            score = cand.get("score")
            out.append(f"{word} {score:.2f}" if isinstance(score, (int, float)) else str(word))
    return ", ".join(out)


def cluster_names(snap: Snapshot) -> dict[int, str]:
    return {int(c): str(label) for c, label in zip(snap.clusters["cluster"], snap.clusters["label"])}


# ---------------------------------------------------------------------------------------
# Thumbnails (from the cache only: an imported snapshot has no source files)


def square_tile(path: Path) -> np.ndarray | None:
    """The thumbnail at ``path`` fitted whole into a TILE_PX square on the tile colour; None if unreadable."""
    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.pad(img.convert("RGB"), (TILE_PX, TILE_PX), color=TILE_BACKGROUND))
    except (OSError, ValueError):
        return None


def thumbnails(store: Store, hashes: list[str]) -> list[np.ndarray]:
    """One square tile per image, all the same size: the cached thumbnail fitted whole into it (wide
    and tall images alike, so rows of the gallery line up), or a grey placeholder; never an error."""
    out: list[np.ndarray] = []
    for content_hash in hashes:
        try:
            path: Path | None = images.thumbnail_path(store.cache_dir, content_hash)
        except RepLensError:
            path = None
        tile = square_tile(path) if path is not None and path.is_file() else None
        out.append(PLACEHOLDER if tile is None else tile)
    return out


def tile_caption(text: str, limit: int = CAPTION_CHARS) -> str:
    """A caption that fits one line under a tile: long names keep their start and end ("long_na…e.png")."""
    if len(text) <= limit:
        return text
    tail = max(1, limit // 3)
    return f"{text[: limit - tail - 1]}…{text[-tail:]}"


def thumbnail_grid(store: Store, hashes: list[str], captions: list[str], total: int | None = None) -> None:
    if not hashes:
        return
    tiles = thumbnails(store, hashes)
    missing = sum(t is PLACEHOLDER for t in tiles)
    st.image(tiles, caption=[md_escape(tile_caption(c)) for c in captions], width=THUMB_WIDTH)
    notes = []
    if total is not None and total > len(hashes):
        notes.append(f"Showing {len(hashes):,} of {total:,}; the HTML export has the rest.")
    if missing:
        notes.append(
            f"{missing} shown grey: no thumbnail in this RepLens's cache (none came with the import, "
            "or the image was never scanned here)."
        )
    if notes:
        st.caption(" ".join(notes))


# ---------------------------------------------------------------------------------------
# The map (the snapshot's own coordinates, coloured by cluster)


def snapshot_figure(snap: Snapshot, rows: np.ndarray, height: int = 560) -> Any:
    """The shared map figure on the snapshot's own coordinates, one trace per cluster coloured by its id.

    Every point's customdata is its row in ``snap.points``; hover shows path and cluster label.
    """
    points = snap.points
    cluster_of = points["cluster"].to_numpy().astype(int)
    labels = cluster_names(snap)
    legend = mapfigure.cluster_names(sorted(set(cluster_of.tolist())), labels)
    colouring = mapfigure.Colouring(
        "Cluster",
        categories=np.array([legend[c] for c in cluster_of], dtype=object),
        colours={legend[c]: cluster_colour(c) for c in legend},
    )
    frame = pd.DataFrame({"rel_path": points["rel_path"], "label": ["/".join(v) for v in points["labels"]]})
    hover = np.array(
        [
            html.escape(p or f"(not in the dataset) {h[:12]}")
            + "<br>"
            + html.escape(f"cluster {c}: {labels.get(int(c), '?')}")
            for p, h, c in zip(points["rel_path"], points["content_hash"], cluster_of)
        ],
        dtype=object,
    )
    return mapfigure.build_map_figure(
        snap.coords, frame, colouring, rows, height=height, hover=hover, uirevision=snap.id
    )


@st.fragment  # selecting points reruns the map and its thumbnails, not the whole page
def map_section(store: Store, snap: Snapshot, key: str) -> None:
    n = snap.n_points
    rows = stratified_sample(snap.points["cluster"].to_numpy(), MAX_MAP_POINTS, seed=0)
    proj = snap.projection
    params = md_escape(scalar_items(proj.get("params") or {}))
    method = md_escape(str(proj.get("method", "?")).upper())
    st.caption(
        f"**{n:,} points** · map: {method}{f' ({params})' if params else ''}, "
        "as saved · hover a point for its path and cluster; click or drag a box to see images"
    )
    if len(rows) < n:
        st.caption(f"Drawing a sample of {len(rows):,} of {n:,} points (every cluster keeps its share).")
    event = st.plotly_chart(
        snapshot_figure(snap, rows),
        on_select="rerun",
        selection_mode=("points", "box", "lasso"),
        key=f"{key}_map",
        config={"scrollZoom": True, "displaylogo": False},
    )
    chosen = selected_rows(event)
    if chosen:
        picked = snap.points.iloc[chosen[:GALLERY_LIMIT]]
        names = cluster_names(snap)
        st.markdown(f"**Selection · {len(chosen):,} images**")
        thumbnail_grid(
            store,
            picked["content_hash"].tolist(),
            [
                f"{p.rsplit('/', 1)[-1] or '?'} · {names.get(int(c), '?')}"
                for p, c in zip(picked["rel_path"], picked["cluster"])
            ],
            total=len(chosen),
        )


# ---------------------------------------------------------------------------------------
# One snapshot, read-only


def header(snap: Snapshot) -> None:
    st.header(md_escape(snap.title), anchor=False)
    origin = "imported from a .replens file" if snap.origin == "imported" else "saved here"
    st.caption(f"Read-only snapshot · {origin} · id {md_code(snap.id[:12])}")
    if snap.notes.strip():
        with st.container(border=True):
            st.markdown(md_escape(snap.notes, line_breaks=True))  # notes are shown as typed, never as Markdown


def facts(snap: Snapshot) -> None:
    spec = snap.encoder.get("spec") or {}
    encoder = spec.get("name") or spec.get("id") or short_key(snap.encoder["key"])
    c = snap.clustering
    noise = c.get("noise_fraction")
    lines = [
        f"- **Dataset:** {md_escape(snap.dataset['name'])} · {snap.n_points:,} images",
        f"- **Encoder:** {md_escape(str(encoder))} ({md_code(snap.encoder['key'])})",
        f"- **Clustering:** {md_escape(c['method'])} · {c['n_clusters']} clusters"
        + (f" · noise {noise:.1%}" if isinstance(noise, (int, float)) else ""),
        f"- **Parameters:** {md_escape(scalar_items(c.get('params') or {}) or 'none recorded')}",
        f"- **Metrics:** {md_escape(scalar_items(c.get('metrics') or {}) or 'none recorded')}",
        f"- **Created:** {md_escape(snap.created)} · RepLens {md_escape(snap.replens_version)}",
    ]
    st.markdown("\n".join(lines))
    with st.expander("Everything recorded (manifest)"):
        st.json(snap.manifest(), expanded=2)


def share_section(store: Store, snap: Snapshot, key: str) -> None:
    st.markdown("**Copy link** · opens this snapshot read-only for anyone who can reach this RepLens")
    st.code(share_link(snap.id), language=None, wrap_lines=True)
    st.caption(
        "For someone on another machine or without RepLens: the HTML page opens offline in any browser; "
        "the .replens file imports on this page."
    )
    st.download_button(
        "Download .replens",
        lambda: export_bytes(store, snap.id),
        file_name=f"{file_stem(snap)}.replens",
        mime="application/zip",
        icon=":material/download:",
        key=f"{key}_dl_replens",
        on_click="ignore",
    )
    st.download_button(
        "Download HTML",
        lambda: html_bytes(store, snap.id),
        file_name=f"{file_stem(snap)}.html",
        mime="text/html",
        icon=":material/html:",
        key=f"{key}_dl_html",
        on_click="ignore",
    )


def snapshot_vectors(store: Store, snap: Snapshot) -> tuple[pd.DataFrame, np.ndarray] | None:
    """(images, vectors) of the snapshot's dataset under its encoder key in this RepLens, or None
    (an imported snapshot whose images were never embedded here, a deleted dataset…)."""
    name, key = snap.dataset.get("name"), snap.encoder.get("key")
    if not name or not key or name not in set(store.list_datasets()["dataset"]):
        return None
    try:
        return DatasetView(store, str(name)).embeddings(str(key))
    except RepLensError:
        return None


def typical_first(store: Store, snap: Snapshot, members: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """A cluster's members, most typical first where their vectors are known (then the others in
    stored order), and whether any were ordered; noise and vector-less members keep stored order."""
    if members.empty or int(members["cluster"].iloc[0]) < 0:
        return members, False
    found = snapshot_vectors(store, snap)
    if found is None:
        return members, False
    frame, vectors = found
    position = pd.Index(frame["content_hash"]).get_indexer(pd.Index(members["content_hash"]))
    known = position >= 0
    if not known.any():
        return members, False
    from core.cluster import typicality_order  # scikit-learn comes with core.cluster: only when needed

    rows = np.zeros((len(members), vectors.shape[1]), dtype=np.float32)
    rows[known] = vectors[position[known]]
    return members.iloc[typicality_order(rows, known)], True


@st.fragment  # picking a cluster's gallery reruns only this part
def clusters_section(store: Store, snap: Snapshot, key: str) -> None:
    cls = snap.clusters
    st.subheader(f"Clusters · {len(cls)}", anchor=False)
    table = pd.DataFrame(
        {
            "Cluster": cls["cluster"].astype(int),
            "Label": cls["label"],
            "Label from": [provenance(m, e) for m, e in zip(cls["method"], cls["edited"])],
            "Images": cls["size"].astype(int),
            "Share": cls["size"] / max(1, snap.n_points),
            "Candidates": [candidates_text(c) for c in cls["candidates"]],
        }
    )
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={"Share": st.column_config.ProgressColumn("Share", format="percent", min_value=0, max_value=1)},
    )
    names = cluster_names(snap)
    sizes = dict(zip(cls["cluster"].astype(int), cls["size"].astype(int)))
    order = sorted(sizes, key=lambda c: (c < 0, -sizes[c], c))
    pick = st.selectbox(
        "Images of cluster", order, key=f"{key}_gallery", format_func=lambda c: f"{c}: {names[c]} ({sizes[c]:,})"
    )
    members, ordered = typical_first(store, snap, snap.points[snap.points["cluster"] == pick])
    st.caption(
        "Most typical first (cosine to the cluster's centroid, from this RepLens's embeddings)."
        if ordered
        else "In stored order: "
        + (
            "noise has no centroid."
            if pick < 0
            else "this RepLens has no embeddings of these images, so typicality is unknown."
        )
    )
    shown = members.head(GALLERY_LIMIT)
    thumbnail_grid(
        store,
        shown["content_hash"].tolist(),
        [p.rsplit("/", 1)[-1] or "(not in the dataset)" for p in shown["rel_path"]],
        total=len(members),
    )


def show_snapshot(store: Store, snap: Snapshot, key: str) -> None:
    """Everything one snapshot holds; nothing here changes it."""
    header(snap)
    left, right = st.columns([3, 2], gap="large")
    with left:
        facts(snap)
    with right:
        share_section(store, snap, key)
    map_section(store, snap, key)
    clusters_section(store, snap, key)


# ---------------------------------------------------------------------------------------
# Sections


def linked_view(store: Store, ref: str) -> None:
    """``?snapshot=<id>``: that snapshot only, read-only."""
    try:
        snap = load(store, ref)
    except RepLensError as exc:
        show_error(exc)
        st.caption(
            "Links work within one RepLens deployment. From another one, ask for the .replens file and "
            "import it here, or for the HTML page."
        )
        snap = None
    if snap is not None:
        show_snapshot(store, snap, key="link")
    st.divider()
    if st.button("All snapshots", icon=":material/list:", key="snap_leave_link"):
        del st.query_params[LINK_PARAM]
        st.rerun()


def listing_table(listing: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Title": listing["title"],
            "Dataset": listing["dataset"],
            "Encoder": [short_key(k) for k in listing["encoder_key"]],
            "Images": listing["n_points"].astype(int),
            "Clusters": listing["n_clusters"].astype(int),
            "Created": pd.to_datetime(listing["created_at"]).dt.strftime("%Y-%m-%d %H:%M"),
            "Origin": listing["origin"],
            "Id": [s[:12] for s in listing["snapshot_id"]],
        }
    )


def option_label(listing: pd.DataFrame) -> dict[str, str]:
    return {
        sid: f"{title} · {dataset} · {sid[:8]}"
        for sid, title, dataset in zip(listing["snapshot_id"], listing["title"], listing["dataset"])
    }


def browse_section(store: Store) -> None:
    query = st.text_input(
        "Search", key="snap_search", placeholder="words in the title, notes or dataset name", icon=":material/search:"
    )
    listing = snapshots.list_snapshots(store, query)
    if listing.empty:
        if query.strip():
            st.info(f"No snapshot mentions “{md_escape(query.strip())}” in its title, notes or dataset.")
        else:
            st.info(
                "No snapshots yet. Save a cluster run as a snapshot on the **Clusters** page (or with "
                "`python -m core snapshot save --run RUN_ID --title …`), or import a .replens file.",
                icon=":material/info:",
            )
        return
    st.caption(f"{len(listing)} snapshot{'s' if len(listing) != 1 else ''}, newest first")
    st.dataframe(listing_table(listing), hide_index=True, width="stretch")
    labels = option_label(listing)
    ids = listing["snapshot_id"].tolist()
    if st.session_state.get(PICK_KEY) not in ids:
        st.session_state[PICK_KEY] = ids[0]
    sid = st.selectbox("Open", ids, key=PICK_KEY, format_func=labels.get)
    try:
        snap = _load(store, str(store.path), sid)
    except RepLensError as exc:  # deleted by another session since the list was read
        show_error(exc)
        return
    st.divider()
    show_snapshot(store, snap, key="browse")
    st.divider()
    delete_controls(store, snap)


def delete_controls(store: Store, snap: Snapshot) -> None:
    if st.session_state.get(CONFIRM_KEY) != snap.id:
        if st.button("Delete snapshot…", icon=":material/delete:", key="snap_delete"):
            st.session_state[CONFIRM_KEY] = snap.id
            st.rerun()
        return
    st.warning(
        f"Delete “{md_escape(snap.title)}” ({snap.id[:12]})? This cannot be undone, and its link stops working. "
        "Download the .replens file first to keep a copy.",
        icon=":material/warning:",
    )
    c1, c2, _ = st.columns([1, 1, 3])
    if c1.button("Yes, delete", type="primary", key="snap_delete_yes"):
        st.session_state.pop(CONFIRM_KEY, None)
        with user_errors():
            snapshots.delete_snapshot(store, snap.id)
            st.session_state[FLASH_KEY] = f"Deleted “{md_escape(snap.title)}”."
            st.session_state.pop(PICK_KEY, None)
            st.rerun()
    if c2.button("Cancel", key="snap_delete_no"):
        st.session_state.pop(CONFIRM_KEY, None)
        st.rerun()


def import_section(store: Store) -> None:
    st.caption(
        "A .replens file from `Download .replens` (here or on another machine). It is checked in full "
        "before anything is stored; thumbnails come with it, the original images are not needed."
    )
    upload = st.file_uploader(
        "Import a .replens file", type=["replens"], key="snap_upload", max_upload_size=config.max_upload_mb()
    )
    if upload is None:
        return
    done: dict[str, tuple[str, str]] = st.session_state.setdefault(IMPORTS_KEY, {})
    if upload.file_id not in done:  # import once per upload, not on every rerun
        try:
            check_single_upload(upload.name, upload.size)  # before its bytes are copied or written
            with st.spinner(f"Checking and importing {md_escape(upload.name)}…"):
                done[upload.file_id] = ("ok", import_upload(store, upload.name, upload.getvalue()))
        except RepLensError as exc:
            done[upload.file_id] = ("error", exc.for_page())
    status, value = done[upload.file_id]
    if status == "error":
        st.error(f"{md_escape(upload.name)} was not imported: {md_escape(value)}", icon=":material/error:")
        return
    st.success(
        f"Imported {md_escape(upload.name)}. It is now in the list (Browse) and opens by its link.",
        icon=":material/check_circle:",
    )
    st.session_state[PICK_KEY] = value  # Browse opens it next
    try:
        snap = _load(store, str(store.path), value)
    except RepLensError as exc:
        show_error(exc)
        return
    show_snapshot(store, snap, key="import")


def compare_section(store: Store) -> None:
    listing = snapshots.list_snapshots(store)
    if len(listing) < 2:
        st.info(
            "Comparing needs two snapshots of the same images (for instance one dataset clustered under two encoders).",
            icon=":material/info:",
        )
        return
    labels = option_label(listing)
    ids = listing["snapshot_id"].tolist()
    for widget_key, default in (("snap_diff_a", ids[1]), ("snap_diff_b", ids[0])):
        if st.session_state.get(widget_key) not in ids:
            st.session_state[widget_key] = default
    c1, c2 = st.columns(2)
    id_a = c1.selectbox("Snapshot A", ids, key="snap_diff_a", format_func=labels.get)
    id_b = c2.selectbox("Snapshot B", ids, key="snap_diff_b", format_func=labels.get)
    if id_a == id_b:
        st.info("Pick two different snapshots.")
        return
    with user_errors():
        diff = _diff(store, str(store.path), id_a, id_b)
        a, b = _load(store, str(store.path), id_a), _load(store, str(store.path), id_b)
        show_diff(store, diff, a, b)


def show_diff(store: Store, diff: SnapshotDiff, a: Snapshot, b: Snapshot) -> None:
    m = st.columns(5)
    m[0].metric("ARI", f"{diff.ari:.4f}", help="Adjusted Rand index: 1 = same partition, about 0 = chance.")
    m[1].metric("NMI", f"{diff.nmi:.4f}", help="Normalised mutual information: 1 = same partition.")
    m[2].metric("Shared images", f"{diff.n_shared:,}")
    m[3].metric(
        "Moved",
        f"{diff.n_moved:,}",
        help="Images whose B cluster is not the best-matching partner of "
        "their A cluster (one-to-one matching by shared images).",
    )
    m[4].metric("Only in A / B", f"{diff.only_a:,} / {diff.only_b:,}")
    names_a, names_b = cluster_names(a), cluster_names(b)
    st.markdown("**Confusion matrix** · images per (cluster in A, cluster in B)")
    st.plotly_chart(confusion_figure(diff, names_a, names_b), key="snap_confusion", config={"displaylogo": False})
    with st.expander(f"Matched clusters ({len(diff.matching)})"):
        st.dataframe(
            pd.DataFrame(
                [
                    {"A": f"{ca}: {names_a.get(ca, '?')}", "B": f"{cb}: {names_b.get(cb, '?')}", "Shared images": n}
                    for ca, cb, n in diff.matching
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    moved = diff.moved[diff.moved["moved"]]
    st.markdown(f"**Images that moved · {len(moved):,}**")
    if moved.empty:
        st.caption("None: every image stayed with the matching cluster.")
        return
    table = pd.DataFrame(
        {
            "Path": [p or f"(not in the dataset) {h[:12]}" for p, h in zip(moved["rel_path"], moved["content_hash"])],
            "Cluster in A": [f"{c}: {names_a.get(int(c), '?')}" for c in moved["cluster_a"]],
            "Cluster in B": [f"{c}: {names_b.get(int(c), '?')}" for c in moved["cluster_b"]],
            "A's match in B": [
                "none" if pd.isna(c) else f"{int(c)}: {names_b.get(int(c), '?')}" for c in moved["matched_b"]
            ],
        }
    )
    st.dataframe(table, hide_index=True, width="stretch")
    few = moved.head(MOVED_THUMBS)
    thumbnail_grid(
        store,
        few["content_hash"].tolist(),
        [f"A{int(x)} → B{int(y)}" for x, y in zip(few["cluster_a"], few["cluster_b"])],
        total=len(moved),
    )


def confusion_figure(diff: SnapshotDiff, names_a: dict[int, str], names_b: dict[int, str]) -> Any:
    import plotly.graph_objects as go

    conf = diff.confusion
    ys = [html.escape(f"A{int(c)}: {names_a.get(int(c), '?')[:30]}") for c in conf.index]
    xs = [html.escape(f"B{int(c)}: {names_b.get(int(c), '?')[:30]}") for c in conf.columns]
    small = conf.shape[0] * conf.shape[1] <= 900
    fig = go.Figure(
        go.Heatmap(
            z=conf.to_numpy(),
            x=xs,
            y=ys,
            colorscale="Blues",
            texttemplate="%{z}" if small else None,
            hovertemplate="%{y}<br>%{x}<br>%{z} images<extra></extra>",
            colorbar={"title": {"text": "images"}},
        )
    )
    fig.update_layout(
        height=min(900, 160 + 28 * len(ys)),
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"title": {"text": "Snapshot B"}, "side": "top"},
        yaxis={"title": {"text": "Snapshot A"}, "autorange": "reversed"},
    )
    return fig


def main() -> None:
    st.title("Snapshots")
    store = get_store()
    ref = st.query_params.get(LINK_PARAM)
    if ref:
        linked_view(store, ref)
        return
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        st.success(flash, icon=":material/check_circle:")
    section = st.radio("Section", SECTIONS, horizontal=True, key=SECTION_KEY, label_visibility="collapsed")
    if section == "Import":
        import_section(store)
    elif section == "Compare":
        compare_section(store)
    else:
        browse_section(store)


main()
