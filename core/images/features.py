"""Cheap, encoder-free image descriptors for colouring plots and sanity checks."""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.images.decode import to_rgb


def image_features(img: Image.Image) -> dict[str, float]:
    """Cheap, encoder-free descriptors for colouring plots and sanity checks.

    Computed on a copy shrunk to at most 256 px so cost does not depend on resolution;
    all values except ``aspect_ratio``, ``sharpness`` and ``entropy`` are in [0, 1].
    """
    width, height = img.size
    small = to_rgb(img.copy())
    small.thumbnail((256, 256), Image.Resampling.BILINEAR)
    rgb = np.asarray(small, dtype=np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    return {
        "aspect_ratio": width / height if height else 0.0,
        "brightness": float(luma.mean() / 255.0),
        "contrast": float(luma.std() / 255.0),
        "saturation": _mean_saturation(rgb),
        "colorfulness": _colorfulness(rgb),
        "sharpness": _laplacian_variance(luma),
        "entropy": _histogram_entropy(luma),
    }


def _mean_saturation(rgb: np.ndarray) -> float:
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    return float(saturation.mean())


def _colorfulness(rgb: np.ndarray) -> float:
    # Hasler & Suesstrunk (2003), divided by 255 so grey is 0 and saturated images near 0.5-1.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = np.hypot(rg.std(), yb.std())
    centre = np.hypot(rg.mean(), yb.mean())
    return float((spread + 0.3 * centre) / 255.0)


def _laplacian_variance(luma: np.ndarray) -> float:
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return 0.0
    lap = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    return float(lap.var() / 255.0**2)


def _histogram_entropy(luma: np.ndarray) -> float:
    counts = np.bincount(np.clip(np.rint(luma), 0, 255).astype(np.int64).ravel(), minlength=256)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log2(probs)).sum())
