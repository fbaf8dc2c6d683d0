"""Sharing one DuckDB file between processes and threads (core/store/connection.py).

The store opens the file for a unit of work and lets go of it when idle, so the app and a
``python -m core`` command take turns: a second process waits for the file (bounded, then a
clear error naming the holder), a busy holder hands the file to a waiting process, migrations
run once however many openers race, and a reader never sees half of a written chunk. Also the
extraction liveness rule that follows from it (core/extract.py): a ``running`` run of another
live process is in progress.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, REPO_ROOT, png_bytes, write_file
from core import extract, images
from core.encoders import load_encoder
from core.errors import DatabaseLockedError
from core.extract import unfinished_extractions
from core.images import ImageRecord
from core.store import MIGRATIONS, SCHEMA_VERSION, Store

KEY = "bench@v1/last/cls"


def records(n: int, prefix: str = "r") -> list[ImageRecord]:
    return [
        ImageRecord(f"{prefix}{i:030x}", f"{prefix}/{i:05d}.png", (prefix,), 8, 8, 100, "PNG", 0.0, None)
        for i in range(n)
    ]


def python(code: str, *args: str) -> subprocess.Popen:
    """A Python subprocess running ``code`` against this repository, stdout piped."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [PYTHON, "-c", code, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_line(proc: subprocess.Popen, expected: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() == expected:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no {expected!r} from the subprocess: {proc.stderr.read()}")  # type: ignore[union-attr]


HOLDER = """
import sys, time
from core.store import Store
store = Store(sys.argv[1], sys.argv[2])
with store.connected():  # one unit of work: the file is held until it ends
    store.ingest("held", "/src", [], [])
    print("holding", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def eventually(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- one process at a time, taking turns


def test_an_idle_store_lets_go_of_the_file_and_sees_what_another_process_wrote(db_file: Path, tmp_path: Path) -> None:
    store = Store(db_file, tmp_path / "c", idle_close_s=0.2)
    store.ingest("mine", "/src", records(2), [])
    assert store.is_open  # within the idle period
    assert eventually(lambda: not store.is_open)  # ...and let go of after it
    writer = python(
        "import sys\nfrom core.store import Store\n"
        "Store(sys.argv[1], sys.argv[2], lock_timeout_s=5).ingest('theirs', '/src', [], [])\nprint('done')",
        str(db_file),
        str(tmp_path / "c2"),
    )
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and out.strip() == "done", err
    assert store.dataset_names() == ["mine", "theirs"]
    store.close()


def test_opening_waits_for_the_holder_then_succeeds(db_file: Path, tmp_path: Path) -> None:
    holder = python(HOLDER, str(db_file), str(tmp_path / "c1"), "1.5")
    wait_for_line(holder, "holding")
    store = Store(db_file, tmp_path / "c2", lock_timeout_s=30)
    started = time.monotonic()
    names = store.dataset_names()  # waits until the holder's unit of work ends
    waited = time.monotonic() - started
    holder.wait(timeout=30)
    store.close()
    assert names == ["held"]  # the holder's committed write, read after it let go
    assert waited > 0.3  # it did wait (the holder slept 1.5 s after saying so)
    assert holder.returncode == 0


def test_a_holder_that_never_lets_go_gives_a_clear_error_after_the_deadline(db_file: Path, tmp_path: Path) -> None:
    holder = python(HOLDER, str(db_file), str(tmp_path / "c1"), "60")
    try:
        wait_for_line(holder, "holding")
        store = Store(db_file, tmp_path / "c2", lock_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(DatabaseLockedError) as caught:
            store.dataset_names()
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait(timeout=30)
    message = str(caught.value)
    assert 1.0 <= waited < 10
    assert str(db_file) in message and f"PID {holder.pid}" in message  # which file, and who holds it
    assert "within 1 s" in message and "REPLENS_DB" in message
    assert str(db_file) not in caught.value.for_page() and "busy" in caught.value.for_page()


def test_a_busy_holder_hands_the_file_to_a_waiting_process(db_file: Path, tmp_path: Path) -> None:
    """The holder reads every 20 ms and would stay open for 60 s when idle: without taking turns the
    waiting writer would time out after 10 s. The holder then sees the writer's commit."""
    busy = python(
        "import sys, time\nfrom core.store import Store\n"
        "store = Store(sys.argv[1], sys.argv[2], idle_close_s=60)\n"
        "store.dataset_names()\nprint('reading', flush=True)\n"
        "deadline = time.monotonic() + 30\n"
        "while time.monotonic() < deadline:\n"
        "    if 'from_waiter' in store.dataset_names():\n"
        "        print('seen', flush=True)\n"
        "        break\n"
        "    time.sleep(0.02)\n",
        str(db_file),
        str(tmp_path / "c1"),
    )
    wait_for_line(busy, "reading")
    waiter = Store(db_file, tmp_path / "c2", lock_timeout_s=10)
    started = time.monotonic()
    waiter.ingest("from_waiter", "/src", records(3), [])
    took = time.monotonic() - started
    waiter.close()
    out, err = busy.communicate(timeout=60)
    assert took < 10
    assert out.strip() == "seen", err  # the busy reader got the file back and read the commit


def test_migrations_run_once_when_processes_and_threads_open_a_new_file_together(db_file: Path, tmp_path: Path) -> None:
    code = "import sys\nfrom core.store import Store\nprint(Store(sys.argv[1], sys.argv[2]).schema_version())"
    procs = [python(code, str(db_file), str(tmp_path / f"p{i}")) for i in range(2)]
    versions: list[int] = []
    errors: list[BaseException] = []

    def open_here(i: int) -> None:
        try:
            versions.append(Store(db_file, tmp_path / f"t{i}").schema_version())
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_here, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert errors == []
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert versions + [int(out) for out, _ in outputs] == [SCHEMA_VERSION] * 5
    store = Store(db_file, tmp_path / "check")
    recorded = store._cursor().execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    store.close()
    # Each migration recorded once, in its own transaction: a second application would have failed
    # (its CREATE TABLE finds the table) in one of the five openers above.
    assert recorded == [(i, m.__name__) for i, m in enumerate(MIGRATIONS, start=1)]


# --------------------------------------------------------------------------- threads of one process


def test_units_of_work_are_counted_across_threads(db_file: Path, tmp_path: Path) -> None:
    store = Store(db_file, tmp_path / "c", idle_close_s=0)
    store.ingest("d", "/src", records(2), [])
    assert not store.is_open  # idle_close_s=0: closed at the end of the outermost unit
    inside, leave = threading.Event(), threading.Event()

    def long_unit() -> None:
        with store.connected():
            store.dataset_names()
            inside.set()
            leave.wait(30)

    worker = threading.Thread(target=long_unit)
    worker.start()
    assert inside.wait(30)
    store.release()  # what a long writer does between chunks
    assert store.is_open  # the other thread's unit keeps the file open
    assert store.dataset_names() == ["d"] and store.is_open
    leave.set()
    worker.join()
    assert not store.is_open


def test_a_thread_cursor_is_replaced_after_a_reopen(store: Store) -> None:
    store.ingest("d", "/src", records(1), [])
    before = store._cursor()
    store.close()
    after = store._cursor()
    assert after is not before
    assert after.execute("SELECT name FROM datasets").fetchall() == [("d",)]
    with pytest.raises(Exception, match="closed"):
        before.execute("SELECT 1")


def test_every_public_store_method_is_a_unit_of_work() -> None:
    methods = {
        name: getattr(Store, name)
        for name in dir(Store)
        if not name.startswith("_") and callable(getattr(Store, name)) and not isinstance(getattr(Store, name), type)
    }
    plumbing = {"connected", "release", "close"}
    unwrapped = [
        n for n, m in methods.items() if n not in plumbing and not getattr(m, "__replens_unit_of_work__", False)
    ]
    assert unwrapped == []
    assert {"ingest", "load_embeddings", "write_embeddings", "runs", "schema_version"} <= set(methods)


def test_a_reader_thread_never_sees_part_of_a_chunk(store: Store) -> None:
    chunk, n_chunks, dim = 40, 12, 4
    recs = records(chunk * n_chunks)
    store.ingest("d", "/src", recs, [])
    store.register_encoder(KEY, "bench", "v1", "last", "cls", dim, {})
    hashes = [r.content_hash for r in recs]
    vectors = np.arange(len(hashes) * dim, dtype=np.float32).reshape(-1, dim)
    expected = dict(zip(hashes, vectors))
    seen: list[int] = []
    mismatched: list[str] = []
    done = threading.Event()

    def writer() -> None:
        for i in range(0, len(hashes), chunk):
            store.write_embeddings(KEY, hashes[i : i + chunk], vectors[i : i + chunk])
            store.release()  # as extraction does between chunks: a reopen under the reader's feet
            time.sleep(0.01)
        done.set()

    def reader() -> None:
        while not done.is_set():
            count = store.count_embeddings(KEY)
            if count:
                frame, matrix = store.load_embeddings("d", KEY)
                seen.append(len(matrix))
                mismatched.extend(
                    h for h, row in zip(frame["content_hash"], matrix) if not np.array_equal(row, expected[h])
                )
            seen.append(count)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [c for c in seen if c % chunk] == []  # whole chunks only
    assert len({c for c in seen if 0 < c < len(hashes)}) >= 2  # the reads did interleave with the writes
    assert mismatched == []
    assert store.count_embeddings(KEY) == len(hashes)


def test_a_cli_embed_runs_while_this_process_keeps_reading(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    """The app's situation: this process reads every 20 ms (and would hold the file while it does)
    while ``python -m core embed`` writes chunks of 8; it sees only whole chunks and the command succeeds."""
    root = tmp_path / "imgs"
    for i in range(160):
        write_file(root, f"c{i % 4}/img_{i:04d}.png", png_bytes(1000 + i, size=16))
    store = Store()
    scan = images.scan(root, cache_dir=store.cache_dir)
    store.ingest("d", scan.root, scan.records, scan.skipped)
    key = load_encoder("pixels", "cpu").key
    seen: list[int] = []
    proc = subprocess.Popen(
        [PYTHON, "-m", "core", "embed", "--dataset", "d", "--encoder", "pixels", "--batch-size", "4", "--json"],
        cwd=REPO_ROOT,
        env={**os.environ, "REPLENS_EMBED_CHUNK": "8", "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None:
        seen.append(store.count_embeddings(key))
        time.sleep(0.02)
    out, err = proc.communicate()
    final = store.count_embeddings(key)
    store.close()
    assert proc.returncode == 0, err
    assert [c for c in seen if c % 8 and c != 160] == []
    assert any(0 < c < 160 for c in seen)  # read while the command was half-way
    assert final == 160 and '"encoded": 160' in out


# --------------------------------------------------------------------------- extraction runs of other processes


def test_a_running_extraction_of_another_live_process_is_in_progress(store: Store, tmp_path: Path) -> None:
    pixels = load_encoder("pixels", "cpu")
    store.ingest("d", "/src", records(4), [])
    store.register_encoder(pixels.key, "pixels", pixels.spec.version, "pixels", "none", pixels.dim, {})
    other = python("import time\nprint('up', flush=True)\ntime.sleep(60)")
    wait_for_line(other, "up")
    identity = {"pid": other.pid, "host": socket.gethostname(), "proc_start": extract._process_start(other.pid)}
    assert identity["proc_start"] is not None
    try:
        store.start_run("embed", "d", pixels.key, identity)
        assert unfinished_extractions(store, "d") == []  # alive: in progress, not abandoned
        reused = store.start_run("embed", "d", pixels.key, {**identity, "proc_start": identity["proc_start"] + 1})
        flagged = unfinished_extractions(store, "d")  # same pid, another start time: a reused pid
        assert [f.run_id for f in flagged] == [reused]
        live = store.start_run("embed", "d", pixels.key, identity)
        assert unfinished_extractions(store, "d") == []
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait(timeout=30)
    flagged = unfinished_extractions(store, "d")
    assert [(f.run_id, f.n_missing) for f in flagged] == [(live, 4)]
    assert "process running it ended" in flagged[0].reason


def test_an_abandoned_run_is_closed_by_the_next_extraction(ingested) -> None:
    store, _, _ = ingested
    pixels = load_encoder("pixels", "cpu")
    dead = store.start_run("embed", "d", pixels.key, {"pid": 999_999_999, "host": socket.gethostname()})
    report = extract.embed_dataset(store, "d", pixels)
    runs = store.runs("embed").set_index("run_id")
    assert runs.loc[dead, "status"] == "failed" and runs.loc[dead, "error"].startswith("Interrupted")
    assert runs.loc[report.run_id, "status"] == "done"
