"""Colours shared by every view of a cluster: the Map, Clusters and Snapshots pages and the HTML export.

A cluster's colour depends on its id alone, so cluster 3 is the same colour wherever it is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable

# Kenneth L. Kelly's "twenty-two colours of maximum contrast" (Color Engineering 3(6), 1965), in his
# order, hex values as in the ISCC-NBS centroids commonly quoted for them. Left out: white (invisible on
# the map's white background) and grey (#848482, too close to OTHER_COLOUR, which means noise and
# "other"). Any two of these differ by CIE76 ΔE > 15, so 20 folders or clusters get 20 colours one can
# tell apart (tests/test_palette.py measures it); the earlier Tailwind-style palette had four near-reds.
PALETTE: tuple[str, ...] = (
    "#222222",  # black
    "#F3C300",  # yellow
    "#875692",  # purple
    "#F38400",  # orange
    "#A1CAF1",  # light blue
    "#BE0032",  # red
    "#C2B280",  # buff
    "#008856",  # green
    "#E68FAC",  # purplish pink
    "#0067A5",  # blue
    "#F99379",  # yellowish pink
    "#604E97",  # violet
    "#F6A600",  # orange yellow
    "#B3446C",  # purplish red
    "#DCD300",  # greenish yellow
    "#882D17",  # reddish brown
    "#8DB600",  # yellow green
    "#654522",  # yellowish brown
    "#E25822",  # reddish orange
    "#2B3D26",  # olive green
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
