"""Plain JSON values from numpy-laden Python values, one policy for every record we store."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def jsonable(value: Any, *, unknown: str = "repr") -> Any:
    """Numpy scalars and arrays unwrapped, non-finite floats as null, mapping keys as strings.

    Anything else that JSON cannot hold (a RandomState, say) becomes its ``repr`` — recorded,
    not reproducible — or, with ``unknown="keep"``, is returned as it is.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, unknown=unknown) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v, unknown=unknown) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if value is None or isinstance(value, str):
        return value
    return repr(value) if unknown == "repr" else value


def loads_or_empty(value: Any) -> Any:
    """A JSON column as Python: text parsed, None as {}, anything already parsed returned as it is."""
    if value is None:
        return {}
    if isinstance(value, (str, bytes)):
        return json.loads(value)
    return value


def dumps_canonical(value: Any) -> str:
    """Stable text for hashing and storing: sorted keys, no spaces, NaN refused."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
