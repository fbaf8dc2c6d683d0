"""Run records: what was started with which parameters, and how it ended."""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd

from core.store.connection import StoreConnection, _json_text, _now


class RunsMixin(StoreConnection):
    """Bookkeeping of long jobs (extraction, imports, analyses)."""

    def start_run(self, kind: str, dataset: str | None, encoder_key: str | None, params: dict[str, Any]) -> str:
        run_id = uuid.uuid4().hex[:12]
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO runs (run_id, kind, dataset, encoder_key, params, status, started_at) "
                "VALUES (?, ?, ?, ?, ?, 'running', ?)",
                [run_id, kind, dataset, encoder_key, _json_text(params), _now()],
            )
        return run_id

    def finish_run(self, run_id: str, *, stats: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self._transaction() as cur:
            cur.execute(
                "UPDATE runs SET status = ?, stats = ?, error = ?, finished_at = ? WHERE run_id = ?",
                ["failed" if error else "done", _json_text(stats or {}), error, _now(), run_id],
            )

    def runs(self, kind: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY started_at DESC"
        return self._cursor().execute(sql, [kind] if kind else []).df()
