"""Uncertainty around the test: a bootstrap interval for d and Holm's correction (see :mod:`core.bias`).

The interval resamples all four stimulus sets (X, Y, A and B, each with replacement within
itself) and is bias-corrected and accelerated (BCa, Efron 1987), with the acceleration taken
from a jackknife over every stimulus of the resampled sets. ``bench/ci_coverage.py`` measures
its coverage by simulation; :data:`MEASURED_COVERAGE` records what that run found.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr, ndtri

from core.bias.inputs import check_count, make_rng, preview, unit_rows, validated_sets
from core.bias.results import BootstrapFailedWarning, SeedLike
from core.bias.stats import DEGENERATE_SD
from core.errors import InvalidInputError

CIMethod = Literal["bca", "percentile"]
Resample = Literal["all", "targets"]
CI_METHODS: tuple[str, ...] = ("bca", "percentile")
RESAMPLE_CHOICES: tuple[str, ...] = ("all", "targets")

# Resampled association scores held at once: (targets x resamples) floats per chunk.
_CHUNK_CELLS = 2_000_000

# What bench/ci_coverage.py measured for the default interval (BCa, all four sets resampled,
# nominal 95%): share of simulated batteries whose interval held the true d. "given A, B": the
# true d of the target populations for the attribute images drawn (what the permutation test
# also conditions on); "unconditional": the true d of all four populations. Re-run the bench
# after changing the interval and update these numbers.
MEASURED_COVERAGE: dict[str, object] = {
    "method": "BCa, X, Y, A and B resampled",
    "nominal": 0.95,
    "stimuli_per_set": (4, 6, 10),
    "given_attributes": (0.9175, 0.965),  # range over 9 scenarios, 400 batteries each (MC s.e. ~0.011)
    "unconditional": (0.8625, 0.965),
    "before_targets_only_percentile": {"given_attributes": (0.7775, 0.9275), "unconditional": (0.7625, 0.925)},
}


def coverage_note() -> str:
    """One line on what the interval is and how often it covered the true d in the simulations."""
    given, overall = MEASURED_COVERAGE["given_attributes"], MEASURED_COVERAGE["unconditional"]
    assert isinstance(given, tuple) and isinstance(overall, tuple)
    return (
        "95% CI: BCa bootstrap resampling all four sets (X, Y, A, B). In simulations with 4-10 images per set "
        f"(bench/ci_coverage.py) it held the true d in {given[0]:.1%}-{given[1]:.1%} of batteries for the attribute "
        f"images chosen, and in {overall[0]:.1%}-{overall[1]:.1%} counting the choice of attribute images "
        "(few attribute images bias d toward 0)."
    )


def _d_columns(x_scores: np.ndarray, y_scores: np.ndarray) -> np.ndarray:
    """d for every column of (n_x, k) and (n_y, k) score matrices; NaN where the pooled SD is ~0."""
    pooled = np.concatenate([x_scores, y_scores], axis=0)
    sd = np.std(pooled, ddof=1, axis=0)
    diff = x_scores.mean(axis=0) - y_scores.mean(axis=0)
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
    method: CIMethod = "bca",
    resample: Resample = "all",
) -> tuple[float, float]:
    """Bootstrap interval for the effect size d.

    Default: every set is resampled with replacement within itself (X, Y, A and B, so the
    choice of attribute images counts as uncertainty too), and the interval is BCa: the
    percentiles are shifted by the bootstrap's median bias z0 and its acceleration, estimated
    by a jackknife over every stimulus (Efron's multi-sample formula). ``method="percentile"``
    gives plain percentiles; ``resample="targets"`` holds A and B fixed (the interval before
    this change, which covered the true d only ~88% of the time with 6 stimuli per set).

    Returns (nan, nan) with :class:`BootstrapFailedWarning` when the interval cannot be
    formed: a target set of one stimulus, or resamples whose pooled s(w) have no spread
    (duplicated stimuli).
    """
    level = float(confidence_level)
    if not 0.0 < level < 1.0:
        raise InvalidInputError(f"confidence_level={confidence_level!r} must lie strictly between 0 and 1, e.g. 0.95.")
    if method not in CI_METHODS:
        raise InvalidInputError(f"method={method!r} is not one of {', '.join(CI_METHODS)}.")
    if resample not in RESAMPLE_CHOICES:
        raise InvalidInputError(f"resample={resample!r} is not one of {', '.join(RESAMPLE_CHOICES)}.")
    n_resamples = check_count("n_resamples", n_resamples, 1)
    rng = make_rng(seed)
    sets = validated_sets(X=X, Y=Y, A=A, B=B)
    units = {name: unit_rows(arr, name) for name, arr in sets.items()}
    n_x, n_y = len(units["X"]), len(units["Y"])
    if min(n_x, n_y) < 2:
        return _bootstrap_failed(
            f"target set {'X' if n_x < 2 else 'Y'} has one stimulus, and resampling needs two or more per target set"
        )
    targets = np.concatenate([units["X"], units["Y"]])
    cos_a, cos_b = targets @ units["A"].T, targets @ units["B"].T  # (n_x + n_y, |A|), (n_x + n_y, |B|)
    boots = _resampled_effect_sizes(cos_a, cos_b, n_x, n_resamples, rng, resample == "all")
    bad = int(np.count_nonzero(~np.isfinite(boots)))
    if bad:
        return _bootstrap_failed(
            f"{bad} of {n_resamples} resamples had no spread in s(w), so d was undefined for them (duplicated stimuli?)"
        )
    alpha = (1.0 - level) / 2.0
    levels = np.array([alpha, 1.0 - alpha])
    if method == "bca":
        levels = _bca_levels(cos_a, cos_b, n_x, boots, levels, resample == "all")
    low, high = (float(v) for v in np.quantile(boots, levels))
    return low, high


def _resampled_effect_sizes(
    cos_a: np.ndarray, cos_b: np.ndarray, n_x: int, n_resamples: int, rng: np.random.Generator, attributes: bool
) -> np.ndarray:
    """d for ``n_resamples`` resamples, in chunks so that memory stays bounded."""
    n_t, n_a, n_b = cos_a.shape[0], cos_a.shape[1], cos_b.shape[1]
    n_y = n_t - n_x
    fixed = cos_a.mean(axis=1) - cos_b.mean(axis=1)
    chunk = max(1, _CHUNK_CELLS // max(n_t, n_a, n_b))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        if attributes:
            # Multinomial counts / size: the weights of a resample with replacement of A (and B).
            weights_a = rng.multinomial(n_a, np.full(n_a, 1.0 / n_a), size=k) / n_a
            weights_b = rng.multinomial(n_b, np.full(n_b, 1.0 / n_b), size=k) / n_b
            scores = cos_a @ weights_a.T - cos_b @ weights_b.T  # (n_t, k): s(w) under each resample
        else:
            scores = np.broadcast_to(fixed[:, None], (n_t, k))
        columns = np.arange(k)[None, :]
        rows_x = rng.integers(0, n_x, size=(n_x, k))
        rows_y = n_x + rng.integers(0, n_y, size=(n_y, k))
        out[start : start + k] = _d_columns(scores[rows_x, columns], scores[rows_y, columns])
    return out


def _bca_levels(
    cos_a: np.ndarray, cos_b: np.ndarray, n_x: int, boots: np.ndarray, levels: np.ndarray, attributes: bool
) -> np.ndarray:
    """The BCa quantile levels for the percentile ``levels``; plain levels where BCa is undefined."""
    mean_a, mean_b = cos_a.mean(axis=1), cos_b.mean(axis=1)
    scores = mean_a - mean_b
    d_hat = float(_d_columns(scores[:n_x, None], scores[n_x:, None])[0])
    if not math.isfinite(d_hat):
        return levels
    # Median bias of the bootstrap distribution (ties count half), kept off 0 and 1.
    share = (np.count_nonzero(boots < d_hat) + 0.5 * np.count_nonzero(boots == d_hat)) / boots.size
    z0 = float(ndtri(np.clip(share, 0.5 / boots.size, 1.0 - 0.5 / boots.size)))
    accel = _acceleration(_jackknife(cos_a, cos_b, n_x, scores, attributes))
    z = ndtri(levels)
    denominator = 1.0 - accel * (z0 + z)
    if not np.all(denominator > 0):
        return levels
    return np.asarray(ndtr(z0 + (z0 + z) / denominator), dtype=np.float64)


def _jackknife(
    cos_a: np.ndarray, cos_b: np.ndarray, n_x: int, scores: np.ndarray, attributes: bool
) -> list[np.ndarray]:
    """Leave-one-out d for each stimulus, one array per resampled set (sets of one are skipped)."""
    n_t = scores.size
    groups: list[np.ndarray] = []
    for lo, hi in ((0, n_x), (n_x, n_t)):
        if hi - lo < 2:
            continue
        n = hi - lo
        left_out = np.arange(n)
        # Column j holds the set's scores without stimulus j.
        rows = np.array([np.delete(left_out, j) for j in range(n)]).T.reshape(n - 1, n)
        block = scores[lo:hi][rows]
        other = scores[n_x:] if lo == 0 else scores[:n_x]
        other = np.broadcast_to(other[:, None], (other.size, n))
        groups.append(_d_columns(block, other) if lo == 0 else _d_columns(other, block))
    if attributes:
        for cos, sign in ((cos_a, 1.0), (cos_b, -1.0)):
            n = cos.shape[1]
            if n < 2:
                continue
            # s(w) without attribute j: its own set's mean over the other n - 1 stimuli.
            loo_mean = (cos.sum(axis=1, keepdims=True) - cos) / (n - 1)
            loo = scores[:, None] + sign * (loo_mean - cos.mean(axis=1, keepdims=True))
            groups.append(_d_columns(loo[:n_x], loo[n_x:]))
    return groups


def _acceleration(groups: list[np.ndarray]) -> float:
    """Efron's acceleration for several independent samples, from their jackknife values."""
    cubes = squares = 0.0
    for values in groups:
        if not np.all(np.isfinite(values)):
            return 0.0
        n = values.size
        influence = (n - 1) * (values.mean() - values)
        cubes += float(np.sum(influence**3)) / n**3
        squares += float(np.sum(influence**2)) / n**2
    if not squares > 0.0:
        return 0.0
    return cubes / (6.0 * squares**1.5)


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
