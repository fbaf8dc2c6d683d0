"""The shared ingest path: incremental rescans re-read only what changed."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import images
from core.datasets import ingest_path
from core.store import Store


def _write(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for i in range(4):
        _write(root / ("cats" if i < 2 else "dogs") / f"{i}.png", (i * 40, 10, 200))
    (root / "cats" / "0.txt").write_text("A cat.\nfr.utf8=Un chat.\n")
    return root


def test_rescan_reads_only_changed_files(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    scan, stats = ingest_path(store, "d", folder)
    assert (stats.added, len(scan.records)) == (4, 4)
    assert next(r for r in scan.records if r.rel_path == "cats/0.png").caption == "A cat."

    decoded: list[int] = []
    real_decode = images._decode
    monkeypatch.setattr(images, "_decode", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    _, stats = ingest_path(store, "d", folder)
    assert decoded == [] and stats.unchanged == 4

    changed = folder / "dogs" / "3.png"
    _write(changed, (1, 2, 3))
    os.utime(changed, (1e9, 1e9))  # a new mtime even on coarse-timestamp filesystems
    scan, stats = ingest_path(store, "d", folder)
    assert len(decoded) == 1 and (stats.updated, stats.unchanged) == (1, 3)
    new_hash = images.content_hash(changed.read_bytes())
    assert next(r for r in scan.records if r.rel_path == "dogs/3.png").content_hash == new_hash
    assert new_hash in set(store.dataset_images("d")["content_hash"])


def test_rescan_keeps_a_caption_edit(folder: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    ingest_path(store, "d", folder)
    (folder / "cats" / "0.txt").write_text("A sleepy cat.")
    ingest_path(store, "d", folder)
    frame = store.dataset_images("d").set_index("rel_path")
    assert frame.loc["cats/0.png", "caption"] == "A sleepy cat."
    assert list(frame.loc["cats/0.png", "labels"]) == ["cats"]
    assert np.all(frame["n_paths"] == 1)


def test_zip_of_a_folder_does_not_label_everything_with_the_folder_name(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for rel, colour in (
            ("photos/cats/a.png", (1, 2, 3)),
            ("photos/dogs/b.png", (4, 5, 6)),
            ("photos/c.png", (7, 8, 9)),
        ):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
            zf.writestr(rel, buf.getvalue())
    scan = images.scan(archive)
    labels = {r.rel_path: r.labels for r in scan.records}
    assert labels == {"photos/cats/a.png": ("cats",), "photos/dogs/b.png": ("dogs",), "photos/c.png": ()}
    # Two top-level folders: both are real labels.
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(mixed, "w") as zf:
        for rel in ("cats/a.png", "dogs/b.png"):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (len(rel), 0, 0)).save(buf, format="PNG")
            zf.writestr(rel, buf.getvalue())
    assert {r.labels for r in images.scan(mixed).records} == {("cats",), ("dogs",)}
