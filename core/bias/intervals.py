"""Uncertainty around the test: a bootstrap interval for d and Holm's correction (see :mod:`core.bias`)."""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import numpy.typing as npt
from scipy import stats

from core.bias.inputs import check_count, make_rng, preview
from core.bias.results import BootstrapFailedWarning, SeedLike
from core.bias.stats import DEGENERATE_SD, target_scores
from core.errors import InvalidInputError

# scipy 1.15 renamed random_state to rng; requirements allow scipy >= 1.13.
_BOOTSTRAP_RNG_KEYWORD = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def _effect_size_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    pooled = np.concatenate([x, y], axis=axis)
    sd = np.std(pooled, ddof=1, axis=axis)
    diff = np.mean(x, axis=axis) - np.mean(y, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > DEGENERATE_SD, diff / sd, np.nan)


def bootstrap_effect_size_ci(
    X: npt.ArrayLike,
    Y: npt.ArrayLike,
    A: npt.ArrayLike,
    B: npt.ArrayLike,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    seed: SeedLike = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval for the effect size d.

    Stimuli are resampled with replacement within X and within Y; A and B stay fixed,
    so s(w) is computed once. Returns (nan, nan) with :class:`BootstrapFailedWarning`
    when the interval cannot be formed: a target set of one stimulus (scipy needs two),
    or resamples whose pooled s(w) have no spread (duplicated stimuli).
    """
    level = float(confidence_level)
    if not 0.0 < level < 1.0:
        raise InvalidInputError(f"confidence_level={confidence_level!r} must lie strictly between 0 and 1, e.g. 0.95.")
    n_resamples = check_count("n_resamples", n_resamples, 1)
    rng = make_rng(seed)
    x_scores, y_scores, _ = target_scores(X, Y, A, B)
    with warnings.catch_warnings():
        # scipy's own warning names BCa even for percentile intervals; ours replaces it.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        try:
            res = stats.bootstrap(
                (x_scores, y_scores),
                _effect_size_along,
                paired=False,
                vectorized=True,
                confidence_level=level,
                n_resamples=n_resamples,
                method="percentile",
                **{_BOOTSTRAP_RNG_KEYWORD: rng},
            )
        except ValueError as exc:
            return _bootstrap_failed(f"scipy.stats.bootstrap refused the data ({exc})")
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(res.bootstrap_distribution)))
        return _bootstrap_failed(
            f"{bad} of {n_resamples} resamples had no spread in s(w), so d was undefined for them (duplicated stimuli?)"
        )
    return low, high


def _bootstrap_failed(reason: str) -> tuple[float, float]:
    warnings.warn(
        BootstrapFailedWarning(
            f"no bootstrap interval for the effect size: {reason}. Returning (nan, nan); "
            "use at least two distinct stimuli per target set."
        ),
        stacklevel=3,
    )
    return math.nan, math.nan


def holm_correction(p_values: npt.ArrayLike) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    With p sorted ascending, ``adj_(i) = min(1, max_{j <= i} (m - j + 1) * p_(j))``; the
    result is monotone in p and capped at 1. Reject hypothesis i at level alpha when
    ``adj[i] <= alpha``.
    """
    try:
        p = np.asarray(p_values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"p_values could not be read as numbers ({exc}).") from exc
    if p.ndim != 1:
        raise InvalidInputError(f"p_values must be a 1-D sequence, got shape {p.shape}; pass a list of p-values.")
    bad = np.flatnonzero(~((p >= 0.0) & (p <= 1.0)))  # also catches NaN
    if bad.size:
        raise InvalidInputError(
            f"p_values at positions {preview(bad)} are {preview(p[bad])}; p-values must be finite numbers in [0, 1]."
        )
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted
