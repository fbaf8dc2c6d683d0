"""The iEAT association test, its effect size and the single-category SC-EAT (see :mod:`core.bias`)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt

from core.bias.inputs import (
    as_target_vector,
    check_alternative,
    check_count,
    check_same_dim,
    make_rng,
    preview,
    unit_rows,
    validated_sets,
)
from core.bias.permutation import permutation_null
from core.bias.results import (
    DEFAULT_N_SAMPLES,
    Alternative,
    AssociationResult,
    DegenerateEffectSizeWarning,
    SeedLike,
    SingleCategoryResult,
    readonly,
)

# Unit-vector cosines carry rounding errors near 1e-15, so a spread below this is noise.
DEGENERATE_SD = 1e-12


def _scores(w_unit: np.ndarray, a_unit: np.ndarray, b_unit: np.ndarray) -> np.ndarray:
    # mean_a cos(w, a) = w_unit · mean(a_unit): avoids an (n_w, n_a) matrix.
    return w_unit @ a_unit.mean(axis=0) - w_unit @ b_unit.mean(axis=0)


def _unit_sets(sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: unit_rows(arr, name) for name, arr in sets.items()}


def _standardised_difference(first: np.ndarray, second: np.ndarray, what: str) -> float:
    pooled = np.concatenate([first, second])
    sd = float(np.std(pooled, ddof=1))
    if not sd > DEGENERATE_SD:
        warnings.warn(
            DegenerateEffectSizeWarning(
                f"the pooled {what} have standard deviation {sd:.3g} (values "
                f"{preview(np.round(pooled, 6))}), so the effect size is undefined and NaN "
                "is returned; check for duplicated stimuli or identical attribute sets."
            ),
            stacklevel=3,
        )
        return math.nan
    return float((first.mean() - second.mean()) / sd)


def association_scores(W: npt.ArrayLike, A: npt.ArrayLike, B: npt.ArrayLike) -> np.ndarray:
    """Return s(w, A, B) = mean cos(w, A) - mean cos(w, B) for each row w of W."""
    units = _unit_sets(validated_sets(W=W, A=A, B=B))
    return _scores(units["W"], units["A"], units["B"])


def target_scores(
    X: npt.ArrayLike, Y: npt.ArrayLike, A: npt.ArrayLike, B: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(s(x) for x in X, s(y) for y in Y, the validated sets by role name)."""
    sets = validated_sets(X=X, Y=Y, A=A, B=B)
    units = _unit_sets(sets)
    x_scores = _scores(units["X"], units["A"], units["B"])
    y_scores = _scores(units["Y"], units["A"], units["B"])
    return x_scores, y_scores, sets


def effect_size(X: npt.ArrayLike, Y: npt.ArrayLike, A: npt.ArrayLike, B: npt.ArrayLike) -> float:
    """Return the iEAT effect size d (see the package docstring); NaN if undefined."""
    x_scores, y_scores, _ = target_scores(X, Y, A, B)
    return _standardised_difference(x_scores, y_scores, "association scores s(w)")


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

    See the package docstring for the formulas, tie rule and exact/sampled modes.
    """
    check_alternative(alternative)
    n_samples = check_count("n_samples", n_samples, 2)
    rng = make_rng(seed)
    x_scores, y_scores, sets = target_scores(X, Y, A, B)
    scores = np.concatenate([x_scores, y_scores])
    # S_i = 2 * sum(s[X_i]) - sum(s): s(w) does not depend on the partition.
    null = permutation_null(
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
        x_scores=readonly(x_scores),
        y_scores=readonly(y_scores),
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
    difference of mean cosines as statistic and the package's exact/sampled and tie rules.
    """
    check_alternative(alternative)
    n_samples = check_count("n_samples", n_samples, 2)
    rng = make_rng(seed)
    vector = as_target_vector(w)
    sets = validated_sets(A=A, B=B)
    check_same_dim({"w": vector, **sets})
    target = unit_rows(vector, "w")[0]
    a_sims = unit_rows(sets["A"], "A") @ target
    b_sims = unit_rows(sets["B"], "B") @ target
    sims = np.concatenate([a_sims, b_sims])
    n_a, n_b = a_sims.size, b_sims.size
    # mean(I) - mean(rest) = (1/n_a + 1/n_b) * sum(I) - total / n_b
    null = permutation_null(
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
        a_similarities=readonly(a_sims),
        b_similarities=readonly(b_sims),
        null_statistics=null.statistics,
    )
