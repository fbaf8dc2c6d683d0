"""Labels from pixels alone: the ``visual`` labeller (works for any folder).

Descriptors (brightness, contrast, colourfulness, saturation, edge density, sharpness,
entropy, aspect ratio, dominant colour names), each cluster's mean against the rest as a
z-score, turned into words ("dark", "blue", "high-detail").
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from core import images as image_io
from core.cluster import NOISE, ClusterRun
from core.concepts.labels import DEFAULT_TOP, ClusterLabel, LabellingWarning, register_labeller
from core.errors import InvalidInputError, RepLensError
from core.store import Store

DESCRIPTOR_VERSION = 1
DESCRIPTOR_SIZE = 128
# Colour names by HSV (hue in degrees); dark pixels are black, unsaturated ones grey/white.
COLOUR_NAMES: tuple[str, ...] = (
    "black",
    "white",
    "grey",
    "red",
    "orange",
    "brown",
    "yellow",
    "green",
    "cyan",
    "blue",
    "purple",
    "pink",
)
_HUE_BINS = (
    (15, "red"),
    (45, "orange"),
    (70, "yellow"),
    (170, "green"),
    (200, "cyan"),
    (260, "blue"),
    (290, "purple"),
    (345, "pink"),
    (361, "red"),
)
# descriptor → (word when the cluster is above the rest, word when below; None: no word)
DESCRIPTOR_WORDS: dict[str, tuple[str | None, str | None]] = {
    "brightness": ("bright", "dark"),
    "contrast": ("high-contrast", "low-contrast"),
    "colorfulness": ("colourful", "muted"),
    "saturation": ("saturated", "desaturated"),
    "edge_density": ("high-detail", "smooth"),
    "sharpness": ("sharp", "soft"),
    "entropy": ("busy", "plain"),
    "log_aspect_ratio": ("wide", "tall"),
    **{f"colour_{name}": (name, None) for name in COLOUR_NAMES},
}


def colour_fractions(rgb: np.ndarray) -> dict[str, float]:
    """Share of pixels of each named colour (``COLOUR_NAMES``) in an (h, w, 3) uint8/float RGB array."""
    arr = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0
    mx, mn = arr.max(axis=1), arr.min(axis=1)
    sat = np.divide(mx - mn, mx, out=np.zeros_like(mx), where=mx > 0)
    r, g, b = arr.T
    delta = np.where(mx - mn > 0, mx - mn, 1.0)
    hue = np.where(mx == r, ((g - b) / delta) % 6, np.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4)) * 60.0
    names = np.empty(len(arr), dtype=object)
    dark, grey = mx < 0.2, sat < 0.15
    names[dark] = "black"
    names[~dark & grey] = np.where(mx[~dark & grey] > 0.85, "white", "grey")
    chroma = ~dark & ~grey
    lower = 0.0
    for upper, name in _HUE_BINS:
        names[chroma & (hue >= lower) & (hue < upper)] = name
        lower = upper
    # Dark oranges and reds read as brown.
    names[chroma & np.isin(names, ["orange", "red"]) & (mx < 0.6)] = "brown"
    total = max(len(arr), 1)
    return {name: float(np.sum(names == name) / total) for name in COLOUR_NAMES}


def visual_descriptors(image: Any, *, width: int | None = None, height: int | None = None) -> dict[str, float]:
    """Descriptors of one PIL image (shrunk to ≤128 px first); ``width``/``height`` give the
    original aspect ratio when ``image`` is a thumbnail."""
    from scipy import ndimage

    img = image.convert("RGB") if image.mode != "RGB" else image
    if max(img.size) > DESCRIPTOR_SIZE:
        img = img.copy()
        img.thumbnail((DESCRIPTOR_SIZE, DESCRIPTOR_SIZE))
    base = image_io.image_features(img)
    rgb = np.asarray(img, dtype=np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114]) / 255.0
    magnitude = np.hypot(ndimage.sobel(luma, axis=0), ndimage.sobel(luma, axis=1)) / 4.0
    w, h = (width, height) if width and height else img.size
    out = {
        "brightness": base["brightness"],
        "contrast": base["contrast"],
        "colorfulness": base["colorfulness"],
        "saturation": base["saturation"],
        "sharpness": base["sharpness"],
        "entropy": base["entropy"],
        "edge_density": float(np.mean(magnitude > 0.1)),
        "log_aspect_ratio": float(np.log(w / h)) if h else 0.0,
    }
    out.update({f"colour_{k}": v for k, v in colour_fractions(rgb).items()})
    return out


_DESCRIPTOR_CACHE: dict[tuple[str, int], dict[str, float]] = {}
_DESCRIPTOR_CACHE_LOCK = threading.Lock()
_DESCRIPTOR_CACHE_LIMIT = 500_000


def image_descriptors(store: Store, images: pd.DataFrame, *, workers: int = 4) -> pd.DataFrame:
    """Descriptor table (one row per row of ``images``, indexed by content_hash), cached per
    image hash in memory. Thumbnails are read when present, else the image is decoded. Rows
    that cannot be read are NaN (and warned about)."""
    from PIL import Image

    def compute(row: Any) -> tuple[str, dict[str, float] | None, str | None]:
        cache_key = (row.content_hash, DESCRIPTOR_VERSION)
        with _DESCRIPTOR_CACHE_LOCK:
            hit = _DESCRIPTOR_CACHE.get(cache_key)
        if hit is not None:
            return row.content_hash, hit, None
        try:
            thumb = image_io.thumbnail_path(store.cache_dir, row.content_hash)
            if thumb.is_file():
                with Image.open(thumb) as opened:
                    img = opened.convert("RGB")
            else:
                data = image_io.read_bytes(row.source, row.rel_path)
                img = image_io.decode_rgb(data, draft_size=(DESCRIPTOR_SIZE, DESCRIPTOR_SIZE))
            values = visual_descriptors(img, width=int(row.width), height=int(row.height))
        except (RepLensError, OSError, ValueError) as exc:
            return row.content_hash, None, f"{row.rel_path}: {exc}"
        with _DESCRIPTOR_CACHE_LOCK:
            if len(_DESCRIPTOR_CACHE) < _DESCRIPTOR_CACHE_LIMIT:
                _DESCRIPTOR_CACHE[cache_key] = values
        return row.content_hash, values, None

    rows = list(images.itertuples(index=False))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="replens-descr") as pool:
        results = list(pool.map(compute, rows))
    failed = [err for _, values, err in results if values is None]
    if failed:
        warnings.warn(
            f"{len(failed)} image(s) could not be read for visual descriptors and are left out, e.g. {failed[0]}",
            LabellingWarning,
            stacklevel=2,
        )
    columns = list(DESCRIPTOR_WORDS)
    table = pd.DataFrame(
        [values if values is not None else {} for _, values, _ in results], columns=columns, dtype=np.float64
    )
    table.index = pd.Index([h for h, _, _ in results], name="content_hash")
    return table


def descriptor_labels(
    descriptors: pd.DataFrame,
    labels: np.ndarray,
    *,
    top: int = DEFAULT_TOP,
    min_z: float = 2.0,
    words_in_label: int = 2,
) -> list[ClusterLabel]:
    """Rank descriptors per cluster by Welch's z of the cluster mean against the rest and turn
    the strongest into words. Candidates: ``{"word", "descriptor", "score" (= |z|), "z",
    "cluster_mean", "rest_mean"}``; the label joins the top ``words_in_label`` words with
    |z| ≥ ``min_z`` (at least the top word, so every cluster gets a label)."""
    labels = np.asarray(labels)
    if len(descriptors) != len(labels):
        raise InvalidInputError(f"{len(descriptors)} descriptor rows for {len(labels)} labels")
    values = descriptors.to_numpy(dtype=np.float64)
    names = list(descriptors.columns)
    valid = ~np.isnan(values).any(axis=1)
    out = []
    for c in sorted(c for c in set(labels.tolist()) if c != NOISE):
        inside, outside = valid & (labels == c), valid & (labels != c)
        if inside.sum() == 0 or outside.sum() == 0:
            continue
        z = _welch_z(values[inside], values[outside])
        candidates = []
        for d in np.argsort(-np.abs(z), kind="stable"):
            high, low = DESCRIPTOR_WORDS.get(names[d], (names[d], None))
            word = high if z[d] > 0 else low
            if word is None or not np.isfinite(z[d]) or z[d] == 0:
                continue
            candidates.append(
                {
                    "word": word,
                    "descriptor": names[d],
                    "score": round(float(abs(z[d])), 4),
                    "z": round(float(z[d]), 4),
                    "cluster_mean": round(float(values[inside, d].mean()), 6),
                    "rest_mean": round(float(values[outside, d].mean()), 6),
                }
            )
            if len(candidates) == top:
                break
        if not candidates:
            continue
        strong = [cand["word"] for cand in candidates if cand["score"] >= min_z][:words_in_label]
        out.append(ClusterLabel(c, " ".join(strong or [candidates[0]["word"]]), "visual", candidates))
    return out


def _welch_z(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(mean_a − mean_b) / sqrt(var_a/n_a + var_b/n_b) per column (sample variances; 0 for n = 1)."""
    var_a = a.var(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
    var_b = b.var(axis=0, ddof=1) if len(b) > 1 else np.zeros(b.shape[1])
    diff = a.mean(axis=0) - b.mean(axis=0)
    se = np.sqrt(var_a / len(a) + var_b / len(b))
    # A tiny floor keeps constant descriptors at z = 0 and avoids dividing by zero.
    return np.divide(diff, se, out=np.zeros_like(diff), where=se > 1e-12)


@register_labeller("visual")
def visual_labeller(
    store: Store,
    run: ClusterRun,
    *,
    top: int = DEFAULT_TOP,
    min_z: float = 2.0,
    words_in_label: int = 2,
    workers: int = 4,
) -> list[ClusterLabel]:
    """Labels from pixels alone (works for any folder). Transparency is not a descriptor:
    the store does not record alpha, and images are composited on grey when decoded."""
    images = store.dataset_images(run.dataset)
    position = pd.Index(run.hashes).get_indexer(pd.Index(images["content_hash"]))
    keep = position >= 0
    table = image_descriptors(store, images.loc[keep], workers=workers)
    return descriptor_labels(table, run.labels[position[keep]], top=top, min_z=min_z, words_in_label=words_in_label)
