"""The category palette tells 17+ folders or clusters apart (issue 10, item 10a: with 17 folders the
Map coloured animals, vehicles and cartoon in near-identical reds).

Colour distance is CIE76 ΔE: the Euclidean distance in CIE L*a*b* (D65), computed here from the sRGB
hex values with the standard formulas, independently of core.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from core import palette

MIN_DELTA_E = 12.0  # clearly different side by side on a scatter; the old palette's closest pair was 7.1
N_FOLDERS = 17  # the demo's folder count in the issue
D65_WHITE = np.array([0.95047, 1.0, 1.08883])
SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)


def lab(hex_colour: str) -> np.ndarray:
    """CIE L*a*b* (D65) of an sRGB ``#RRGGBB``."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255.0
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = SRGB_TO_XYZ @ linear / D65_WHITE
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e(a: str, b: str) -> float:
    return float(np.linalg.norm(lab(a) - lab(b)))


def closest_pair(colours: tuple[str, ...] | list[str]) -> tuple[float, str, str]:
    return min((delta_e(a, b), a, b) for a, b in itertools.combinations(colours, 2))


def test_lab_conversion_matches_reference_values() -> None:
    # Reference L*a*b* of the sRGB primaries and white (D65), as published by e.g. Bruce Lindbloom's calculator.
    assert lab("#FFFFFF") == pytest.approx([100.0, 0.0, 0.0], abs=0.01)
    assert lab("#FF0000") == pytest.approx([53.24, 80.09, 67.20], abs=0.05)
    assert lab("#00FF00") == pytest.approx([87.73, -86.18, 83.18], abs=0.05)
    assert lab("#0000FF") == pytest.approx([32.30, 79.19, -107.86], abs=0.05)
    assert delta_e("#FF0000", "#FF0000") == 0.0


def test_palette_has_twenty_distinct_colours() -> None:
    assert len(palette.PALETTE) == 20
    assert len({c.upper() for c in palette.PALETTE}) == 20


def test_first_seventeen_colours_are_clearly_different() -> None:
    dist, a, b = closest_pair(palette.PALETTE[:N_FOLDERS])
    assert dist > MIN_DELTA_E, f"{a} and {b} differ by only ΔE {dist:.1f}"


def test_all_twenty_colours_are_clearly_different() -> None:
    dist, a, b = closest_pair(palette.PALETTE)
    assert dist > MIN_DELTA_E, f"{a} and {b} differ by only ΔE {dist:.1f}"


def test_no_colour_looks_like_the_grey_of_noise_and_other() -> None:
    dist, colour = min((delta_e(c, palette.OTHER_COLOUR), c) for c in palette.PALETTE)
    assert dist > 20, f"{colour} is ΔE {dist:.1f} from the 'other' grey"


def test_every_colour_shows_on_the_map_background() -> None:
    background = "#FAFAFC"  # core.mapfigure's plot_bgcolor
    dist, colour = min((delta_e(c, background), c) for c in palette.PALETTE)
    assert dist > 20, f"{colour} is ΔE {dist:.1f} from the background"


def test_folder_legend_ranks_take_the_palette_in_order() -> None:
    assert [palette.category_colour(i) for i in range(N_FOLDERS)] == list(palette.PALETTE[:N_FOLDERS])
