"""Opening the database file, one cursor per thread, write transactions, and small SQL helpers.

Thread safety: one connection per ``Store``; every method runs on a cursor private to the
calling thread (DuckDB connections are not thread-safe, cursors are), so Streamlit
sessions can share one ``Store`` behind ``st.cache_resource``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from core import config
from core.errors import DatabaseError, DatabaseLockedError
from core.store.migrations import _migrate


class StoreConnection:
    """A RepLens database file. Cheap to construct; the file is opened on first use."""

    def __init__(self, db_path: str | Path | None = None, cache_dir: str | Path | None = None) -> None:
        self.path = Path(db_path) if db_path is not None else config.db_path()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else config.cache_dir()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._open_lock = threading.Lock()
        self._write_lock = threading.RLock()  # one write transaction at a time: no conflicts between threads
        self._local = threading.local()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        with self._open_lock:
            if self._con is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                try:
                    con = duckdb.connect(str(self.path))
                except duckdb.IOException as exc:
                    raise _locked_error(self.path, exc) from exc
                con.execute("SET enable_progress_bar = false")
                _migrate(con)
                self._con = con
            return self._con

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        con = self._connection()
        cur = getattr(self._local, "cursor", None)
        if cur is None or getattr(self._local, "owner", None) is not con:
            cur = con.cursor()
            self._local.cursor, self._local.owner = cur, con
        return cur

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self._cursor()
        with self._write_lock:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a failed COMMIT has already ended the transaction; keep the original error
                raise

    def close(self) -> None:
        with self._open_lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def schema_version(self) -> int:
        return int(self._cursor().execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0])


def _locked_error(path: Path, exc: Exception) -> Exception:
    text = str(exc)
    if "lock" not in text.lower():
        return DatabaseError(
            f"Could not open the database {path}: {text.splitlines()[0] if text else type(exc).__name__}. "
            "Check that REPLENS_DB names a RepLens DuckDB file (or a new path) and that its folder is writable."
        )
    holder = text.split("Conflicting lock is held in", 1)[-1].split(". See also")[0].strip()
    return DatabaseLockedError(
        f"The database {path} is open in another process ({holder}). Close that process "
        "(e.g. stop the running RepLens app or CLI command) or set REPLENS_DB to another file."
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _json_text(value: Any) -> str:
    """How a JSON column is written (sorted keys, json's default spacing: the stored bytes of every
    existing database; ``core.jsonsafe.dumps_canonical`` is compact and would change them)."""
    return json.dumps(value, sort_keys=True)


def _unregister(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow/pandas view. Runs in ``finally`` blocks: inside a transaction
    that has already failed DuckDB refuses even this, and that refusal must not replace the
    error that caused it (the view dies with the cursor's transaction anyway)."""
    with suppress(duckdb.Error):
        cur.unregister(name)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
