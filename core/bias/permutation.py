"""The permutation engine behind every p-value of :mod:`core.bias`: exact or sampled, chunked.

Each statistic is of the form ``scale * sum(values[I]) + offset`` over k-subsets I of the
pooled values, so one vectorised engine serves the iEAT and SC-EAT tests. Tie rule and
exact/sampled modes are described in the package docstring.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

MAX_NULL_STORED = 100_000
TIE_RTOL = 1e-12
# Bounds each chunk of partition indices to ~8 MiB whatever the set sizes.
_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class NullDistribution:
    observed: float
    n_extreme: int
    n_permutations: int
    exact: bool
    min_p_value: float
    null_mean: float
    statistics: np.ndarray


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


def _random_subset_sums(values: np.ndarray, k: int, n_draws: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield sums of values over n_draws uniformly random k-subsets."""
    n = values.size
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_draws, rows):
        batch = min(rows, n_draws - start)
        # The k smallest of n iid uniform keys form a uniformly random k-subset.
        idx = np.argpartition(rng.random((batch, n)), k - 1, axis=1)[:, :k]
        yield values[idx].sum(axis=1)


def _extreme(statistics: np.ndarray, observed: float, null_mean: float, tol: float, alternative: str) -> np.ndarray:
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


def permutation_null(
    values: np.ndarray,
    k: int,
    scale: float,
    offset: float,
    *,
    alternative: str,
    n_samples: int,
    rng: np.random.Generator,
) -> NullDistribution:
    """Permutation test of the statistic ``scale * sum(values[I]) + offset`` over k-subsets I.

    The observed subset is ``values[:k]``. Every statistic in :mod:`core.bias` is of this
    form, which is what makes one vectorised engine serve them all.
    """
    n = values.size
    n_partitions = math.comb(n, k)
    exact = n_partitions <= n_samples
    total = float(values.sum())
    observed = scale * float(values[:k].sum()) + offset
    null_mean = scale * k / n * total + offset
    tol = TIE_RTOL * max(1.0, abs(scale) * float(np.abs(values).sum()) + abs(offset))

    chunks: Iterator[np.ndarray]
    if exact:
        n_permutations = n_partitions
        chunks = _exact_subset_sums(values, k)
        keep = _stored_positions(n_partitions, rng)
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
    return NullDistribution(
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


def _select_stored(statistics: np.ndarray, position: int, keep: np.ndarray | None, room: int) -> np.ndarray:
    if keep is None:
        return statistics[: max(room, 0)]
    lo, hi = np.searchsorted(keep, [position, position + statistics.size])
    return statistics[keep[lo:hi] - position]
