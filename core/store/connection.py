"""Opening the database file only while it is used, one cursor per thread, write transactions,
and small SQL helpers.

Sharing the file between processes: DuckDB lets one process at a time open a database file
(read-write; a read-only open is refused too while a writer holds it), so the Streamlit app
and a ``python -m core`` command in a terminal take turns instead of one of them holding it
for its whole life:

- *Units of work.* Every public method of a ``Store`` is one (each mixin's public methods are
  wrapped by :meth:`StoreConnection.__init_subclass__`); :meth:`StoreConnection.connected`
  groups several. The file is opened when the first unit starts and stays open while any
  thread is inside one (Streamlit sessions share one ``Store`` through ``st.cache_resource``,
  so units are counted across threads).
- *Idle close.* When the last unit ends, the file is closed after ``idle_close_s`` more seconds
  with no new unit (0.5 s by default, ``REPLENS_DB_IDLE_CLOSE``): a page's burst of reads
  shares one open (10-60 ms on a busy 2-core machine, plus DuckDB's buffers starting cold),
  and between bursts the other process can take its turn.
  ``idle_close_s=0`` closes at the end of every outermost unit.
- *Long writers* call :meth:`StoreConnection.release` between chunks (``core.extract`` does
  after each committed chunk), so the other process can read meanwhile.
- *Lock retry.* Opening a file another process holds is retried with jittered, bounded
  backoff (5 ms doubling to 100 ms; a failed open costs about 10 ms) for up to
  ``lock_timeout_s`` (30 s by default, ``REPLENS_DB_LOCK_TIMEOUT``); only then is
  :class:`DatabaseLockedError` raised, naming the process that holds the file.
- *Taking turns.* A busy holder (an app whose sessions keep reading) might never be idle for
  ``idle_close_s``. So a process waiting for the file touches ``<db file>.want``. A holder that
  sees a fresh one hands the file over once no unit of work is running and it has had it for
  ``_MIN_TURN_S``: it closes the file, deletes ``.want`` (the waiter, watching for that, opens
  at once) and keeps off the file for ``_YIELD_S``. Each side then gets turns of at least
  ``_MIN_TURN_S`` instead of one side starving (measured: ``bench/store_concurrency.py``).
- *Migrations* are checked at every open and applied under DuckDB's exclusive file lock (and,
  between stores of one process, which share DuckDB's instance, a lock per file), each in the
  transaction that records it: whoever opens first applies it, once.

Thread safety: every method runs on a cursor private to the calling thread (DuckDB connections
are not thread-safe, cursors are); cursors belong to one open of the file and are re-created
after a reopen. Write transactions are serialised by one lock per ``Store``.

The cost of opening per unit instead of holding the file: ``bench/store_concurrency.py``.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import json
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import duckdb

from core import config
from core.errors import DatabaseError, DatabaseLockedError
from core.fsutil import storage_error
from core.store.migrations import _migrate

DEFAULT_IDLE_CLOSE_S = 0.5
DEFAULT_LOCK_TIMEOUT_S = 30.0
_BACKOFF_FIRST_S = 0.005
_BACKOFF_MAX_S = 0.1  # short enough to catch the gaps between another process's units
_MIN_TURN_S = 0.1  # a holder keeps the file this long before handing it to a waiter (fewer handovers)
_YIELD_S = 0.1  # after a handover, the waiter (who sees .want vanish within _WATCH_S) opens first
_WANT_FRESH_S = 1.0  # a .want file older than this is left over from a waiter that gave up or died
_WATCH_S = 0.005  # how often a waiter looks whether .want is gone (a stat: microseconds)
_IDLE_POLL_S = 0.05  # how often an idle holder looks for a waiter

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="StoreConnection")

# Stores with the file open now: closed (and their log checkpointed) when the interpreter exits.
_OPEN: weakref.WeakSet[StoreConnection] = weakref.WeakSet()

# Stores of one process on one file share DuckDB's database instance, so its file lock does not
# keep them from migrating at once (a write-write conflict): they migrate one at a time.
_MIGRATING: dict[str, threading.Lock] = {}
_MIGRATING_GUARD = threading.Lock()


def _migration_lock(path: Path) -> threading.Lock:
    with _MIGRATING_GUARD:
        return _MIGRATING.setdefault(str(path.resolve()), threading.Lock())


def _unit_of_work(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Run ``method`` inside :meth:`StoreConnection.connected` (the file stays open throughout)."""

    @functools.wraps(method)
    def within_unit(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.connected():
            return method(self, *args, **kwargs)

    within_unit.__replens_unit_of_work__ = True  # type: ignore[attr-defined]
    return within_unit


class StoreConnection:
    """A RepLens database file. Cheap to construct; the file is opened while it is used.

    Args:
        idle_close_s: seconds the file stays open after the last unit of work ends
            (default ``REPLENS_DB_IDLE_CLOSE`` or 0.5; 0 closes at once).
        lock_timeout_s: how long opening waits for another process to release the file before
            raising :class:`DatabaseLockedError` (default ``REPLENS_DB_LOCK_TIMEOUT`` or 30).
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        *,
        idle_close_s: float | None = None,
        lock_timeout_s: float | None = None,
    ) -> None:
        self.path = Path(db_path) if db_path is not None else config.db_path()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else config.cache_dir()
        self.idle_close_s = _seconds(idle_close_s, "REPLENS_DB_IDLE_CLOSE", DEFAULT_IDLE_CLOSE_S)
        self.lock_timeout_s = _seconds(lock_timeout_s, "REPLENS_DB_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opens = 0  # how many times the file was opened: a cursor from an earlier open is stale
        self._units = 0  # units of work in progress, all threads together
        self._idle_since = 0.0
        self._opened_at = 0.0
        self._yield_until = 0.0  # after giving the file to a waiting process, do not reopen before this
        self._want = Path(f"{self.path}.want")
        self._state = threading.Condition(threading.RLock())  # guards the four fields above
        self._write_lock = threading.RLock()  # one write transaction at a time: no conflicts between threads
        self._local = threading.local()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Make each public method of a store mixin one unit of work, so the file cannot be closed
        (by the idle timer or another thread's :meth:`release`) while the method uses a cursor."""
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if name.startswith("_") or not inspect.isfunction(value):
                continue
            if not getattr(value, "__replens_unit_of_work__", False):
                setattr(cls, name, _unit_of_work(value))

    # ------------------------------------------------------------------ units of work

    @contextmanager
    def connected(self) -> Iterator[None]:
        """Keep the file open for the block: several calls share one open, and no thread's
        :meth:`release` or the idle timer closes it meanwhile. Nests, and is shared by threads."""
        with self._state:
            self._ensure_open()
            self._units += 1
        try:
            yield
        finally:
            self._end_unit()

    def release(self) -> None:
        """Close the file now unless some thread is inside a unit of work. Long writers call this
        between chunks so another process (the app, a CLI command) can open the file meanwhile."""
        with self._state:
            if self._units == 0:
                self._close_now()

    def close(self) -> None:
        """Close the file now (the next use opens it again)."""
        with self._state:
            self._close_now()

    @property
    def is_open(self) -> bool:
        """Whether this process holds the file open at this moment."""
        with self._state:
            return self._con is not None

    def _end_unit(self) -> None:
        with self._state:
            self._units -= 1
            if self._units > 0:
                return
            self._idle_since = time.monotonic()
            if self.idle_close_s <= 0:
                self._close_now()
            elif self._someone_waiting() and self._turn_left() <= 0:
                self._hand_over()
            else:
                self._state.notify_all()  # the idle closer starts counting from now

    # ------------------------------------------------------------------ opening and closing

    def _ensure_open(self) -> None:
        """Open the file if it is closed (caller holds ``_state``)."""
        if self._con is not None:
            return
        pause = self._yield_until - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with _migration_lock(self.path):
            con = self._connect_with_retry()
            try:
                con.execute("SET enable_progress_bar = false")
                _migrate(con)
            except BaseException:
                con.close()
                raise
        self._con = con
        self._opens += 1
        self._idle_since = self._opened_at = time.monotonic()
        _OPEN.add(self)
        if self.idle_close_s > 0:
            closer = threading.Thread(
                target=self._close_when_idle, args=(self._opens,), name="replens-db-idle-close", daemon=True
            )
            closer.start()

    def _connect_with_retry(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = _BACKOFF_FIRST_S
        waited = False
        while True:
            try:
                con = duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if not _is_lock_conflict(exc):
                    raise _open_error(self.path, exc) from exc
                asked = self._ask_for_turn()
                waited = True
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _locked_error(self.path, exc, self.lock_timeout_s) from exc
                pause = min(left, delay * random.uniform(0.5, 1.5))  # jitter: two waiters do not collide
                if asked:
                    self._wait_for_handover(pause)
                else:
                    time.sleep(pause)
                delay = min(2 * delay, _BACKOFF_MAX_S)
                continue
            if waited:
                with suppress(OSError):
                    self._want.unlink()  # another waiter, if any, touches it again at its next try
            return con

    def _ask_for_turn(self) -> bool:
        """Tell the process holding the file that this one is waiting (see the module docstring);
        False where the folder is not writable (the holder then lets go only when idle)."""
        try:
            self._want.touch()
        except OSError:
            return False
        return True

    def _wait_for_handover(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early when the holder deletes .want (it has let go)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if not self._want.exists():
                return
            time.sleep(_WATCH_S)

    def _someone_waiting(self) -> bool:
        """Whether another process asked for the file lately (a .want file touched in the last second)."""
        try:
            return time.time() - self._want.stat().st_mtime < _WANT_FRESH_S
        except OSError:
            return False

    def _turn_left(self) -> float:
        return self._opened_at + _MIN_TURN_S - time.monotonic()

    def _hand_over(self) -> None:
        """Close the file for a waiting process and keep off it for a moment (caller holds ``_state``)."""
        self._close_now()
        self._yield_until = time.monotonic() + _YIELD_S

    def _close_when_idle(self, opened: int) -> None:
        """Background thread of one open: closes the file once no unit has run for ``idle_close_s``."""
        with self._state:
            while self._con is not None and self._opens == opened:
                if self._units > 0:
                    self._state.wait()
                    continue
                if self._someone_waiting():
                    turn_left = self._turn_left()
                    if turn_left <= 0:
                        self._hand_over()
                        return
                    self._state.wait(min(turn_left, _IDLE_POLL_S))
                    continue
                left = self._idle_since + self.idle_close_s - time.monotonic()
                if left <= 0:
                    self._close_now()
                    return
                self._state.wait(min(left, _IDLE_POLL_S))

    def _close_now(self) -> None:
        """Close the file (caller holds ``_state``); DuckDB closes every thread's cursor with it
        and checkpoints its log into the file."""
        if self._con is None:
            return
        con, self._con = self._con, None
        _OPEN.discard(self)
        try:
            con.close()
        finally:
            with suppress(OSError):
                self._want.unlink()  # a process waiting for the file watches for this and opens at once
            self._state.notify_all()

    # ------------------------------------------------------------------ cursors and transactions

    def _connection(self) -> duckdb.DuckDBPyConnection:
        """The open connection (opened if needed). Outside a unit of work it stays valid only
        until the idle timer closes it."""
        with self._state:
            self._ensure_open()
            self._touch()
            assert self._con is not None
            return self._con

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """The calling thread's cursor on the open file (a new one after a reopen)."""
        with self._state:
            self._ensure_open()
            self._touch()
            assert self._con is not None
            if getattr(self._local, "opened", None) != self._opens:
                self._local.cursor, self._local.opened = self._con.cursor(), self._opens
            cursor: duckdb.DuckDBPyConnection = self._local.cursor
            return cursor

    def _touch(self) -> None:
        """Use outside a unit of work (tests, helpers): restart the idle timer."""
        if self._units == 0:
            self._idle_since = time.monotonic()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.connected(), self._write_lock:
            cur = self._cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a failed COMMIT has already ended the transaction; keep the original error
                typed = storage_error(exc, self.path.parent, "this change to the database")
                if typed is not None:
                    raise typed from exc
                raise

    @_unit_of_work
    def schema_version(self) -> int:
        return int(self._cursor().execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0])


@atexit.register
def _close_open_stores() -> None:
    """Close what is still open at exit (an idle timer not yet due), so the log is checkpointed."""
    for store in list(_OPEN):
        with suppress(duckdb.Error):
            store.close()


def _seconds(given: float | None, env: str, default: float) -> float:
    if given is not None:
        return float(given)
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    try:
        return max(0.0, float(text))
    except ValueError:
        raise DatabaseError(f"{env}={text!r} is not a number of seconds; set it to e.g. {default:g}.") from None


def _is_lock_conflict(exc: Exception) -> bool:
    return "lock" in str(exc).lower()


def _open_error(path: Path, exc: Exception) -> DatabaseError:
    text = str(exc)
    return DatabaseError(
        f"Could not open the database {path}: {text.splitlines()[0] if text else type(exc).__name__}. "
        "Check that REPLENS_DB names a RepLens DuckDB file (or a new path) and that its folder is writable."
    )


def _locked_error(path: Path, exc: Exception, waited_s: float) -> DatabaseLockedError:
    text = str(exc)
    holder = text.split("Conflicting lock is held in", 1)[-1].split(". See also")[0].strip()
    command = _command_line(holder)
    who = f"{holder}: {command}" if command else holder
    return DatabaseLockedError(
        f"The database {path} is open in another process ({who}), which did not release it within "
        f"{waited_s:g} s. Wait for it to finish or stop it (e.g. the RepLens command or a second app "
        "server), then retry; or set REPLENS_DB to another file (REPLENS_DB_LOCK_TIMEOUT sets the wait).",
        page_message="The database is busy in another RepLens process (a command or a second server) that has "
        "not let go of it; try again when it has finished.",
    )


def _command_line(holder: str) -> str:
    """The command line of the process DuckDB names as holding the lock, when it runs on this
    machine and can be read (Linux /proc); empty otherwise."""
    match = re.search(r"\(PID (\d+)\)", holder)
    if not match:
        return ""
    try:
        raw = Path(f"/proc/{match.group(1)}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:200]


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
