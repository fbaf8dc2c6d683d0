"""What the big map is sent: the points blob (coordinates and file names) and the colours blob
(each point's category or value, and the legend). Pure numpy, no Streamlit.

The two are separate blobs so a new colouring sends ~1 byte per point, not the coordinates again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.mapfigure import Colouring, category_legend
from core.palette import OTHER_COLOUR
from ui.bigmap.encoding import Section, names_section, pack

# Plotly's "Viridis" stops (what the Plotly map used for numeric fields), spread to 256 steps.
VIRIDIS_STOPS = (
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)


def points_blob(coords: np.ndarray, names: Sequence[str]) -> bytes:
    """Coordinates (float32, x and y interleaved) and one name per point (what hover shows)."""
    xy = np.ascontiguousarray(coords, dtype=np.float32)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(names):
        raise ValueError(f"coords of shape {xy.shape} do not match {len(names)} names")
    finite = np.isfinite(xy).all(axis=1)
    if not finite.all():
        raise ValueError(f"{int((~finite).sum())} points have no finite coordinates")
    lo, hi = (xy.min(axis=0), xy.max(axis=0)) if len(xy) else (np.zeros(2), np.ones(2))
    meta = {"kind": "points", "n": len(xy), "bounds": [float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])]}
    return pack(meta, [Section("xy", xy.reshape(-1)), names_section(list(names))])


def colours_blob(colouring: Colouring, n: int) -> bytes:
    """Categories (codes, names, legend entries with colours and counts) or values (a colour scale)."""
    if colouring.values is not None:
        return _values_blob(colouring.title, np.asarray(colouring.values, dtype=np.float64), n)
    legend = category_legend(colouring, n)
    n_categories = len(legend.names)
    dtype = np.uint8 if n_categories <= 256 else np.uint16 if n_categories <= 65_536 else np.uint32
    meta = {
        "kind": "colours",
        "mode": "categories",
        "title": colouring.title,
        "n": n,
        "names": legend.names,
        "entries": [{"name": name, "colour": colour, "count": count} for name, colour, count in legend.entries],
    }
    sections = [Section("codes", legend.codes.astype(dtype)), Section("entry_of", legend.entry_of.astype(np.uint32))]
    return pack(meta, sections)


def _values_blob(title: str, values: np.ndarray, n: int) -> bytes:
    if len(values) != n:
        raise ValueError(f"{len(values)} values for {n} points")
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    meta = {
        "kind": "colours",
        "mode": "values",
        "title": title,
        "n": n,
        "min": lo,
        "max": hi,
        "scale": colour_scale(256),
        "missing": OTHER_COLOUR,
    }
    return pack(meta, [Section("values", values.astype(np.float32))])


def colour_scale(steps: int) -> list[str]:
    """``steps`` colours along Viridis, linearly between its stops."""
    stops = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in VIRIDIS_STOPS], dtype=float)
    where = np.linspace(0, len(stops) - 1, steps)
    low = np.minimum(np.floor(where).astype(int), len(stops) - 2)
    frac = (where - low)[:, None]
    rgb = np.rint(stops[low] * (1 - frac) + stops[low + 1] * frac).astype(int)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]
