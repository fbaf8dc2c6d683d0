"""Thumbnail grids: cached thumbnails made on demand, shown as one paginated HTML block."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd
import streamlit as st

from core import images
from core.errors import RepLensError
from core.store import Store

GALLERY_PAGE_SIZE = 60
THUMB_WIDTH = 110


def thumbnail(store: Store, content_hash: str, source: str, rel_path: str) -> str | None:
    """Path of the cached thumbnail (made on demand); None if the file is gone."""
    try:
        path = images.thumbnail_path(store.cache_dir, content_hash)
        if not path.exists():
            path = images.ensure_thumbnail(store.cache_dir, content_hash, images.read_bytes(source, rel_path))
        return str(path)
    except RepLensError:
        return None


def gallery(store: Store, rows: pd.DataFrame, captions: list[str], key: str, per_page: int = GALLERY_PAGE_SIZE) -> None:
    """Paginated thumbnail grid of ``rows`` (content_hash, source, rel_path)."""
    n = len(rows)
    pages = max(1, -(-n // per_page))
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page"))
    start = (page - 1) * per_page
    chunk = rows.iloc[start : start + per_page]
    tiles = []
    for (_, row), caption in zip(chunk.iterrows(), captions[start : start + per_page]):
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
    ".rl-gallery figure{margin:0;width:WIDTHpx}"
    ".rl-gallery img{width:WIDTHpx;height:WIDTHpx;object-fit:contain;background:#f4f4f5;border-radius:4px}"
    ".rl-gallery figcaption{font-size:12px;color:#52525b;overflow-wrap:anywhere;line-height:1.25}</style>"
).replace("WIDTH", str(THUMB_WIDTH))


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
        figures.append(
            f'<figure><img src="data:image/webp;base64,{data}" alt="{text}" loading="eager">'
            f"<figcaption>{text}</figcaption></figure>"
        )
    return f'{_GALLERY_CSS}<div class="rl-gallery">{"".join(figures)}</div>'
