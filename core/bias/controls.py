"""Randomised controls: the test rerun on stimuli shuffled across all four roles (see :mod:`core.bias`)."""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt

from core.bias.inputs import check_alternative, check_count, make_rng, validated_sets
from core.bias.results import (
    DEFAULT_N_SAMPLES,
    Alternative,
    DegenerateEffectSizeWarning,
    RandomizedControlResult,
    SeedLike,
    readonly,
)
from core.bias.stats import association_test


def randomized_control(
    X: npt.ArrayLike,
    Y: npt.ArrayLike,
    A: npt.ArrayLike,
    B: npt.ArrayLike,
    *,
    n_runs: int = 100,
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: SeedLike = None,
    alternative: Alternative = "greater",
) -> RandomizedControlResult:
    """Rerun the test on stimuli shuffled across X, Y, A and B (sizes kept), n_runs times.

    The runs show what effect sizes and p-values meaningless sets give with this encoder
    and these set sizes; an observed effect well inside that spread is not evidence of
    bias. Runs with an undefined effect size give NaN (one summary warning).
    """
    check_alternative(alternative)
    n_runs = check_count("n_runs", n_runs, 1)
    n_samples = check_count("n_samples", n_samples, 2)
    rng = make_rng(seed)
    sets = validated_sets(X=X, Y=Y, A=A, B=B)
    pooled = np.concatenate(list(sets.values()))
    bounds = np.cumsum([arr.shape[0] for arr in sets.values()])[:-1]
    effects = np.empty(n_runs)
    p_values = np.empty(n_runs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateEffectSizeWarning)
        for run in range(n_runs):
            parts = np.split(pooled[rng.permutation(pooled.shape[0])], bounds)
            result = association_test(*parts, n_samples=n_samples, seed=rng, alternative=alternative)
            effects[run], p_values[run] = result.effect_size, result.p_value
    _warn_degenerate_runs(caught, n_runs)
    return RandomizedControlResult(effect_sizes=readonly(effects), p_values=readonly(p_values), n_runs=n_runs)


def _warn_degenerate_runs(caught: list[warnings.WarningMessage], n_runs: int) -> None:
    degenerate = 0
    for record in caught:
        if issubclass(record.category, DegenerateEffectSizeWarning):
            degenerate += 1
        else:  # pass through anything unrelated that the runs raised
            warnings.warn(record.message, record.category, stacklevel=3)
    if degenerate:
        warnings.warn(
            DegenerateEffectSizeWarning(
                f"{degenerate} of {n_runs} control runs had no spread in s(w) and report a "
                "NaN effect size; ignore them with numpy.nanmean or the like."
            ),
            stacklevel=3,
        )
