"""Embedding association tests for social bias in image representations (iEAT).

RepLens implements the Image Embedding Association Test of Steed & Caliskan (FAccT 2021),
which adapts the Word Embedding Association Test (WEAT) of Caliskan et al. (Science 2017)
to image embeddings. The code here is written from the published definitions below; it
reproduces the reference statistics exactly for equal set sizes and extends them where
noted.

Sets and roles
--------------
Two *target* sets X and Y (e.g. images of flowers and of insects) and two *attribute* sets
A and B (e.g. pleasant and unpleasant images), each an array of embeddings of shape
``(n, dim)`` from the same encoder. The test asks whether X is closer to A (and Y to B)
than the other way round.

Formulas
--------
* ``cos(u, v) = u·v / (|u| |v|)``: plain cosine similarity of the raw embeddings, no
  centring or whitening.
* Association of one embedding w with the attributes::

      s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b)

  ``|A|`` and ``|B|`` may differ.
* Test statistic::

      S = sum_{x in X} s(x, A, B) - sum_{y in Y} s(y, A, B)

* Effect size (Cohen's-d-like)::

      d = (mean_{x in X} s(x) - mean_{y in Y} s(y)) / std_{w in X ∪ Y} s(w)

  with the *sample* standard deviation (``ddof=1``) over the pooled set X ∪ Y. A positive
  d means X is more associated with A, and Y with B, than the reverse. If the pooled
  scores have no spread (below 1e-12, which is under the rounding noise of unit-vector
  cosines) d is undefined: the functions return NaN and warn with
  :class:`DegenerateEffectSizeWarning`.

Permutation p-value
-------------------
The null distribution comes from re-partitioning X ∪ Y into (X_i, Y_i) with
``|X_i| = |X|`` and ``|Y_i| = |Y|``, with A and B held fixed. Because s(w) does not depend
on the partition it is computed once per stimulus, and ``S_i = 2 * sum(s[X_i]) - sum(s)``.

* ``alternative="greater"`` (default, the reference test; H1: X is more associated with A
  than Y is): ``p = #{i : S_i >= S} / n_permutations``.
* ``alternative="less"``: ``S_i <= S``.
* ``alternative="two-sided"``: ``|S_i - mu| >= |S - mu|`` where mu is the mean of S_i over
  all partitions. Each stimulus lands in X_i with probability ``|X| / (|X| + |Y|)``, so
  ``E[S_i] = (|X| - |Y|) / (|X| + |Y|) * sum_{w in X ∪ Y} s(w)``, which is 0 for equal
  sizes. With equal sizes and S != 0 the two-sided p is exactly twice the smaller
  one-sided p.

Exact or sampled:

* **Exact** when ``C(|X| + |Y|, |X|) <= n_samples``: every partition is enumerated (the
  observed one included), in chunks so memory stays bounded, and ``n_permutations`` is that
  count. The smallest attainable p, ``min_p_value``, is ``1 / C(|X| + |Y|, |X|)`` (for
  two-sided tests with ``|X| = |Y|`` it is twice that, since each partition and its mirror
  image have the same ``|S_i|``). Check it before reading a large p as "no bias": with
  three images per target set ``min_p_value = 0.05`` and nothing can be significant.
* **Sampled** otherwise: ``n_samples - 1`` uniformly random re-partitions are drawn and
  ``p = (1 + #{extreme S_i}) / n_samples``, counting the observed partition once, so p is
  never 0 and is a multiple of ``1 / n_samples``; ``min_p_value = 1 / n_samples``. Draws are
  reproducible with ``seed`` (an int, a ``numpy.random.Generator`` or None).

Ties count as extreme. Floating-point sums of the same numbers in another order differ
by rounding, so a comparison allows a tolerance of ``1e-12 * max(1, magnitude)``, where
magnitude bounds the terms the statistic is summed from (``2 * sum|s| + |sum s|`` for S).
A partition whose statistic is mathematically equal to S (e.g. swapping two duplicated
stimuli) is therefore always counted.

Extension of the reference: the reference implementation requires ``|X| = |Y|``. Here
unequal sizes are allowed; the permutations keep both sizes, and the effect size keeps the
same formula (difference of means over the pooled SD).

``null_statistics`` holds the statistics the p-value was computed over, observed
partition first in both modes, so that for ``n_permutations <= 100_000`` the p-value is
the share of extreme entries. Above 100,000 (:data:`MAX_NULL_STORED`) only a uniform random
subset of 100,000 is kept, for plotting.

Other tools
-----------
* :func:`single_category_test` (SC-EAT): one target vector w against A and B. Effect size
  ``(mean cos(w, A) - mean cos(w, B)) / std_{v in A ∪ B} cos(w, v)`` (``ddof=1``);
  statistic ``mean cos(w, A) - mean cos(w, B)``, permuted over re-partitions of A ∪ B that
  keep both sizes (null mean 0), with the same exact/sampled and tie rules.
* :func:`bootstrap_effect_size_ci`: percentile bootstrap interval for d, resampling
  within X and within Y (A and B fixed). The percentile method is used rather than BCa
  because BCa's jackknife acceleration is unstable with the 4-10 stimuli per set typical
  of iEAT batteries and scipy then returns NaN; percentile always yields an interval.
* :func:`holm_correction`: Holm-Bonferroni step-down adjusted p-values for a battery of
  tests.
* :func:`randomized_control`: shuffles all stimuli across X, Y, A and B (keeping the
  four sizes) and reruns the test, giving the effect sizes and p-values that
  meaningless sets produce with this encoder.
* :data:`IEAT_TEMPLATES`: the iEAT battery as role templates (no images are shipped).
"""
from __future__ import annotations

import inspect
import itertools
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from core.errors import InvalidInputError

__all__ = [
    "DEFAULT_N_SAMPLES",
    "IEAT_TEMPLATES",
    "MAX_NULL_STORED",
    "ROLE_DESCRIPTIONS",
    "TIE_RTOL",
    "AssociationResult",
    "BiasWarning",
    "BootstrapFailedWarning",
    "DegenerateEffectSizeWarning",
    "IEATTemplate",
    "RandomizedControlResult",
    "SingleCategoryResult",
    "association_scores",
    "association_test",
    "bootstrap_effect_size_ci",
    "effect_size",
    "holm_correction",
    "randomized_control",
    "single_category_test",
]

Alternative = Literal["greater", "less", "two-sided"]
SeedLike = int | np.random.Generator | np.random.SeedSequence | None

DEFAULT_N_SAMPLES = 10_000
MAX_NULL_STORED = 100_000
TIE_RTOL = 1e-12
_ALTERNATIVES: tuple[str, ...] = ("greater", "less", "two-sided")
# Unit-vector cosines carry rounding errors near 1e-15, so a spread below this is noise.
_DEGENERATE_SD = 1e-12
# Bounds each chunk of partition indices to ~8 MiB whatever the set sizes.
_CHUNK_ELEMENTS = 1 << 20


class BiasWarning(UserWarning):
    """Base class for non-fatal problems in the association tests."""


class DegenerateEffectSizeWarning(BiasWarning):
    """The pooled association scores have no spread, so the effect size is NaN."""


class BootstrapFailedWarning(BiasWarning):
    """The bootstrap interval could not be computed; (nan, nan) was returned."""


# --------------------------------------------------------------------------- results


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


@dataclass(frozen=True)
class _NullDistribution:
    observed: float
    n_extreme: int
    n_permutations: int
    exact: bool
    min_p_value: float
    null_mean: float
    statistics: np.ndarray


# --------------------------------------------------------------------------- validation


def _preview(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return shown + (f", ... ({values.size} in all)" if values.size > limit else "")


def _as_embeddings(name: str, values: npt.ArrayLike) -> np.ndarray:
    if np.iscomplexobj(values):
        raise InvalidInputError(f"{name} holds complex numbers; pass real-valued embeddings.")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{name} could not be read as a numeric array ({exc}); pass an array of shape (n, dim)."
        ) from exc
    if arr.ndim != 2:
        raise InvalidInputError(
            f"{name} must have shape (n, dim), got shape {arr.shape}; "
            "wrap a single vector as v.reshape(1, -1)."
        )
    if arr.shape[0] == 0:
        raise InvalidInputError(
            f"{name} is empty (shape {arr.shape}); every set needs at least one embedding."
        )
    if arr.shape[1] == 0:
        raise InvalidInputError(f"{name} has dimension 0 (shape {arr.shape}); embeddings need dim >= 1.")
    _reject_bad_rows(name, arr)
    return arr


def _reject_bad_rows(name: str, arr: np.ndarray) -> None:
    non_finite = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if non_finite.size:
        raise InvalidInputError(
            f"{name} rows {_preview(non_finite)} contain NaN or infinity; "
            "drop or re-embed those items."
        )
    zero = np.flatnonzero(~arr.any(axis=1))
    if zero.size:
        raise InvalidInputError(
            f"{name} rows {_preview(zero)} are zero vectors, whose cosine similarity is "
            "undefined; drop those items or re-embed them."
        )


def _check_same_dim(sets: Mapping[str, np.ndarray]) -> None:
    dims = {name: arr.shape[1] for name, arr in sets.items()}
    if len(set(dims.values())) > 1:
        listed = ", ".join(f"{name}: {dim}" for name, dim in dims.items())
        raise InvalidInputError(
            f"embedding dimensions differ ({listed}); all sets must come from the same encoder."
        )


def _validated_sets(**named: npt.ArrayLike) -> dict[str, np.ndarray]:
    sets = {name: _as_embeddings(name, values) for name, values in named.items()}
    _check_same_dim(sets)
    return sets


def _as_target_vector(w: npt.ArrayLike) -> np.ndarray:
    try:
        arr = np.asarray(w)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"w could not be read as a vector ({exc}); pass shape (dim,).") from exc
    vec = _as_embeddings("w", arr.reshape(1, -1) if arr.ndim == 1 else arr)
    if vec.shape[0] != 1:
        raise InvalidInputError(
            f"w must be one vector of shape (dim,) or (1, dim), got shape {vec.shape}; "
            "run single_category_test once per target."
        )
    return vec


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise InvalidInputError(
            f"alternative={alternative!r} is not supported; use one of {list(_ALTERNATIVES)}."
        )


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidInputError(f"{name}={value!r} is invalid; pass an integer >= {minimum}.")
    return int(value)


def _make_rng(seed: SeedLike) -> np.random.Generator:
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"seed={seed!r} cannot seed numpy ({exc}); pass None, a non-negative int or a "
            "numpy.random.Generator."
        ) from exc


# --------------------------------------------------------------------------- scores


def _unit_rows(arr: np.ndarray) -> np.ndarray:
    # Dividing by the largest component first keeps huge or subnormal vectors from
    # overflowing or underflowing when squared inside the norm.
    scaled = arr / np.abs(arr).max(axis=1, keepdims=True)
    return scaled / np.linalg.norm(scaled, axis=1, keepdims=True)


def _scores(w_unit: np.ndarray, a_unit: np.ndarray, b_unit: np.ndarray) -> np.ndarray:
    # mean_a cos(w, a) = w_unit · mean(a_unit): avoids an (n_w, n_a) matrix.
    return w_unit @ a_unit.mean(axis=0) - w_unit @ b_unit.mean(axis=0)


def _standardised_difference(first: np.ndarray, second: np.ndarray, what: str) -> float:
    pooled = np.concatenate([first, second])
    sd = float(np.std(pooled, ddof=1))
    if not sd > _DEGENERATE_SD:
        warnings.warn(
            DegenerateEffectSizeWarning(
                f"the pooled {what} have standard deviation {sd:.3g} (values "
                f"{_preview(np.round(pooled, 6))}), so the effect size is undefined and NaN "
                "is returned; check for duplicated stimuli or identical attribute sets."
            ),
            stacklevel=3,
        )
        return math.nan
    return float((first.mean() - second.mean()) / sd)


def association_scores(W: npt.ArrayLike, A: npt.ArrayLike, B: npt.ArrayLike) -> np.ndarray:
    """Return s(w, A, B) = mean cos(w, A) - mean cos(w, B) for each row w of W."""
    sets = _validated_sets(W=W, A=A, B=B)
    units = {name: _unit_rows(arr) for name, arr in sets.items()}
    return _scores(units["W"], units["A"], units["B"])


def _target_scores(
    X: npt.ArrayLike, Y: npt.ArrayLike, A: npt.ArrayLike, B: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    sets = _validated_sets(X=X, Y=Y, A=A, B=B)
    units = {name: _unit_rows(arr) for name, arr in sets.items()}
    x_scores = _scores(units["X"], units["A"], units["B"])
    y_scores = _scores(units["Y"], units["A"], units["B"])
    return x_scores, y_scores, sets


def effect_size(X: npt.ArrayLike, Y: npt.ArrayLike, A: npt.ArrayLike, B: npt.ArrayLike) -> float:
    """Return the iEAT effect size d (see the module docstring); NaN if undefined."""
    x_scores, y_scores, _ = _target_scores(X, Y, A, B)
    return _standardised_difference(x_scores, y_scores, "association scores s(w)")


# --------------------------------------------------------------------------- permutations


def _exact_subset_sums(values: np.ndarray, k: int) -> Iterator[np.ndarray]:
    """Yield sums of values over every k-subset, lexicographic order, chunk by chunk."""
    combos = itertools.combinations(range(values.size), k)
    rows = max(1, _CHUNK_ELEMENTS // k)
    row_type = np.dtype((np.intp, (k,)))
    while True:
        idx = np.fromiter(itertools.islice(combos, rows), dtype=row_type)
        if idx.shape[0] == 0:
            return
        yield values[idx].sum(axis=1)


def _random_subset_sums(
    values: np.ndarray, k: int, n_draws: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yield sums of values over n_draws uniformly random k-subsets."""
    n = values.size
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_draws, rows):
        batch = min(rows, n_draws - start)
        # The k smallest of n iid uniform keys form a uniformly random k-subset.
        idx = np.argpartition(rng.random((batch, n)), k - 1, axis=1)[:, :k]
        yield values[idx].sum(axis=1)


def _extreme(
    statistics: np.ndarray, observed: float, null_mean: float, tol: float, alternative: str
) -> np.ndarray:
    if alternative == "greater":
        return statistics >= observed - tol
    if alternative == "less":
        return statistics <= observed + tol
    return np.abs(statistics - null_mean) >= abs(observed - null_mean) - tol


def _min_p_value(exact: bool, n_partitions: int, n_samples: int, mirrored: bool) -> float:
    if not exact:
        return 1.0 / n_samples
    # A two-sided test with equal sizes always counts the mirror partition too.
    return (2.0 if mirrored else 1.0) / n_partitions


def _permutation_null(
    values: np.ndarray,
    k: int,
    scale: float,
    offset: float,
    *,
    alternative: str,
    n_samples: int,
    rng: np.random.Generator,
) -> _NullDistribution:
    """Permutation test of the statistic ``scale * sum(values[I]) + offset`` over k-subsets I.

    The observed subset is ``values[:k]``. Every statistic in this module is of this form,
    which is what makes one vectorised engine serve them all.
    """
    n = values.size
    n_partitions = math.comb(n, k)
    exact = n_partitions <= n_samples
    total = float(values.sum())
    observed = scale * float(values[:k].sum()) + offset
    null_mean = scale * k / n * total + offset
    tol = TIE_RTOL * max(1.0, abs(scale) * float(np.abs(values).sum()) + abs(offset))

    if exact:
        n_permutations = n_partitions
        chunks = _exact_subset_sums(values, k)
        keep = _stored_positions(n_partitions, rng)
        n_extreme = 0
    else:
        n_permutations = n_samples
        chunks = itertools.chain(
            [np.array([float(values[:k].sum())])], _random_subset_sums(values, k, n_samples - 1, rng)
        )
        keep = None  # random draws are already a uniform sample: keep the first ones
        n_extreme = 0

    stored: list[np.ndarray] = []
    n_stored = 0
    position = 0
    for sums in chunks:
        statistics = scale * sums + offset
        n_extreme += int(np.count_nonzero(_extreme(statistics, observed, null_mean, tol, alternative)))
        stored_part = _select_stored(statistics, position, keep, MAX_NULL_STORED - n_stored)
        stored.append(stored_part)
        n_stored += stored_part.size
        position += statistics.size

    null_statistics = np.concatenate(stored)
    null_statistics.setflags(write=False)
    return _NullDistribution(
        observed=observed,
        n_extreme=n_extreme,
        n_permutations=n_permutations,
        exact=exact,
        min_p_value=_min_p_value(exact, n_partitions, n_samples, alternative == "two-sided" and 2 * k == n),
        null_mean=null_mean,
        statistics=null_statistics,
    )


def _stored_positions(n_partitions: int, rng: np.random.Generator) -> np.ndarray | None:
    """Positions of the enumerated partitions to keep for plotting; None keeps all."""
    if n_partitions <= MAX_NULL_STORED:
        return None
    # A lexicographic prefix would over-represent partitions sharing the first stimuli,
    # so keep a uniform random subset, with the observed partition (position 0) first.
    rest = rng.choice(np.arange(1, n_partitions), size=MAX_NULL_STORED - 1, replace=False)
    return np.concatenate([[0], np.sort(rest)])


def _select_stored(
    statistics: np.ndarray, position: int, keep: np.ndarray | None, room: int
) -> np.ndarray:
    if keep is None:
        return statistics[: max(room, 0)]
    lo, hi = np.searchsorted(keep, [position, position + statistics.size])
    return statistics[keep[lo:hi] - position]


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


# --------------------------------------------------------------------------- public tests


def association_test(
    X: npt.ArrayLike,
    Y: npt.ArrayLike,
    A: npt.ArrayLike,
    B: npt.ArrayLike,
    *,
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: SeedLike = None,
    alternative: Alternative = "greater",
) -> AssociationResult:
    """Run the iEAT/WEAT association test of targets X, Y against attributes A, B.

    Parameters
    ----------
    X, Y, A, B : array-like of shape (n, dim)
        Embeddings of the two target and two attribute sets, from one encoder.
    n_samples : int, default 10_000
        Enumerate all partitions when there are at most this many, else sample this many
        (observed included). Must be >= 2.
    seed : int, numpy Generator or None
        Seeds the sampled permutations (and the subsample of stored null statistics).
    alternative : {"greater", "less", "two-sided"}
        "greater" is the reference test: H1 says X is more associated with A than Y is.

    See the module docstring for the formulas, tie rule and exact/sampled modes.
    """
    _check_alternative(alternative)
    n_samples = _check_count("n_samples", n_samples, 2)
    rng = _make_rng(seed)
    x_scores, y_scores, sets = _target_scores(X, Y, A, B)
    scores = np.concatenate([x_scores, y_scores])
    null = _permutation_null(
        scores,
        x_scores.size,
        2.0,
        -float(scores.sum()),
        alternative=alternative,
        n_samples=n_samples,
        rng=rng,
    )
    return AssociationResult(
        statistic=float(x_scores.sum() - y_scores.sum()),
        effect_size=_standardised_difference(x_scores, y_scores, "association scores s(w)"),
        p_value=null.n_extreme / null.n_permutations,
        alternative=alternative,
        exact=null.exact,
        n_permutations=null.n_permutations,
        n_extreme=null.n_extreme,
        min_p_value=null.min_p_value,
        null_mean=null.null_mean,
        n_x=x_scores.size,
        n_y=y_scores.size,
        n_a=sets["A"].shape[0],
        n_b=sets["B"].shape[0],
        x_scores=_readonly(x_scores),
        y_scores=_readonly(y_scores),
        null_statistics=null.statistics,
    )


def single_category_test(
    w: npt.ArrayLike,
    A: npt.ArrayLike,
    B: npt.ArrayLike,
    *,
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: SeedLike = None,
    alternative: Alternative = "greater",
) -> SingleCategoryResult:
    """SC-EAT: is the single embedding w more associated with A than with B?

    Effect size ``(mean cos(w, A) - mean cos(w, B)) / std_{v in A ∪ B} cos(w, v)``
    (ddof=1); the permutation p-value re-partitions A ∪ B keeping both sizes, with the
    difference of mean cosines as statistic and the module's exact/sampled and tie rules.
    """
    _check_alternative(alternative)
    n_samples = _check_count("n_samples", n_samples, 2)
    rng = _make_rng(seed)
    vector = _as_target_vector(w)
    sets = _validated_sets(A=A, B=B)
    _check_same_dim({"w": vector, **sets})
    target = _unit_rows(vector)[0]
    a_sims = _unit_rows(sets["A"]) @ target
    b_sims = _unit_rows(sets["B"]) @ target
    sims = np.concatenate([a_sims, b_sims])
    n_a, n_b = a_sims.size, b_sims.size
    # mean(I) - mean(rest) = (1/n_a + 1/n_b) * sum(I) - total / n_b
    null = _permutation_null(
        sims,
        n_a,
        1.0 / n_a + 1.0 / n_b,
        -float(sims.sum()) / n_b,
        alternative=alternative,
        n_samples=n_samples,
        rng=rng,
    )
    return SingleCategoryResult(
        statistic=float(a_sims.mean() - b_sims.mean()),
        effect_size=_standardised_difference(a_sims, b_sims, "cosine similarities to w"),
        p_value=null.n_extreme / null.n_permutations,
        alternative=alternative,
        exact=null.exact,
        n_permutations=null.n_permutations,
        n_extreme=null.n_extreme,
        min_p_value=null.min_p_value,
        n_a=n_a,
        n_b=n_b,
        a_similarities=_readonly(a_sims),
        b_similarities=_readonly(b_sims),
        null_statistics=null.statistics,
    )


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
    _check_alternative(alternative)
    n_runs = _check_count("n_runs", n_runs, 1)
    n_samples = _check_count("n_samples", n_samples, 2)
    rng = _make_rng(seed)
    sets = _validated_sets(X=X, Y=Y, A=A, B=B)
    pooled = np.concatenate(list(sets.values()))
    bounds = np.cumsum([arr.shape[0] for arr in sets.values()])[:-1]
    effects = np.empty(n_runs)
    p_values = np.empty(n_runs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateEffectSizeWarning)
        for run in range(n_runs):
            parts = np.split(pooled[rng.permutation(pooled.shape[0])], bounds)
            result = association_test(
                *parts, n_samples=n_samples, seed=rng, alternative=alternative
            )
            effects[run], p_values[run] = result.effect_size, result.p_value
    _warn_degenerate_runs(caught, n_runs)
    return RandomizedControlResult(
        effect_sizes=_readonly(effects), p_values=_readonly(p_values), n_runs=n_runs
    )


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


# --------------------------------------------------------------------------- bootstrap

# scipy 1.15 renamed random_state to rng; requirements allow scipy >= 1.13.
_BOOTSTRAP_RNG_KEYWORD = (
    "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
)


def _effect_size_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    pooled = np.concatenate([x, y], axis=axis)
    sd = np.std(pooled, ddof=1, axis=axis)
    diff = np.mean(x, axis=axis) - np.mean(y, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > _DEGENERATE_SD, diff / sd, np.nan)


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
        raise InvalidInputError(
            f"confidence_level={confidence_level!r} must lie strictly between 0 and 1, e.g. 0.95."
        )
    n_resamples = _check_count("n_resamples", n_resamples, 1)
    rng = _make_rng(seed)
    x_scores, y_scores, _ = _target_scores(X, Y, A, B)
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
            f"{bad} of {n_resamples} resamples had no spread in s(w), so d was undefined "
            "for them (duplicated stimuli?)"
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


# --------------------------------------------------------------------------- multiple tests


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
        raise InvalidInputError(
            f"p_values must be a 1-D sequence, got shape {p.shape}; pass a list of p-values."
        )
    bad = np.flatnonzero(~((p >= 0.0) & (p <= 1.0)))  # also catches NaN
    if bad.size:
        raise InvalidInputError(
            f"p_values at positions {_preview(bad)} are {_preview(p[bad])}; "
            "p-values must be finite numbers in [0, 1]."
        )
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


# --------------------------------------------------------------------------- iEAT battery


@dataclass(frozen=True)
class IEATTemplate:
    """One iEAT test: which concepts fill the target (X, Y) and attribute (A, B) roles."""

    name: str
    x: str
    y: str
    a: str
    b: str
    description: str

    def roles(self) -> dict[str, str]:
        """Map each role (X, Y, A, B) to the concept that fills it."""
        return {"X": self.x, "Y": self.y, "A": self.a, "B": self.b}


ROLE_DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "X": "First target concept (e.g. flowers); d > 0 when X is closer to A than Y is.",
        "Y": "Second target concept (e.g. insects), compared against X.",
        "A": "First attribute (e.g. pleasant images); d > 0 when it sits closer to X.",
        "B": "Second attribute (e.g. unpleasant images), the counterpart of A.",
    }
)

_STEREOTYPE = "A positive effect size means the model associates {x} with {a} and {y} with {b}."

_BATTERY: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("Insect-Flower", "Flowers", "Insects", "Pleasant", "Unpleasant",
     "Baseline valence test; a sound encoder should find flowers more pleasant."),
    ("Weapon", "White people", "Black people", "Tools", "Weapons",
     "Racial stereotype linking Black people with weapons (IAT tool and weapon images)."),
    ("Weapon (Modern)", "White people", "Black people", "Tools (modern)", "Weapons (modern)",
     "The Weapon test with images of modern tools and weapons."),
    ("Native", "European Americans", "Native Americans", "U.S.", "World",
     "Whether European Americans are seen as more American than Native Americans."),
    ("Asian", "European Americans", "Asian Americans", "American", "Foreign",
     "Whether Asian Americans are seen as foreign."),
    ("Race", "European Americans", "African Americans", "Pleasant", "Unpleasant",
     "Valence bias between European American and African American faces."),
    ("Arab-Muslim", "Other people", "Arab-Muslim people", "Pleasant", "Unpleasant",
     "Valence bias against Arab-Muslim people."),
    ("Religion", "Christianity", "Judaism", "Pleasant", "Unpleasant",
     "Valence bias between Christian and Jewish religious imagery."),
    ("Sexuality", "Gay", "Straight", "Pleasant", "Unpleasant",
     "Valence bias between gay and straight couples; the stereotype predicts d < 0."),
    ("Skin-Tone", "Light skin", "Dark skin", "Pleasant", "Unpleasant",
     "Valence bias by skin tone."),
    ("Weight", "Thin people", "Fat people", "Pleasant", "Unpleasant",
     "Valence bias by body weight."),
    ("Disability", "Disabled people", "Abled people", "Pleasant", "Unpleasant",
     "Valence bias by disability, in the iEAT order (disabled first); the stereotype "
     "predicts d < 0."),
    ("Age", "Young people", "Old people", "Pleasant", "Unpleasant",
     "Valence bias by age."),
    ("Gender-Career", "Male", "Female", "Career", "Family",
     "Gender stereotype linking men with careers and women with family."),
    ("Gender-Science", "Male", "Female", "Science", "Liberal arts",
     "Gender stereotype linking men with science and women with the liberal arts."),
)


def _template(row: tuple[str, str, str, str, str, str]) -> IEATTemplate:
    name, x, y, a, b, note = row
    return IEATTemplate(name, x, y, a, b, f"{note} {_STEREOTYPE.format(x=x, y=y, a=a, b=b)}")


IEAT_TEMPLATES: Mapping[str, IEATTemplate] = MappingProxyType(
    {row[0]: _template(row) for row in _BATTERY}
)
"""The iEAT battery of Steed & Caliskan (2021) by test name; fill the roles with images."""
