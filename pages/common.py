"""What every page shares: the cached Store, encoders and data, pickers, gallery, uploads.

Heavy objects (embedding matrices, neighbour indexes, layouts) are cached with
``st.cache_resource``, not ``st.cache_data``: cache_data would pickle-copy a 150 MB matrix
on every rerun. They are treated as read-only. Cache keys include a cheap *version* of the
dataset (its update time and embedding counts), so new images or vectors are never hidden
by a stale cache.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import streamlit as st

from core import config, images
from core.encoders import BaseEncoder, EncoderSpec, load_encoder
from core.errors import InvalidInputError, RepLensError
from core.neighbors import NeighborIndex
from core.reduce import Projection, project
from core.store import Store

if TYPE_CHECKING:  # core.cluster imports scikit-learn (~0.9 s): only pages that cluster pay for it
    from core.cluster import ClusterRun

PAGE_DATA = "pages/data.py"
PAGE_MAP = "pages/map.py"
PAGE_NEIGHBORS = "pages/neighbors.py"

GALLERY_PAGE_SIZE = 60
THUMB_WIDTH = 110
# Shared between pages (plain keys, not widget keys, so they survive page switches).
DATASET_KEY = "rl_dataset"
ENCODER_KEY = "rl_encoder_key"
QUERY_KEY = "rl_query_hash"
SELECTION_KEY = "rl_selection_hashes"         # content hashes of the last Map selection
CLUSTER_RUN_KEY = "rl_cluster_run"            # the cluster run picked on the Clusters page
SELECTION_DATASET_KEY = "rl_selection_dataset"  # the dataset that selection belongs to


# ---------------------------------------------------------------------------------------
# Routing guard


def _route_through_app() -> None:
    """Send a direct page visit through app.py's router.

    Because a ``pages/`` folder exists, a server whose *first* request names a page URL
    (``/bias``, ``/snapshots?snapshot=…`` from a shared link) runs that page file on its own,
    in Streamlit's old folder-based multipage mode: wrong sidebar, no router. Leaving that
    mode and rerunning makes Streamlit run app.py, whose ``st.navigation`` resolves the same
    URL. (st.navigation flips this same flag once app.py has run.)
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_route_through_app()


# ---------------------------------------------------------------------------------------
# Cached resources


@st.cache_resource(show_spinner=False)
def _store_at(db_path: str, cache_dir: str) -> Store:
    return Store(db_path, cache_dir)


def get_store() -> Store:
    """The Store for REPLENS_DB / REPLENS_CACHE (one per location, shared by all sessions)."""
    return _store_at(str(config.db_path()), str(config.cache_dir()))


@st.cache_resource(show_spinner=False, max_entries=4)
def get_encoder(encoder_id: str, layer: str, pooling: str) -> BaseEncoder:
    """A loaded encoder, shared by sessions (forward passes are serialised inside the encoder)."""
    return load_encoder(encoder_id, "auto", layer=layer, pooling=pooling)


def data_version(store: Store, dataset: str) -> str:
    """Changes whenever the dataset's images or any of its embeddings change."""
    info = store.list_datasets().set_index("dataset")
    updated = str(info.loc[dataset, "updated_at"]) if dataset in info.index else ""
    status = store.embedding_status(dataset)
    counts = ",".join(f"{k}={n}" for k, n in zip(status["encoder_key"], status["n_embedded"]))
    return f"{updated}|{counts}"


# The cached loaders take the store's location (db, cache) rather than the Store itself:
# plain strings hash cheaply and pin each entry to one database.


@st.cache_resource(show_spinner=False, max_entries=6)
def _embeddings(db: str, cache: str, dataset: str, key: str, version: str) -> tuple[pd.DataFrame, np.ndarray]:
    return _store_at(db, cache).load_embeddings(dataset, key)


@st.cache_resource(show_spinner=False, max_entries=6)
def _neighbor_index(db: str, cache: str, dataset: str, key: str, version: str) -> NeighborIndex:
    frame, vectors = _embeddings(db, cache, dataset, key, version)
    return NeighborIndex(vectors, encoder_key=key, hashes=frame["content_hash"].tolist(), cache_dir=cache)


@st.cache_resource(show_spinner=False, max_entries=8)
def _projection(db: str, cache: str, dataset: str, key: str, method: str, params_json: str,
                version: str) -> Projection:
    frame, vectors = _embeddings(db, cache, dataset, key, version)
    return project(_store_at(db, cache), dataset, key, method, json.loads(params_json), images=frame, vectors=vectors)


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

    def projection(self, key: str, method: str, params: dict[str, Any]) -> Projection:
        return _projection(*self._where, self.dataset, key, method, json.dumps(params, sort_keys=True), self.version)


# ---------------------------------------------------------------------------------------
# Errors


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a RepLensError as st.error (its message says what to do) instead of a traceback."""
    try:
        yield
    except RepLensError as exc:
        st.error(str(exc), icon=":material/error:")


# ---------------------------------------------------------------------------------------
# Encoder keys ("{id}@{version}/{layer}/{pooling}", or "import:NAME" for imported vectors)


@dataclass(frozen=True)
class KeyParts:
    encoder_id: str
    version: str
    layer: str
    pooling: str


def parse_key(key: str) -> KeyParts | None:
    """The parts of an extracted encoder's key; None for imported vectors (no encoder to run)."""
    match = re.fullmatch(r"([^@]+)@(.+)/([^/]+)/([^/]+)", key)
    return KeyParts(*match.groups()) if match else None


def query_encoder(key: str) -> BaseEncoder:
    """The encoder that produced ``key``, to embed a new image into the same space."""
    parts = parse_key(key)
    if parts is None:
        raise InvalidInputError(
            f"{key} holds imported vectors: RepLens cannot embed a new image into that space. "
            "Pick an image from the dataset instead, or choose an extracted encoder."
        )
    encoder = get_encoder(parts.encoder_id, parts.layer, parts.pooling)
    if encoder.key != key:
        raise InvalidInputError(
            f"The stored vectors came from {key}, but this RepLens has {encoder.key}. An uploaded image "
            "would land in a different space; re-extract the dataset on the Data page first."
        )
    return encoder


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


# ---------------------------------------------------------------------------------------
# Shared pickers (sidebar)


def remembered_select(label: str, options: list[str], shared_key: str, widget_key: str,
                       format_func: Any = str, container: Any = None) -> str:
    """A selectbox whose choice is also kept under ``shared_key`` so other pages start from it."""
    where = container if container is not None else st.sidebar
    if st.session_state.get(widget_key) not in options:
        remembered = st.session_state.get(shared_key)
        st.session_state[widget_key] = remembered if remembered in options else options[0]
    choice = where.selectbox(label, options, key=widget_key, format_func=format_func)
    st.session_state[shared_key] = choice
    return choice


def dataset_picker(store: Store) -> str | None:
    names = store.dataset_names()
    if not names:
        st.info("No datasets yet. Add an image folder on the **Data** page.", icon=":material/info:")
        st.page_link(PAGE_DATA, label="Go to Data", icon=":material/folder_open:")
        return None
    return remembered_select("Dataset", names, DATASET_KEY, "w_dataset")


def encoder_key_picker(store: Store, dataset: str, label: str = "Embeddings") -> str | None:
    keys = store.embedded_keys(dataset)
    if not keys:
        st.info(f"**{dataset}** has no embeddings yet. Extract them on the **Data** page.", icon=":material/info:")
        st.page_link(PAGE_DATA, label="Go to Data", icon=":material/folder_open:")
        return None
    return remembered_select(label, keys, ENCODER_KEY, "w_encoder_key", format_func=short_key)


def dataset_and_key(store: Store) -> tuple[str, str] | None:
    """The sidebar's dataset and embeddings pickers; None (with a pointer to Data) when either is missing."""
    dataset = dataset_picker(store)
    if dataset is None:
        return None
    key = encoder_key_picker(store, dataset)
    return None if key is None else (dataset, key)


def short_key(key: str) -> str:
    parts = parse_key(key)
    if parts is None:
        return key
    return f"{parts.encoder_id} · {parts.layer}/{parts.pooling}"


# ---------------------------------------------------------------------------------------
# Thumbnails and gallery


def thumbnail(store: Store, content_hash: str, source: str, rel_path: str) -> str | None:
    """Path of the cached thumbnail (made on demand); None if the file is gone."""
    try:
        path = images.thumbnail_path(store.cache_dir, content_hash)
        if not path.exists():
            path = images.ensure_thumbnail(store.cache_dir, content_hash, images.read_bytes(source, rel_path))
        return str(path)
    except RepLensError:
        return None


def gallery(store: Store, rows: pd.DataFrame, captions: list[str], key: str,
            per_page: int = GALLERY_PAGE_SIZE) -> None:
    """Paginated thumbnail grid of ``rows`` (content_hash, source, rel_path)."""
    n = len(rows)
    pages = max(1, -(-n // per_page))
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page"))
    start = (page - 1) * per_page
    chunk = rows.iloc[start:start + per_page]
    tiles = []
    for (_, row), caption in zip(chunk.iterrows(), captions[start:start + per_page]):
        path = thumbnail(store, row["content_hash"], row["source"], row["rel_path"])
        if path is not None:
            tiles.append((path, caption))
    if pages > 1:
        st.caption(f"Images {start + 1}–{start + len(chunk)} of {n}")
    if tiles:
        st.html(gallery_html(tiles))
    missing = len(chunk) - len(tiles)
    if missing:
        st.caption(f"{missing} image(s) could not be read from disk any more; re-scan the dataset.")


_GALLERY_CSS = (
    "<style>.rl-gallery{display:flex;flex-wrap:wrap;gap:10px}"
    ".rl-gallery figure{margin:0;width:%dpx}"
    ".rl-gallery img{width:%dpx;height:%dpx;object-fit:contain;background:#f4f4f5;border-radius:4px}"
    ".rl-gallery figcaption{font-size:12px;color:#52525b;overflow-wrap:anywhere;line-height:1.25}</style>"
) % (THUMB_WIDTH, THUMB_WIDTH, THUMB_WIDTH)


def gallery_html(tiles: list[tuple[str, str]]) -> str:
    """One HTML block of (thumbnail path, caption) tiles, images inlined as data: URIs.

    One element instead of one st.image per thumbnail: 60 small WebPs arrive with the page
    instead of as 60 separate media requests (measured 2.0 s -> well under 1 s for the grid).
    Captions are escaped; they can hold file names from untrusted uploads.
    """
    figures = []
    for path, caption in tiles:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        text = html.escape(caption)
        figures.append(f'<figure><img src="data:image/webp;base64,{data}" alt="{text}" loading="eager">'
                       f"<figcaption>{text}</figcaption></figure>")
    return f'{_GALLERY_CSS}<div class="rl-gallery">{"".join(figures)}</div>'


def paths_csv(rows: pd.DataFrame) -> bytes:
    cols = [c for c in ("source", "rel_path", "label", "caption", "content_hash") if c in rows.columns]
    return rows[cols].to_csv(index=False).encode()


def files_zip(rows: pd.DataFrame) -> bytes:
    """The original files of ``rows`` in a zip, under their dataset-relative paths."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:  # images are compressed already
        for _, row in rows.iterrows():
            try:
                archive.writestr(row["rel_path"], images.read_bytes(row["source"], row["rel_path"]))
            except RepLensError:
                continue  # a file deleted since the scan: export the rest
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# Uploads (pure functions; the Data page calls them)

UPLOAD_TYPES = sorted({ext.lstrip(".") for ext in images.SUPPORTED_EXTENSIONS} | {"txt"})
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f<>:\"|?*\\]")


def dataset_slug(name: str) -> str:
    """A folder name for a dataset's uploads (the dataset name itself may hold any text)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip(".-")
    if not slug:
        raise InvalidInputError("Give the dataset a name with at least one letter or digit.")
    return slug[:80]


def safe_relative_path(name: str) -> str | None:
    """A browser-supplied path made safe to join under a folder, or None to refuse it.

    Refused: absolute paths, drive letters, ``..`` parts, control characters, hidden files.
    """
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        return None
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    parts = [_UNSAFE_CHARS.sub("_", p)[:200] for p in parts]
    return "/".join(parts)


def strip_common_root(paths: list[str]) -> list[str]:
    """Drop the picked folder's own name ("holiday/cats/a.jpg" -> "cats/a.jpg").

    A directory upload names every file under the folder the user picked; when that folder
    has sub-folders, they are the labels and the picked name would only shadow them. A flat
    folder keeps its name, so uploading "cats" then "dogs" gives two labels.
    """
    split = [PurePosixPath(p).parts for p in paths]
    nested = any(len(s) > 2 for s in split)
    if split and nested and all(len(s) > 1 for s in split) and len({s[0] for s in split}) == 1:
        return ["/".join(s[1:]) for s in split]
    return paths


def save_files(dest: Path, files: Iterable[tuple[str, bytes]]) -> tuple[int, list[str]]:
    """Write (name, bytes) pairs under ``dest`` keeping sub-folders; -> (saved, refused names)."""
    refused: list[str] = []
    kept: list[tuple[str, bytes]] = []
    for name, data in files:
        rel = safe_relative_path(name)
        if rel is None:
            refused.append(name)
        else:
            kept.append((rel, data))
    root = dest.resolve()
    saved = 0
    for rel, (_, data) in zip(strip_common_root([p for p, _ in kept]), kept):
        target = (root / rel).resolve()
        if root not in target.parents:
            refused.append(rel)  # belt and braces: never write outside the upload folder
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        saved += 1
    return saved, refused


def save_archive(dest: Path, name: str, data: bytes) -> Path:
    """Keep an uploaded .zip under ``dest/archives/``; core scans archives without unpacking."""
    safe = safe_relative_path(PurePosixPath(name.replace("\\", "/")).name)
    if safe is None or not safe.lower().endswith(".zip"):
        raise InvalidInputError(f"{name!r} is not a .zip file name; upload a .zip archive.")
    if not data.startswith(b"PK"):
        raise InvalidInputError(f"{name} is not a zip archive (wrong header); re-create it and upload again.")
    target = dest / "archives" / safe
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def upload_dir(store: Store, dataset: str) -> Path:
    return store.cache_dir / "uploads" / dataset_slug(dataset)


def embed_progress(bar: Any, label: str = "") -> Callable[[int, int], None]:
    """A progress callback for ``embed_dataset`` that shows images/s and an ETA on ``bar``.

    The first report already counts the cached images, so the rate is measured from it.
    """
    first: list[tuple[int, float]] = []
    prefix = f"{label}: " if label else ""

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if not first:
            first.append((done, now))
        start_done, start_time = first[0]
        rate = (done - start_done) / (now - start_time) if now > start_time else 0.0
        eta = f" · ETA {fmt_duration((total - done) / rate)}" if rate > 0 and done < total else ""
        bar.progress(done / total if total else 1.0, text=f"{prefix}{done:,}/{total:,} images · {rate:.1f} img/s{eta}")

    return progress


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


# ---------------------------------------------------------------------------------------
# Map figure (plotly only; the bench times it without a Streamlit runtime)

MAX_MAP_POINTS = 50_000
MAX_LEGEND_GROUPS = 20
_PALETTE = ("#4F46E5", "#E11D48", "#059669", "#D97706", "#0891B2", "#7C3AED", "#DB2777", "#65A30D",
            "#EA580C", "#2563EB", "#0D9488", "#9333EA", "#CA8A04", "#DC2626", "#16A34A", "#0284C7",
            "#C026D3", "#57534E", "#4D7C0F", "#BE123C")
OTHER_COLOUR = "#A1A1AA"


@dataclass(frozen=True)
class Colouring:
    """How points are coloured: categories (one trace each) or one numeric field."""

    title: str
    categories: np.ndarray | None = None   # one label per row
    values: np.ndarray | None = None       # one number per row


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


def display_rows(frame: pd.DataFrame, limit: int = MAX_MAP_POINTS) -> np.ndarray:
    """Rows drawn on the map: all of them, or a per-folder stratified sample above ``limit``."""
    from core.reduce import stratified_sample

    return stratified_sample(frame["label"].fillna("").to_numpy(), limit, seed=0)


def build_map_figure(coords: np.ndarray, frame: pd.DataFrame, colouring: Colouring, rows: np.ndarray,
                     height: int = 640) -> Any:
    """A WebGL scatter of ``coords[rows]``; every point's customdata is its row in ``frame``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    paths = frame["rel_path"].to_numpy()
    labels = frame["label"].fillna("").to_numpy()
    marker_size = 7 if len(rows) < 2_000 else 4 if len(rows) < 20_000 else 3
    if colouring.values is not None:
        fig.add_trace(go.Scattergl(
            x=coords[rows, 0], y=coords[rows, 1], mode="markers", customdata=rows, hovertext=_hover(paths, labels, rows),
            name=colouring.title, showlegend=False,
            marker={"size": marker_size, "color": colouring.values[rows], "colorscale": "Viridis",
                    "colorbar": {"title": {"text": colouring.title}, "thickness": 12}, "opacity": 0.85},
            hovertemplate="%{hovertext}<br>" + colouring.title + ": %{marker.color:,.0f}<extra></extra>",
        ))
    else:
        cats = colouring.categories if colouring.categories is not None else np.full(len(frame), "images")
        shown = cats[rows]
        names, counts = np.unique(shown, return_counts=True)
        ordered = [str(n) for n in names[np.argsort(-counts, kind="stable")]]
        top = ordered[:MAX_LEGEND_GROUPS]
        groups = [(name, rows[shown == name], _PALETTE[i % len(_PALETTE)]) for i, name in enumerate(top)]
        rest = ordered[MAX_LEGEND_GROUPS:]
        if rest:
            groups.append((f"other ({len(rest)} groups)", rows[np.isin(shown, rest)], OTHER_COLOUR))
        for name, members, colour in groups:
            fig.add_trace(go.Scattergl(
                x=coords[members, 0], y=coords[members, 1], mode="markers", name=f"{name} ({len(members):,})",
                customdata=members, hovertext=_hover(paths, labels, members),
                marker={"size": marker_size, "color": colour, "opacity": 0.85},
                hovertemplate="%{hovertext}<extra></extra>",
            ))
    fig.update_layout(
        height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10}, dragmode="select", hovermode="closest",
        legend={"itemsizing": "constant", "title": {"text": colouring.title}},
        xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"}, plot_bgcolor="#FAFAFC",
        uirevision="map",  # keep zoom/pan when only the colouring changes
    )
    return fig


def _hover(paths: np.ndarray, labels: np.ndarray, members: np.ndarray) -> list[str]:
    return [f"{p}<br>folder: {lab or '(top level)'}" for p, lab in zip(paths[members], labels[members])]


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


def role_folders(picked: dict[str, list[str]], fallback: dict[str, str]) -> dict[str, str]:
    """A distinct top-level folder name per role for four separately uploaded folders.

    ``picked`` maps a role to the browser's file names ("flowers/a.jpg"); the folder the user
    picked names the role's folder, unless it is missing, unsafe, or already taken by another
    role, in which case ``fallback[role]`` (e.g. "X") is used, suffixed until unique.
    """
    taken: set[str] = set()
    folders: dict[str, str] = {}
    for role, names in picked.items():
        tops = {n.replace("\\", "/").split("/")[0] for n in names if "/" in n.replace("\\", "/")}
        name = tops.pop() if len(tops) == 1 else ""
        name = re.sub(r"[^A-Za-z0-9._ -]+", "-", name).strip(". -")
        if not name or name.lower() in taken:
            name = fallback[role]
        base, n = name, 2
        while name.lower() in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name.lower())
        folders[role] = name
    return folders


def flat_role_path(folder: str, name: str) -> str:
    """``folder/<file>`` for an uploaded file, its own sub-folders folded into the file name.

    One level only: folder sets match a folder name at any depth, so a sub-folder inside
    one role's upload must not be able to join another role's set."""
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    inner = parts[1:] if len(parts) > 1 else parts
    return f"{folder}/{'__'.join(inner)}"


# ---------------------------------------------------------------------------------------
# Cluster runs on a map (Clusters page and the Map's "Cluster" colouring)

NOISE = -1  # core.cluster.NOISE, without importing scikit-learn for every page
NOISE_NAME = "noise"
NOT_IN_RUN = "not in this run"


def cluster_names(ids: list[int] | np.ndarray, labels: dict[int, str]) -> dict[int, str]:
    """What a cluster is called on the map and in pickers: "3 · sunsets", "cluster 3", "noise"."""
    names = {}
    for c in (int(i) for i in ids):
        if c == NOISE:
            names[c] = NOISE_NAME
        else:
            names[c] = f"{c} · {labels[c]}" if labels.get(c) else f"cluster {c}"
    return names


def run_cluster_names(store: Store, run: ClusterRun) -> dict[int, str]:
    """Names of every cluster of a stored run, with its stored (or edited) labels."""
    stored = store.load_cluster_labels(run.run_id)
    return cluster_names(np.unique(run.labels).tolist(),
                         {int(c): str(name) for c, name in zip(stored["cluster"], stored["label"])})


def map_categories(frame: pd.DataFrame, run: ClusterRun, names: dict[int, str]) -> np.ndarray:
    """Each row of ``frame`` (the embeddings' image order) named by its cluster in ``run``."""
    position = pd.Index(run.hashes).get_indexer(frame["content_hash"])
    ids = np.where(position >= 0, run.labels[np.maximum(position, 0)], np.iinfo(np.int64).min)
    lookup = {**names, int(np.iinfo(np.int64).min): NOT_IN_RUN}
    return np.array([lookup.get(int(c), f"cluster {c}") for c in ids], dtype=object)


def grey_noise(fig: Any) -> Any:
    """Noise and images outside the run drawn grey, so the clusters stand out."""
    for trace in fig.data:
        if str(trace.name).startswith((f"{NOISE_NAME} (", f"{NOT_IN_RUN} (")):
            trace.marker.color = OTHER_COLOUR
    return fig


def run_description(row: pd.Series) -> str:
    created = pd.Timestamp(row["created_at"]).strftime("%b %d %H:%M")
    parent = row.get("parent_run_id")
    what = f"{row['method']} of {str(parent)[:6]}" if isinstance(parent, str) and parent else str(row["method"])
    return f"{created} · {what} · {int(row['n_clusters'])} clusters · {row['run_id'][:6]}"
