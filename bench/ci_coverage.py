"""Coverage of the iEAT effect-size bootstrap interval, measured by simulation.

Four large "concept" populations of unit vectors (X, Y, A, B; 2,000 each, 32-d) stand for the
images a user could have picked: a shared mean direction so cosines are positive, X and A
shifted one way along a concept axis, Y and B the other way, and isotropic noise. Each
replicate draws ``n`` stimuli per set, computes the 95% interval with
``core.bias.bootstrap_effect_size_ci`` and checks whether it holds the true d, for two truths:

- ``given_attributes``: d of the whole X and Y populations against the A and B images drawn.
  The permutation p of ``association_test`` holds A and B fixed too, so this is the estimand
  the page's p-value speaks to.
- ``unconditional``: d of all four populations. With few attribute images the sample d is
  biased toward 0 (noise in the attribute means dilutes s(w)), so no interval centred on the
  sample d reaches nominal coverage everywhere; reported so the limitation is visible.

Methods compared (the baseline is the interval RepLens used before: targets only, percentile):

- ``bca_all`` (the default): X, Y, A and B resampled, BCa.
- ``percentile_all``: X, Y, A and B resampled, percentile.
- ``bca_targets``: X and Y resampled (A, B fixed), BCa.
- ``percentile_targets``: X and Y resampled, percentile (the old interval).

Prints one JSON object: per scenario and method the share of intervals that held each truth
(with its Monte-Carlo standard error), mean width, and per method the range over scenarios.

    .venv/bin/python bench/ci_coverage.py [--reps 400] [--resamples 1000] [--sizes 4 6 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bias import BiasWarning, bootstrap_effect_size_ci

METHODS = {
    "bca_all": {"method": "bca", "resample": "all"},
    "percentile_all": {"method": "percentile", "resample": "all"},
    "bca_targets": {"method": "bca", "resample": "targets"},
    "percentile_targets": {"method": "percentile", "resample": "targets"},
}
POPULATION = 2_000
DIM = 32


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def populations(rng: np.random.Generator, shift: float) -> list[np.ndarray]:
    mean = rng.normal(0.0, 1.5, DIM)
    axis = _unit(rng.normal(size=(1, DIM)))[0]
    signs = (1.0, -1.0, 1.0, -1.0)  # X, Y, A, B
    return [_unit(mean + s * shift * axis + rng.normal(0.0, 1.0, (POPULATION, DIM))) for s in signs]


def true_d(X: np.ndarray, Y: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """The iEAT d (same formula as core.bias.effect_size), written out independently."""
    direction = A.mean(axis=0) - B.mean(axis=0)
    sx, sy = X @ direction, Y @ direction
    return float((sx.mean() - sy.mean()) / np.concatenate([sx, sy]).std(ddof=1))


def scenario(n: int, shift: float, reps: int, resamples: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    pops = populations(rng, shift)
    d_all = true_d(*pops)
    hits = {m: {"given_attributes": 0, "unconditional": 0} for m in METHODS}
    widths: dict[str, list[float]] = {m: [] for m in METHODS}
    failed = dict.fromkeys(METHODS, 0)
    d_given: list[float] = []
    d_hat: list[float] = []
    for rep in range(reps):
        X, Y, A, B = (p[rng.choice(POPULATION, n, replace=False)] for p in pops)
        truth = {"given_attributes": true_d(pops[0], pops[1], A, B), "unconditional": d_all}
        d_given.append(truth["given_attributes"])
        d_hat.append(true_d(X, Y, A, B))
        for name, options in METHODS.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BiasWarning)
                low, high = bootstrap_effect_size_ci(
                    X, Y, A, B, n_resamples=resamples, seed=seed * 100_003 + rep, **options
                )
            if not (np.isfinite(low) and np.isfinite(high)):
                failed[name] += 1  # counted as a miss
                continue
            widths[name].append(high - low)
            for which, value in truth.items():
                hits[name][which] += int(low <= value <= high)

    def share(k: int) -> dict[str, float]:
        p = k / reps
        return {"coverage": round(p, 4), "mc_se": round(float(np.sqrt(p * (1 - p) / reps)), 4)}

    return {
        "stimuli_per_set": n,
        "shift": shift,
        "true_d_unconditional": round(d_all, 4),
        "mean_true_d_given_attributes": round(float(np.mean(d_given)), 4),
        "mean_sample_d": round(float(np.mean(d_hat)), 4),
        "methods": {
            m: {
                "given_attributes": share(hits[m]["given_attributes"]),
                "unconditional": share(hits[m]["unconditional"]),
                "mean_width": round(float(np.mean(widths[m])), 4) if widths[m] else None,
                "failed": failed[m],
            }
            for m in METHODS
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=400, help="simulated batteries per scenario")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 10], help="stimuli per set")
    parser.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.6, 1.2], help="concept separations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    scenarios = [
        scenario(n, shift, args.reps, args.resamples, args.seed + 1000 * i + j)
        for i, n in enumerate(args.sizes)
        for j, shift in enumerate(args.shifts)
    ]
    summary = {
        m: {
            which: [
                min(s["methods"][m][which]["coverage"] for s in scenarios),
                max(s["methods"][m][which]["coverage"] for s in scenarios),
            ]
            for which in ("given_attributes", "unconditional")
        }
        for m in METHODS
    }
    print(
        json.dumps(
            {
                "nominal": 0.95,
                "reps_per_scenario": args.reps,
                "resamples": args.resamples,
                "population_per_set": POPULATION,
                "dim": DIM,
                "coverage_range": summary,
                "scenarios": scenarios,
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
