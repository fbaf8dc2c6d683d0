"""What the association tests return, and the warnings they raise (see :mod:`core.bias`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Alternative = Literal["greater", "less", "two-sided"]
SeedLike = int | np.random.Generator | np.random.SeedSequence | None

DEFAULT_N_SAMPLES = 10_000


class BiasWarning(UserWarning):
    """Base class for non-fatal problems in the association tests."""


class DegenerateEffectSizeWarning(BiasWarning):
    """The pooled association scores have no spread, so the effect size is NaN."""


class BootstrapFailedWarning(BiasWarning):
    """The bootstrap interval could not be computed; (nan, nan) was returned."""


@dataclass(frozen=True, eq=False)
class AssociationResult:
    """Outcome of :func:`association_test`. Arrays are read-only."""

    statistic: float
    effect_size: float
    p_value: float
    alternative: str
    exact: bool
    n_permutations: int
    n_extreme: int
    min_p_value: float
    null_mean: float
    n_x: int
    n_y: int
    n_a: int
    n_b: int
    x_scores: np.ndarray = field(repr=False)
    y_scores: np.ndarray = field(repr=False)
    null_statistics: np.ndarray = field(repr=False)


@dataclass(frozen=True, eq=False)
class SingleCategoryResult:
    """Outcome of :func:`single_category_test` (SC-EAT). Arrays are read-only."""

    statistic: float
    effect_size: float
    p_value: float
    alternative: str
    exact: bool
    n_permutations: int
    n_extreme: int
    min_p_value: float
    n_a: int
    n_b: int
    a_similarities: np.ndarray = field(repr=False)
    b_similarities: np.ndarray = field(repr=False)
    null_statistics: np.ndarray = field(repr=False)


@dataclass(frozen=True, eq=False)
class RandomizedControlResult:
    """Effect sizes and p-values of tests on randomly reassigned stimuli."""

    effect_sizes: np.ndarray
    p_values: np.ndarray
    n_runs: int


def readonly(arr: np.ndarray) -> np.ndarray:
    """A float64 copy that callers cannot change: results are shared, not scratch space."""
    arr = np.array(arr, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr
