"""Checks and normalisation of vector matrices, written once for every analysis module.

Zero-row policy (stated once, here): an all-zero vector has no direction. ``l2_normalize``
raises ``InvalidInputError`` for one unless the caller passes ``zero_rows="keep"``, which
leaves such rows at zero (they then have similarity 0 to everything).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from core.errors import InvalidInputError

ZeroRows = Literal["raise", "keep"]


def as_matrix(
    X: np.ndarray,
    *,
    what: str = "vectors",
    minimum: int = 0,
    dtype: type[np.floating] = np.float32,
    hint: str = "embed more images first",
) -> np.ndarray:
    """``X`` as a finite 2-D ``(n_samples, n_features)`` array of ``dtype`` with at least ``minimum`` rows."""
    X = np.asarray(X, dtype=dtype)
    if X.ndim != 2:
        raise InvalidInputError(f"{what}: expected an (n_samples, n_features) matrix, got shape {X.shape}")
    if X.shape[0] < minimum:
        raise InvalidInputError(f"{what}: n_samples={X.shape[0]} should be >= {minimum}; {hint}.")
    if not np.isfinite(X).all():
        raise InvalidInputError(f"{what}: some vectors contain NaN or infinite values; re-extract them.")
    return X


def l2_normalize(
    X: np.ndarray, *, zero_rows: ZeroRows = "raise", what: str = "vectors", dtype: type[np.floating] = np.float32
) -> np.ndarray:
    """Rows scaled to unit L2 length (C-contiguous ``dtype``).

    Rows are divided by their largest absolute component before the norm is taken, so huge or
    subnormal vectors neither overflow nor underflow when squared.
    """
    X = np.asarray(X, dtype=dtype)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2:
        raise InvalidInputError(f"{what}: expected a 2-D matrix of vectors, got shape {X.shape}")
    peak = np.abs(X).max(axis=1, keepdims=True) if X.shape[1] else np.zeros((X.shape[0], 1), dtype)
    zero = peak[:, 0] == 0
    if zero.any() and zero_rows == "raise":
        rows = np.flatnonzero(zero)
        raise InvalidInputError(
            f"{what}: {len(rows)} zero vector(s) (rows {rows[:5].tolist()}) have no direction; "
            "re-extract those embeddings or drop them."
        )
    scaled = np.divide(X, peak, out=np.zeros_like(X), where=peak > 0)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    return np.ascontiguousarray(np.divide(scaled, norms, out=np.zeros_like(X), where=norms > 0))


def check_k(k: int, n: int, *, what: str = "k", name: str = "k", maximum: int | None = None) -> int:
    """``k`` as an int in ``1..maximum`` (``maximum`` defaults to ``n``); messages show the values."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"{what}: {name}={k!r} should be a positive integer")
    limit = n if maximum is None else maximum
    if k > limit:
        raise InvalidInputError(f"{what}: {name}={k} should be <= {limit} (n_samples={n})")
    return int(k)
