"""Tests for core.bias against independent, deliberately naive reference implementations."""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from core import bias
from core.bias import (
    IEAT_TEMPLATES,
    BootstrapFailedWarning,
    DegenerateEffectSizeWarning,
    association_scores,
    association_test,
    bootstrap_effect_size_ci,
    effect_size,
    holm_correction,
    randomized_control,
    single_category_test,
)
from core.bias import controls as bias_controls
from core.bias import permutation as bias_permutation
from core.errors import InvalidInputError

Vec = list[float]

# --------------------------------------------------------------------------- references
# Plain-Python loops, written from the published definitions without reusing any code
# path of core.bias.


def ref_cos(u: Vec, v: Vec) -> float:
    dot = 0.0
    uu = 0.0
    vv = 0.0
    for a, b in zip(u, v):
        dot += a * b
        uu += a * a
        vv += b * b
    return dot / (math.sqrt(uu) * math.sqrt(vv))


def ref_s(w: Vec, A: list[Vec], B: list[Vec]) -> float:
    return statistics.fmean(ref_cos(w, a) for a in A) - statistics.fmean(ref_cos(w, b) for b in B)


def ref_effect_size(X: list[Vec], Y: list[Vec], A: list[Vec], B: list[Vec]) -> float:
    sx = [ref_s(x, A, B) for x in X]
    sy = [ref_s(y, A, B) for y in Y]
    return (statistics.fmean(sx) - statistics.fmean(sy)) / statistics.stdev(sx + sy)


def ref_is_extreme(value: float, observed: float, mu: float, alternative: str) -> bool:
    tol = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        return value >= observed - tol
    if alternative == "less":
        return value <= observed + tol
    return abs(value - mu) >= abs(observed - mu) - tol


def ref_partition_test(
    values: Sequence[float], k: int, statistic, alternative: str
) -> tuple[float, Fraction, float, list[float]]:
    """Exact permutation test: (observed, p as Fraction, null mean, all statistics)."""
    n = len(values)
    all_stats = []
    for combo in itertools.combinations(range(n), k):
        inside = [values[i] for i in combo]
        outside = [values[i] for i in range(n) if i not in combo]
        all_stats.append(statistic(inside, outside))
    observed = statistic(list(values[:k]), list(values[k:]))
    mu = statistics.fmean(all_stats)
    count = sum(ref_is_extreme(v, observed, mu, alternative) for v in all_stats)
    return observed, Fraction(count, len(all_stats)), mu, all_stats


def sum_difference(inside: list[float], outside: list[float]) -> float:
    return sum(inside) - sum(outside)


def mean_difference(inside: list[float], outside: list[float]) -> float:
    return statistics.fmean(inside) - statistics.fmean(outside)


def ref_association_test(X, Y, A, B, alternative="greater"):
    s = [ref_s(w, A, B) for w in X + Y]
    return ref_partition_test(s, len(X), sum_difference, alternative)


def as_lists(*arrays: np.ndarray) -> list[list[Vec]]:
    return [arr.tolist() for arr in arrays]


def make_sets(
    seed: int,
    sizes: tuple[int, int, int, int],
    dim: int,
    *,
    offset: float = 0.0,
    effect: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian sets; `effect` pulls X toward A's direction and Y toward B's."""
    rng = np.random.default_rng(seed)
    da, db = rng.normal(size=(2, dim))
    X, Y, A, B = (rng.normal(size=(n, dim)) + offset for n in sizes)
    return X + effect * da, Y + effect * db, A + effect * da, B + effect * db


def within(a: float, b: float, tol: float = 1e-10) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


# --------------------------------------------------------------------------- exact agreement


@pytest.mark.parametrize("n", [3, 4, 5, 6])
@pytest.mark.parametrize("dim", [2, 8, 64])
@pytest.mark.parametrize("offset", [0.0, 25.0])
def test_matches_reference_equal_sizes(n: int, dim: int, offset: float) -> None:
    X, Y, A, B = make_sets(100 * n + dim, (n, n, n + 1, n), dim, offset=offset, effect=0.7)
    lX, lY, lA, lB = as_lists(X, Y, A, B)
    observed, p_ref, _, all_stats = ref_association_test(lX, lY, lA, lB)

    res = association_test(X, Y, A, B)

    assert within(res.effect_size, ref_effect_size(lX, lY, lA, lB))
    assert within(res.statistic, observed)
    assert res.exact
    assert res.n_permutations == math.comb(2 * n, n)
    ref_count = p_ref * res.n_permutations  # a Fraction with denominator 1
    assert res.n_extreme == ref_count
    assert Fraction(res.n_extreme, res.n_permutations) == p_ref
    assert res.p_value == float(p_ref)  # both correctly rounded from the same fraction
    np.testing.assert_allclose(res.x_scores, [ref_s(x, lA, lB) for x in lX], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.y_scores, [ref_s(y, lA, lB) for y in lY], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.sort(res.null_statistics), np.sort(all_stats), rtol=0, atol=1e-12)
    assert (res.n_x, res.n_y, res.n_a, res.n_b) == (n, n, n + 1, n)


@pytest.mark.parametrize("sizes", [(2, 5, 3, 4), (4, 3, 5, 2), (1, 4, 2, 2), (6, 2, 3, 3), (3, 6, 4, 1)])
@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_matches_reference_unequal_sizes(sizes: tuple[int, int, int, int], alternative: str) -> None:
    X, Y, A, B = make_sets(sum(sizes), sizes, 8, offset=1.0, effect=0.5)
    observed, p_ref, mu_ref, _ = ref_association_test(*as_lists(X, Y, A, B), alternative=alternative)

    res = association_test(X, Y, A, B, alternative=alternative)

    assert res.exact
    assert res.n_permutations == math.comb(sizes[0] + sizes[1], sizes[0])
    assert Fraction(res.n_extreme, res.n_permutations) == p_ref
    assert within(res.statistic, observed)
    # the closed form (|X|-|Y|)/(|X|+|Y|) * sum(s) against the enumerated mean
    assert res.null_mean == pytest.approx(mu_ref, abs=1e-12)


def test_effect_size_and_scores_functions_match_reference() -> None:
    X, Y, A, B = make_sets(7, (5, 4, 3, 6), 16, offset=2.0, effect=0.4)
    lX, lY, lA, lB = as_lists(X, Y, A, B)
    assert within(effect_size(X, Y, A, B), ref_effect_size(lX, lY, lA, lB))
    np.testing.assert_allclose(association_scores(X, A, B), [ref_s(x, lA, lB) for x in lX], rtol=0, atol=1e-12)


def test_small_chunks_give_identical_exact_results(monkeypatch: pytest.MonkeyPatch) -> None:
    X, Y, A, B = make_sets(11, (6, 6, 4, 4), 8, effect=0.5)
    whole = association_test(X, Y, A, B, alternative="two-sided")
    monkeypatch.setattr(bias_permutation, "_CHUNK_ELEMENTS", 7)  # forces chunks of one partition
    chunked = association_test(X, Y, A, B, alternative="two-sided")
    assert chunked.n_extreme == whole.n_extreme
    np.testing.assert_array_equal(chunked.null_statistics, whole.null_statistics)


def test_stored_null_statistics_are_capped_without_changing_p(monkeypatch: pytest.MonkeyPatch) -> None:
    X, Y, A, B = make_sets(12, (6, 6, 4, 4), 8, effect=0.5)
    full = association_test(X, Y, A, B, seed=0)
    monkeypatch.setattr(bias_permutation, "MAX_NULL_STORED", 50)
    capped = association_test(X, Y, A, B, seed=0)
    assert capped.p_value == full.p_value
    assert capped.null_statistics.size == 50
    assert capped.null_statistics[0] == full.null_statistics[0]  # observed partition first
    assert np.isin(capped.null_statistics, full.null_statistics).all()
    # a uniform subsample, not the lexicographic prefix
    assert not np.array_equal(capped.null_statistics, full.null_statistics[:50])


# --------------------------------------------------------------------------- sampled mode


def test_sampled_p_lies_on_its_support_and_counts_observed_once() -> None:
    X, Y, A, B = make_sets(3, (6, 6, 5, 5), 8, effect=0.3)
    res = association_test(X, Y, A, B, n_samples=500, seed=1)
    assert not res.exact
    assert res.n_permutations == 500
    assert res.min_p_value == 1 / 500
    assert 1 <= res.n_extreme <= 500
    assert res.p_value == res.n_extreme / 500
    assert res.null_statistics.size == 500
    assert res.null_statistics[0] == pytest.approx(res.statistic, abs=1e-12)
    tol = 1e-12 * max(1.0, abs(res.statistic))
    assert int(np.count_nonzero(res.null_statistics >= res.statistic - tol)) == res.n_extreme


def test_sampled_p_is_reproducible_and_seed_dependent() -> None:
    X, Y, A, B = make_sets(4, (7, 7, 5, 5), 8, effect=0.3)
    first = association_test(X, Y, A, B, n_samples=300, seed=42)
    again = association_test(X, Y, A, B, n_samples=300, seed=42)
    other = association_test(X, Y, A, B, n_samples=300, seed=43)
    generator = association_test(X, Y, A, B, n_samples=300, seed=np.random.default_rng(42))
    assert first.p_value == again.p_value
    np.testing.assert_array_equal(first.null_statistics, again.null_statistics)
    np.testing.assert_array_equal(first.null_statistics, generator.null_statistics)
    assert not np.array_equal(first.null_statistics, other.null_statistics)


def test_sampled_p_is_close_to_exact_p() -> None:
    X, Y, A, B = make_sets(5, (7, 7, 6, 6), 8, effect=0.25)
    exact = association_test(X, Y, A, B)
    assert exact.exact and exact.n_permutations == 3432
    assert 0.05 < exact.p_value < 0.95  # precondition: a p the sampler can miss on both sides
    n_samples = 3000
    sampled = association_test(X, Y, A, B, n_samples=n_samples, seed=7)
    assert not sampled.exact
    se = math.sqrt(exact.p_value * (1 - exact.p_value) / (n_samples - 1))
    assert abs(sampled.p_value - exact.p_value) <= 4.5 * se + 1 / n_samples


# --------------------------------------------------------------------------- properties


def test_swapping_targets_negates_d_and_mirrors_p() -> None:
    X, Y, A, B = make_sets(21, (5, 5, 4, 6), 8, effect=0.6)
    forward = association_test(X, Y, A, B)
    backward = association_test(Y, X, A, B, alternative="less")
    assert backward.effect_size == pytest.approx(-forward.effect_size, rel=1e-12)
    assert backward.statistic == pytest.approx(-forward.statistic, rel=1e-12)
    assert backward.n_extreme == forward.n_extreme


def test_swapping_attributes_negates_d() -> None:
    X, Y, A, B = make_sets(22, (5, 4, 4, 6), 8, effect=0.6)
    forward = association_test(X, Y, A, B)
    swapped = association_test(X, Y, B, A, alternative="less")
    assert swapped.effect_size == pytest.approx(-forward.effect_size, rel=1e-12)
    assert swapped.n_extreme == forward.n_extreme


def test_positive_rescaling_of_vectors_changes_nothing() -> None:
    X, Y, A, B = make_sets(23, (5, 5, 4, 4), 8, effect=0.6)
    rng = np.random.default_rng(0)
    scaled = [arr * 10.0 ** rng.uniform(-3, 3, size=(arr.shape[0], 1)) for arr in (X, Y, A, B)]
    base = association_test(X, Y, A, B)
    res = association_test(*scaled)
    assert res.effect_size == pytest.approx(base.effect_size, rel=1e-10)
    assert res.n_extreme == base.n_extreme


def test_extreme_magnitudes_do_not_overflow() -> None:
    X, Y, A, B = make_sets(24, (4, 4, 4, 4), 8, effect=0.6)
    base = effect_size(X, Y, A, B)
    assert effect_size(X * 1e300, Y * 1e-310, A * 1e200, B) == pytest.approx(base, rel=1e-9)


def test_duplicated_stimulus_ties_count_as_extreme() -> None:
    X, Y, A, B = make_sets(25, (4, 4, 4, 4), 8, effect=0.4)
    Y[0] = X[0]  # swapping the two copies gives a partition with the same S
    lists = as_lists(X, Y, A, B)
    s = [ref_s(w, lists[2], lists[3]) for w in lists[0] + lists[1]]
    observed = sum(s[:4]) - sum(s[4:])
    tol = 1e-12 * max(1.0, abs(observed))
    null = [
        sum_difference([s[i] for i in c], [s[i] for i in range(8) if i not in c])
        for c in itertools.combinations(range(8), 4)
    ]
    at_least = sum(v >= observed - tol for v in null)
    strictly = sum(v > observed + tol for v in null)
    assert at_least - strictly >= 2  # precondition: the observed partition and its twin

    res = association_test(X, Y, A, B)
    assert res.n_extreme == at_least


def test_two_sided_doubles_the_smaller_one_sided_p_for_equal_sizes() -> None:
    X, Y, A, B = make_sets(26, (6, 6, 4, 4), 8, effect=0.3)
    greater = association_test(X, Y, A, B)
    less = association_test(X, Y, A, B, alternative="less")
    two = association_test(X, Y, A, B, alternative="two-sided")
    right = greater if greater.statistic > 0 else less
    assert two.p_value >= right.p_value
    assert two.n_extreme == 2 * right.n_extreme
    # without ties beyond the observed partition, the two tails overlap in exactly one
    assert greater.n_extreme + less.n_extreme == greater.n_permutations + 1


def test_two_sided_is_at_least_the_one_sided_p_for_unequal_sizes() -> None:
    for seed in range(5):
        X, Y, A, B = make_sets(seed, (3, 6, 4, 4), 8, effect=0.5)
        two = association_test(X, Y, A, B, alternative="two-sided")
        side = "greater" if two.statistic >= two.null_mean else "less"
        assert two.p_value >= association_test(X, Y, A, B, alternative=side).p_value


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_min_p_value(n: int) -> None:
    X, Y, A, B = make_sets(n, (n, n, 3, 3), 4)
    count = math.comb(2 * n, n)
    assert association_test(X, Y, A, B).min_p_value == 1 / count
    assert association_test(X, Y, A, B, alternative="two-sided").min_p_value == 2 / count
    assert association_test(X, Y, A, B, n_samples=count - 1, seed=0).min_p_value == 1 / (count - 1)


def test_exact_enumeration_threshold_is_inclusive() -> None:
    X, Y, A, B = make_sets(28, (5, 5, 3, 3), 4)
    count = math.comb(10, 5)
    at = association_test(X, Y, A, B, n_samples=count, seed=0)
    below = association_test(X, Y, A, B, n_samples=count - 1, seed=0)
    assert at.exact and at.n_permutations == count
    assert not below.exact and below.n_permutations == count - 1


def test_min_p_value_is_attained_by_a_perfect_separation() -> None:
    X, Y, A, B = make_sets(27, (4, 4, 4, 4), 8, effect=6.0)
    res = association_test(X, Y, A, B)
    assert res.p_value == res.min_p_value


# --------------------------------------------------------------------------- null calibration


@pytest.mark.parametrize(("n", "n_samples"), [(8, 500), (5, 10_000)])
def test_type_one_error_is_calibrated(n: int, n_samples: int) -> None:
    runs = 300
    rng = np.random.default_rng(2024 + n)
    rejections = 0
    for _ in range(runs):
        X, Y, A, B = (rng.normal(size=(n, 16)) + 1.0 for _ in range(4))
        res = association_test(X, Y, A, B, n_samples=n_samples, seed=rng)
        assert res.exact == (math.comb(2 * n, n) <= n_samples)
        rejections += res.p_value < 0.05
    low, high = stats.binom.interval(0.999, runs, 0.05)
    assert low <= rejections <= high


# --------------------------------------------------------------------------- SC-EAT


@pytest.mark.parametrize("sizes", [(4, 5), (6, 6), (3, 7), (1, 5)])
@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_single_category_matches_reference(sizes: tuple[int, int], alternative: str) -> None:
    rng = np.random.default_rng(sum(sizes))
    w = rng.normal(size=8) + 0.5
    A = rng.normal(size=(sizes[0], 8)) + 0.5 + 0.4 * w
    B = rng.normal(size=(sizes[1], 8)) + 0.5
    lw, lA, lB = w.tolist(), A.tolist(), B.tolist()
    sims = [ref_cos(lw, a) for a in lA] + [ref_cos(lw, b) for b in lB]
    a_part, b_part = sims[: sizes[0]], sims[sizes[0] :]
    d_ref = (statistics.fmean(a_part) - statistics.fmean(b_part)) / statistics.stdev(sims)
    observed, p_ref, _, _ = ref_partition_test(sims, sizes[0], mean_difference, alternative)

    res = single_category_test(w, A, B, alternative=alternative)

    assert within(res.effect_size, d_ref)
    assert within(res.statistic, observed)
    assert res.exact and res.n_permutations == math.comb(sum(sizes), sizes[0])
    assert Fraction(res.n_extreme, res.n_permutations) == p_ref
    np.testing.assert_allclose(res.a_similarities, a_part, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.b_similarities, b_part, rtol=0, atol=1e-12)


def test_single_category_accepts_row_vector_and_samples_reproducibly() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(size=8)
    A, B = rng.normal(size=(2, 9, 8))
    flat = single_category_test(w, A, B, n_samples=200, seed=5)
    row = single_category_test(w.reshape(1, -1), A, B, n_samples=200, seed=5)
    assert not flat.exact and flat.n_permutations == 200
    assert flat.p_value == row.p_value and flat.effect_size == row.effect_size
    assert flat.n_extreme == int(round(flat.p_value * 200))


# --------------------------------------------------------------------------- Holm


def ref_holm_loop(p: list[float]) -> list[float]:
    m = len(p)
    adjusted = []
    for pi in p:
        worst = 0.0
        for pj in p:
            if pj <= pi:
                rank = sum(q < pj for q in p) + 1  # ties share the most conservative rank
                worst = max(worst, min(1.0, (m - rank + 1) * pj))
        adjusted.append(worst)
    return adjusted


def ref_holm_rejections(p: list[float], alpha: float) -> list[bool]:
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = [False] * len(p)
    for step, i in enumerate(order):
        if p[i] > alpha / (len(p) - step):
            break
        rejected[i] = True
    return rejected


def test_holm_hand_worked_examples() -> None:
    # sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    np.testing.assert_allclose(holm_correction([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # 0.04*3=0.12, 0.5*2=1.0, 0.6*1=0.6 -> running max 1.0, capped at 1
    np.testing.assert_allclose(holm_correction([0.5, 0.6, 0.04]), [1.0, 1.0, 0.12])
    assert holm_correction([]).size == 0


def test_holm_matches_loop_and_step_down_procedure() -> None:
    rng = np.random.default_rng(9)
    for m in [1, 2, 5, 12]:
        for _ in range(20):
            p = np.round(rng.uniform(0, 0.2, size=m) ** rng.uniform(0.5, 2), 2)  # with ties
            adjusted = holm_correction(p)
            np.testing.assert_allclose(adjusted, ref_holm_loop(p.tolist()), rtol=0, atol=1e-15)
            assert (adjusted >= p).all() and (adjusted <= 1).all()
            order = np.argsort(p)
            assert (np.diff(adjusted[order]) >= 0).all()
            for alpha in (0.01, 0.05, 0.1):
                assert (adjusted <= alpha + 1e-15).tolist() == ref_holm_rejections(p.tolist(), alpha)


@pytest.mark.parametrize("bad", [[0.1, float("nan")], [0.2, 1.5], [-0.1], [[0.1, 0.2]]])
def test_holm_rejects_bad_p_values(bad: list) -> None:
    with pytest.raises(InvalidInputError, match="p_values"):
        holm_correction(bad)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_clear_effect_and_is_reproducible() -> None:
    X, Y, A, B = make_sets(31, (8, 8, 6, 6), 16, effect=0.8)
    d = effect_size(X, Y, A, B)
    assert d > 0.8  # precondition: a clear effect
    low, high = bootstrap_effect_size_ci(X, Y, A, B, n_resamples=1000, seed=3)
    assert 0 < low < d < high
    assert bootstrap_effect_size_ci(X, Y, A, B, n_resamples=1000, seed=3) == (low, high)
    assert bootstrap_effect_size_ci(X, Y, A, B, n_resamples=1000, seed=4) != (low, high)
    narrow = bootstrap_effect_size_ci(X, Y, A, B, confidence_level=0.5, n_resamples=1000, seed=3)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_with_a_single_target_returns_nan_with_warning() -> None:
    X, Y, A, B = make_sets(32, (1, 5, 4, 4), 8, effect=0.5)
    with pytest.warns(BootstrapFailedWarning, match="two or more"):
        low, high = bootstrap_effect_size_ci(X, Y, A, B, n_resamples=100, seed=0)
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_with_duplicated_stimuli_returns_nan_with_warning() -> None:
    X, Y, A, B = make_sets(33, (3, 3, 4, 4), 8)
    X[:] = X[0]
    Y[:2] = X[0]  # most resamples see one value only
    with pytest.warns(BootstrapFailedWarning, match="no spread"):
        low, high = bootstrap_effect_size_ci(X, Y, A, B, n_resamples=200, seed=0)
    assert math.isnan(low) and math.isnan(high)


def test_degenerate_effect_size_is_nan_with_named_warning() -> None:
    X, Y, A, B = make_sets(34, (3, 3, 4, 4), 8)
    with pytest.warns(DegenerateEffectSizeWarning, match="standard deviation"):
        assert math.isnan(effect_size(X, Y, A, A))  # s(w) = 0 for every w


def _d_direct(X: np.ndarray, Y: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    unit = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in (X, Y, A, B)]
    direction = unit[2].mean(axis=0) - unit[3].mean(axis=0)
    sx, sy = unit[0] @ direction, unit[1] @ direction
    return float((sx.mean() - sy.mean()) / np.concatenate([sx, sy]).std(ddof=1))


def test_bootstrap_jackknife_leaves_out_each_stimulus_of_all_four_sets() -> None:
    from core.bias import intervals

    X, Y, A, B = make_sets(35, (5, 6, 4, 3), 12, offset=0.5, effect=0.4)
    unit = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in (X, Y, A, B)]
    targets = np.concatenate(unit[:2])
    cos_a, cos_b = targets @ unit[2].T, targets @ unit[3].T
    groups = intervals._jackknife(cos_a, cos_b, 5, cos_a.mean(axis=1) - cos_b.mean(axis=1), True)
    sets = [X, Y, A, B]
    expected = [
        [
            _d_direct(*[np.delete(m, i, axis=0) if k == g else m for k, m in enumerate(sets)])
            for i in range(len(sets[g]))
        ]
        for g in range(4)
    ]
    assert len(groups) == 4
    for got, want in zip(groups, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_bootstrap_interval_coverage_is_measured_and_near_nominal() -> None:
    """bench/ci_coverage.py on one scenario (6 stimuli per set, no effect): the default interval
    covers the true d close to 95%, the old targets-only percentile interval clearly less."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "ci_coverage.py"
    spec = importlib.util.spec_from_file_location("ci_coverage", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.scenario(6, 0.0, reps=200, resamples=500, seed=3)["methods"]
    new = result["bca_all"]["given_attributes"]["coverage"]
    old = result["percentile_targets"]["given_attributes"]["coverage"]
    assert new >= 0.91 and new - old >= 0.03, (new, old)
    assert bias.MEASURED_COVERAGE["method"] == "BCa, X, Y, A and B resampled"


def test_bootstrap_options_are_checked() -> None:
    X, Y, A, B = make_sets(36, (4, 4, 4, 4), 8)
    with pytest.raises(InvalidInputError, match="method='basic'"):
        bootstrap_effect_size_ci(X, Y, A, B, method="basic")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="resample='none'"):
        bootstrap_effect_size_ci(X, Y, A, B, resample="none")  # type: ignore[arg-type]
    # The old interval stays available and lies inside the all-sets one for the same draws' spread.
    old = bootstrap_effect_size_ci(X, Y, A, B, method="percentile", resample="targets", seed=1)
    new = bootstrap_effect_size_ci(X, Y, A, B, seed=1)
    assert (new[1] - new[0]) > (old[1] - old[0]) > 0


# --------------------------------------------------------------------------- control


def test_randomized_control_is_reproducible_and_centred() -> None:
    X, Y, A, B = make_sets(41, (6, 6, 6, 6), 16, effect=1.0)
    observed = association_test(X, Y, A, B).effect_size
    assert observed > 1.0  # precondition
    control = randomized_control(X, Y, A, B, n_runs=40, seed=8)
    again = randomized_control(X, Y, A, B, n_runs=40, seed=8)
    other = randomized_control(X, Y, A, B, n_runs=40, seed=9)
    assert control.n_runs == 40 and control.effect_sizes.shape == control.p_values.shape == (40,)
    np.testing.assert_array_equal(control.effect_sizes, again.effect_sizes)
    np.testing.assert_array_equal(control.p_values, again.p_values)
    assert not np.array_equal(control.effect_sizes, other.effect_sizes)
    assert abs(np.mean(control.effect_sizes)) < 0.5 < observed
    count = math.comb(12, 6)
    assert np.all((control.p_values >= 1 / count) & (control.p_values <= 1))
    np.testing.assert_allclose(control.p_values * count, np.round(control.p_values * count), atol=1e-9)


def test_randomized_control_keeps_the_stimuli_and_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    X, Y, A, B = make_sets(42, (3, 4, 5, 2), 8)
    pooled = np.concatenate([X, Y, A, B])
    seen: list[tuple[np.ndarray, ...]] = []
    real = bias.association_test

    def spy(*sets: np.ndarray, **kwargs: object) -> bias.AssociationResult:
        seen.append(sets)
        return real(*sets, **kwargs)

    monkeypatch.setattr(bias_controls, "association_test", spy)
    randomized_control(X, Y, A, B, n_runs=5, seed=0)
    assert len(seen) == 5
    for sets in seen:
        assert [s.shape[0] for s in sets] == [3, 4, 5, 2]
        joined = np.concatenate(sets)
        assert sorted(map(tuple, joined.tolist())) == sorted(map(tuple, pooled.tolist()))
    # shuffled across all four roles, not only within X and Y
    assert any(not np.array_equal(np.sort(sets[2], axis=0), np.sort(A, axis=0)) for sets in seen)


# --------------------------------------------------------------------------- validation


def good_sets() -> tuple[np.ndarray, ...]:
    return make_sets(50, (3, 3, 3, 3), 4)


@pytest.mark.parametrize("role", ["X", "Y", "A", "B"])
def test_zero_vector_names_set_and_row(role: str) -> None:
    sets = dict(zip("XYAB", good_sets()))
    sets[role][2] = 0.0
    with pytest.raises(InvalidInputError, match=rf"{role} rows 2 are zero vectors"):
        association_test(*sets.values())


@pytest.mark.parametrize("role", ["X", "Y", "A", "B"])
def test_empty_set_is_named(role: str) -> None:
    sets = dict(zip("XYAB", good_sets()))
    sets[role] = np.empty((0, 4))
    with pytest.raises(InvalidInputError, match=rf"{role} is empty"):
        association_test(*sets.values())


def test_dimension_mismatch_names_the_sets() -> None:
    X, Y, A, B = good_sets()
    with pytest.raises(InvalidInputError, match=r"X: 4, Y: 4, A: 4, B: 5"):
        association_test(X, Y, A, np.ones((3, 5)))
    with pytest.raises(InvalidInputError, match=r"w: 5, A: 4"):
        single_category_test(np.ones(5), A, B)


def test_non_finite_values_name_set_and_rows() -> None:
    X, Y, A, B = good_sets()
    Y[1, 0] = np.nan
    Y[2, 3] = np.inf
    with pytest.raises(InvalidInputError, match=r"Y rows 1, 2 contain NaN or infinity"):
        association_test(X, Y, A, B)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_samples": 1}, "n_samples=1"),
        ({"n_samples": 2.5}, "n_samples=2.5"),
        ({"alternative": "bigger"}, "alternative='bigger'"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_bad_options_raise(kwargs: dict, pattern: str) -> None:
    with pytest.raises(InvalidInputError, match=pattern):
        association_test(*good_sets(), **kwargs)


def test_wrong_shapes_raise() -> None:
    X, Y, A, B = good_sets()
    with pytest.raises(InvalidInputError, match=r"X must have shape \(n, dim\), got shape \(4,\)"):
        association_test(X[0], Y, A, B)
    with pytest.raises(InvalidInputError, match="w must be one vector"):
        single_category_test(X, A, B)
    with pytest.raises(InvalidInputError, match="W rows 0 are zero vectors"):
        association_scores(np.zeros((1, 4)), A, B)
    with pytest.raises(InvalidInputError, match="confidence_level"):
        bootstrap_effect_size_ci(X, Y, A, B, confidence_level=95)


# --------------------------------------------------------------------------- templates


def test_ieat_battery_roles() -> None:
    expected = {
        "Insect-Flower": ("Flowers", "Insects", "Pleasant", "Unpleasant"),
        "Disability": ("Disabled people", "Abled people", "Pleasant", "Unpleasant"),
        "Gender-Science": ("Male", "Female", "Science", "Liberal arts"),
        "Native": ("European Americans", "Native Americans", "U.S.", "World"),
        "Asian": ("European Americans", "Asian Americans", "American", "Foreign"),
        "Arab-Muslim": ("Other people", "Arab-Muslim people", "Pleasant", "Unpleasant"),
    }
    names = {
        "Insect-Flower",
        "Weapon",
        "Weapon (Modern)",
        "Race",
        "Gender-Career",
        "Gender-Science",
        "Age",
        "Skin-Tone",
        "Weight",
        "Disability",
        "Religion",
        "Sexuality",
        "Arab-Muslim",
        "Asian",
        "Native",
    }
    assert set(IEAT_TEMPLATES) == names
    for name, template in IEAT_TEMPLATES.items():
        assert template.name == name
        roles = template.roles()
        assert list(roles) == ["X", "Y", "A", "B"]
        assert len(set(roles.values())) == 4 and all(roles.values())
        assert template.x in template.description and template.a in template.description
        if name in expected:
            assert tuple(roles.values()) == expected[name]
    with pytest.raises(dataclasses.FrozenInstanceError):
        IEAT_TEMPLATES["Race"].x = "anything"  # type: ignore[misc]
    with pytest.raises(TypeError):
        IEAT_TEMPLATES["New"] = IEAT_TEMPLATES["Race"]  # type: ignore[index]
