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
* :func:`bootstrap_effect_size_ci`: BCa bootstrap interval for d, resampling within each of
  X, Y, A and B, with the acceleration from a jackknife over every stimulus (Efron's
  multi-sample formula; a = 0 where the jackknife is degenerate). Coverage measured by
  ``bench/ci_coverage.py`` (4-10 stimuli per set, nominal 95%): 91.8-96.5% for the true d given
  the attribute images, 86.3-96.5% counting the choice of attribute images; the earlier
  targets-only percentile interval covered 77.8-92.8% (see :data:`MEASURED_COVERAGE`).
* :func:`holm_correction`: Holm-Bonferroni step-down adjusted p-values for a battery of
  tests.
* :func:`randomized_control`: shuffles all stimuli across X, Y, A and B (keeping the
  four sizes) and reruns the test, giving the effect sizes and p-values that
  meaningless sets produce with this encoder.
* :data:`IEAT_TEMPLATES`: the iEAT battery as role templates (no images are shipped).

Modules
-------
``stats`` (association test, effect size, SC-EAT), ``permutation`` (the exact/sampled
engine), ``intervals`` (bootstrap CI, Holm), ``controls`` (randomised controls),
``templates`` (the battery), ``inputs`` (validation), ``results`` (result types, warnings).
"""

from __future__ import annotations

from core.bias.controls import randomized_control
from core.bias.intervals import MEASURED_COVERAGE, bootstrap_effect_size_ci, coverage_note, holm_correction
from core.bias.permutation import MAX_NULL_STORED, TIE_RTOL
from core.bias.results import (
    DEFAULT_N_SAMPLES,
    Alternative,
    AssociationResult,
    BiasWarning,
    BootstrapFailedWarning,
    DegenerateEffectSizeWarning,
    RandomizedControlResult,
    SeedLike,
    SingleCategoryResult,
)
from core.bias.stats import association_scores, association_test, effect_size, single_category_test
from core.bias.templates import IEAT_TEMPLATES, ROLE_DESCRIPTIONS, IEATTemplate

__all__ = [
    "DEFAULT_N_SAMPLES",
    "IEAT_TEMPLATES",
    "MAX_NULL_STORED",
    "MEASURED_COVERAGE",
    "ROLE_DESCRIPTIONS",
    "TIE_RTOL",
    "Alternative",
    "AssociationResult",
    "BiasWarning",
    "BootstrapFailedWarning",
    "DegenerateEffectSizeWarning",
    "IEATTemplate",
    "RandomizedControlResult",
    "SeedLike",
    "SingleCategoryResult",
    "association_scores",
    "association_test",
    "bootstrap_effect_size_ci",
    "coverage_note",
    "effect_size",
    "holm_correction",
    "randomized_control",
    "single_category_test",
]
