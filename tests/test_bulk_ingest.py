"""Ingest at scale: the store's bulk merge of a scan, and the scan's bounded queue of work.

The merge is checked against a plain-Python model of what a rescan means (which paths are
added, duplicated, unchanged, updated, removed), on a few thousand records with every kind
of change mixed in.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conftest import png_bytes, write_file
from core import images
from core.images import ImageRecord
from core.store import Store

scan_module = importlib.import_module("core.images.scan")  # ``core.images.scan`` the name is the function


def _records(n: int, start: int = 0) -> list[ImageRecord]:
    return [
        ImageRecord(
            content_hash=f"{i:032x}",
            rel_path=f"f{i % 7}/sub{i % 3}/{i:06d}.png",
            labels=(f"f{i % 7}", f"sub{i % 3}"),
            width=8 + i % 5,
            height=8,
            n_bytes=100 + i,
            format="PNG",
            mtime=float(i),
            caption=f"caption {i}" if i % 2 else None,
        )
        for i in range(start, start + n)
    ]


def _expected_counts(known: dict[str, str], held: set[str], scanned: list[ImageRecord]) -> tuple[int, ...]:
    """(added, duplicates, unchanged, updated, removed), walking the scan in path order."""
    seen = set(held)
    added = duplicates = unchanged = updated = 0
    for record in sorted(scanned, key=lambda r: r.rel_path):
        previous = known.get(record.rel_path)
        if previous is None:
            added += 1
            duplicates += record.content_hash in seen
        elif previous == record.content_hash:
            unchanged += 1
        else:
            updated += 1
        seen.add(record.content_hash)
    removed = len(set(known) - {r.rel_path for r in scanned})
    return added, duplicates, unchanged, updated, removed


def _added_at(store: Store, dataset: str) -> dict[str, Any]:
    rows = store._cursor().execute("SELECT rel_path, added_at FROM dataset_images WHERE dataset = ?", [dataset])
    return dict(rows.fetchall())


def test_a_rescan_with_every_kind_of_change_counts_and_writes_what_changed(store: Store) -> None:
    first = _records(3_000)
    stats = store.ingest("big", "/src", first, [])
    assert (stats.added, stats.duplicates, stats.unchanged, stats.updated, stats.removed) == (3_000, 0, 0, 0, 0)
    stamps = _added_at(store, "big")

    rescan = list(first)
    del rescan[::10]  # 300 files gone
    for i in range(1, 200, 2):  # 100 files whose bytes changed
        rescan[i] = replace(rescan[i], content_hash=f"changed{i:025d}", mtime=rescan[i].mtime + 1)
    rescan[5] = replace(rescan[5], caption="a new caption")  # same bytes, new caption
    copies = [replace(r, rel_path=f"copies/{r.rel_path}", labels=("copies",)) for r in first[1:40:3]]
    fresh = _records(150, start=10_000)
    rescan += copies + fresh + [replace(fresh[0], rel_path="zz/same-bytes-as-a-new-file.png")]
    known = {r.rel_path: r.content_hash for r in first}
    expected = _expected_counts(known, {r.content_hash for r in first}, rescan)
    stats = store.ingest("big", "/src", rescan, [])
    assert (stats.added, stats.duplicates, stats.unchanged, stats.updated, stats.removed) == expected
    assert expected[1] == len(copies) + 1  # the model itself counts the copies and the repeated new file

    # The store holds exactly the rescan, field by field.
    stored = store.dataset_paths("big")
    got = {
        (p, h, tuple(labels), c if isinstance(c, str) else None)
        for p, h, labels, c in zip(stored["rel_path"], stored["content_hash"], stored["labels"], stored["caption"])
    }
    assert got == {(r.rel_path, r.content_hash, r.labels, r.caption) for r in rescan}
    images_frame = store.dataset_images("big")
    sizes = dict(zip(images_frame["content_hash"], images_frame["width"]))
    assert all(sizes[r.content_hash] == r.width for r in rescan)

    # Paths that did not change were not rewritten; changed ones were.
    after = _added_at(store, "big")
    untouched = {r.rel_path for r in rescan} & {r.rel_path for r in first}
    changed = {rescan[i].rel_path for i in range(1, 200, 2)} | {rescan[5].rel_path}
    assert all(after[p] == stamps[p] for p in untouched - changed)
    assert all(after[p] > stamps[p] for p in changed)


def test_rescanning_an_unchanged_source_changes_nothing(store: Store) -> None:
    records = _records(2_000)
    store.ingest("same", "/src", records, [])
    before = _added_at(store, "same")
    stats = store.ingest("same", "/src", list(reversed(records)), [])
    assert (stats.added, stats.duplicates, stats.unchanged, stats.updated, stats.removed) == (0, 0, 2_000, 0, 0)
    assert _added_at(store, "same") == before


def test_two_sources_of_one_dataset_keep_their_own_paths(store: Store) -> None:
    a, b = _records(500), _records(500, start=250)  # half of b's bytes are also in a
    store.ingest("two", "/a", a, [])
    stats = store.ingest("two", "/b", b, [])
    assert (stats.added, stats.duplicates) == (500, 250)
    stats = store.ingest("two", "/a", a[:100], [])  # a shrinks; b is untouched
    assert stats.removed == 400
    assert len(store.dataset_paths("two")) == 600


def test_scan_keeps_a_bounded_queue_of_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "many"
    for i in range(300):
        write_file(root, f"d{i % 4}/{i:04d}.png", png_bytes(i, size=8))
    submitted = [0]

    class CountingPool(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            submitted[0] += 1
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(scan_module, "ThreadPoolExecutor", CountingPool)
    ahead: list[int] = []
    result = images.scan(root, workers=2, progress=lambda done, total: ahead.append(submitted[0] - done))
    assert len(result.records) == 300 and result.skipped == []
    assert [r.rel_path for r in result.records] == sorted(r.rel_path for r in result.records)
    # Never more than the window queued ahead of what is finished (it was every file at once).
    window = 2 * scan_module._FUTURES_PER_WORKER
    assert max(ahead) <= window and ahead[0] == 0 and submitted[0] == 300
