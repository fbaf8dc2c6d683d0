"""Projections: stored 2-D layouts (maps) of a dataset under one encoder key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import InvalidInputError
from core.store.connection import StoreConnection, _json_text, _now, _unregister


class ProjectionsMixin(StoreConnection):
    """2-D layouts, one point per image hash."""

    def save_projection(
        self,
        projection_key: str,
        dataset: str,
        encoder_key: str,
        method: str,
        params: dict[str, Any],
        hashes: Sequence[str],
        coords: np.ndarray,
        seconds: float,
    ) -> None:
        """Store a 2-D layout (one row per image hash) in one transaction; replaces the same key."""
        coords = np.asarray(coords, dtype=np.float32)
        if coords.shape != (len(hashes), 2):
            raise InvalidInputError(f"coords shape {coords.shape} does not match {len(hashes)} hashes x 2")
        points = pa.table(
            {
                "content_hash": pa.array(list(hashes), pa.string()),
                "x": pa.array(coords[:, 0]),
                "y": pa.array(coords[:, 1]),
            }
        )
        with self._transaction() as cur:
            cur.execute("DELETE FROM projection_points WHERE projection_key = ?", [projection_key])
            cur.execute("DELETE FROM projections WHERE projection_key = ?", [projection_key])
            cur.execute(
                "INSERT INTO projections VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [projection_key, dataset, encoder_key, method, _json_text(params), len(hashes), float(seconds), _now()],
            )
            cur.register("points", points)
            try:
                cur.execute("INSERT INTO projection_points SELECT ?, content_hash, x, y FROM points", [projection_key])
            finally:
                _unregister(cur, "points")

    def load_projection(self, projection_key: str) -> tuple[list[str], np.ndarray] | None:
        """(hashes, coords) of a stored layout, or None when it was never computed."""
        cur = self._cursor()
        if not cur.execute("SELECT 1 FROM projections WHERE projection_key = ?", [projection_key]).fetchall():
            return None
        table = cur.sql(
            "SELECT content_hash, x, y FROM projection_points WHERE projection_key = ? ORDER BY content_hash",
            params=[projection_key],
        ).to_arrow_table()
        coords = np.column_stack([table.column("x").to_numpy(), table.column("y").to_numpy()]).astype(np.float32)
        return table.column("content_hash").to_pylist(), coords

    def list_projections(self, dataset: str) -> pd.DataFrame:
        return (
            self._cursor()
            .execute(
                "SELECT projection_key, encoder_key, method, params, n_points, seconds, created_at FROM projections "
                "WHERE dataset = ? ORDER BY created_at DESC",
                [dataset],
            )
            .df()
        )
