"""Checks on what callers pass to the association tests, and the unit rows they compute on.

Every message names the offending set and rows and says what to do (see :mod:`core.bias`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from core.arrays import l2_normalize
from core.bias.results import SeedLike
from core.errors import InvalidInputError

ALTERNATIVES: tuple[str, ...] = ("greater", "less", "two-sided")


def preview(values: np.ndarray, limit: int = 5) -> str:
    """The first ``limit`` values as text, with the total when there are more."""
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return shown + (f", ... ({values.size} in all)" if values.size > limit else "")


def as_embeddings(name: str, values: npt.ArrayLike) -> np.ndarray:
    """``values`` as a float64 ``(n, dim)`` matrix with n, dim >= 1 and finite, non-zero rows."""
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
            f"{name} must have shape (n, dim), got shape {arr.shape}; wrap a single vector as v.reshape(1, -1)."
        )
    if arr.shape[0] == 0:
        raise InvalidInputError(f"{name} is empty (shape {arr.shape}); every set needs at least one embedding.")
    if arr.shape[1] == 0:
        raise InvalidInputError(f"{name} has dimension 0 (shape {arr.shape}); embeddings need dim >= 1.")
    _reject_bad_rows(name, arr)
    return arr


def _reject_bad_rows(name: str, arr: np.ndarray) -> None:
    non_finite = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if non_finite.size:
        raise InvalidInputError(
            f"{name} rows {preview(non_finite)} contain NaN or infinity; drop or re-embed those items."
        )
    zero = np.flatnonzero(~arr.any(axis=1))
    if zero.size:
        raise InvalidInputError(
            f"{name} rows {preview(zero)} are zero vectors, whose cosine similarity is "
            "undefined; drop those items or re-embed them."
        )


def check_same_dim(sets: Mapping[str, np.ndarray]) -> None:
    dims = {name: arr.shape[1] for name, arr in sets.items()}
    if len(set(dims.values())) > 1:
        listed = ", ".join(f"{name}: {dim}" for name, dim in dims.items())
        raise InvalidInputError(f"embedding dimensions differ ({listed}); all sets must come from the same encoder.")


def validated_sets(**named: npt.ArrayLike) -> dict[str, np.ndarray]:
    """Each named set checked by :func:`as_embeddings`, all of one dimension."""
    sets = {name: as_embeddings(name, values) for name, values in named.items()}
    check_same_dim(sets)
    return sets


def as_target_vector(w: npt.ArrayLike) -> np.ndarray:
    """The SC-EAT target as a ``(1, dim)`` matrix."""
    try:
        arr = np.asarray(w)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"w could not be read as a vector ({exc}); pass shape (dim,).") from exc
    vec = as_embeddings("w", arr.reshape(1, -1) if arr.ndim == 1 else arr)
    if vec.shape[0] != 1:
        raise InvalidInputError(
            f"w must be one vector of shape (dim,) or (1, dim), got shape {vec.shape}; "
            "run single_category_test once per target."
        )
    return vec


def check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise InvalidInputError(f"alternative={alternative!r} is not supported; use one of {list(ALTERNATIVES)}.")


def check_count(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidInputError(f"{name}={value!r} is invalid; pass an integer >= {minimum}.")
    return int(value)


def make_rng(seed: SeedLike) -> np.random.Generator:
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"seed={seed!r} cannot seed numpy ({exc}); pass None, a non-negative int or a numpy.random.Generator."
        ) from exc


def unit_rows(arr: np.ndarray, what: str) -> np.ndarray:
    """Rows of a validated set scaled to unit length, in float64 (zero rows were refused earlier)."""
    return l2_normalize(arr, zero_rows="raise", what=what, dtype=np.float64)
