"""Colours shared by every view of a cluster: the Map, Clusters and Snapshots pages and the HTML export.

A cluster's colour depends on its id alone, so cluster 3 is the same colour wherever it is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable

PALETTE: tuple[str, ...] = (
    "#4F46E5",
    "#E11D48",
    "#059669",
    "#D97706",
    "#0891B2",
    "#7C3AED",
    "#DB2777",
    "#65A30D",
    "#EA580C",
    "#2563EB",
    "#0D9488",
    "#9333EA",
    "#CA8A04",
    "#DC2626",
    "#16A34A",
    "#0284C7",
    "#C026D3",
    "#57534E",
    "#4D7C0F",
    "#BE123C",
)
OTHER_COLOUR = "#A1A1AA"  # noise, images outside a run, and the "other groups" bucket
NOISE = -1


def category_colour(rank: int) -> str:
    """The colour of the ``rank``-th category of a legend (folders, keywords)."""
    return PALETTE[rank % len(PALETTE)]


def cluster_colour(cluster: int) -> str:
    """The colour of cluster ``cluster``; noise (negative ids) is grey."""
    return OTHER_COLOUR if cluster < 0 else PALETTE[int(cluster) % len(PALETTE)]


def cluster_colours(clusters: Iterable[int]) -> dict[int, str]:
    """``{cluster: colour}`` for each of ``clusters``."""
    return {int(c): cluster_colour(int(c)) for c in clusters}
