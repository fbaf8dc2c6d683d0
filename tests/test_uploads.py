"""core.uploads: browser-supplied names are made safe and nothing is written outside the upload folder;
core.exports: a selection's paths as CSV and its files as a zip."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import png_bytes
from core import uploads
from core.errors import InvalidInputError
from core.exports import files_zip, paths_csv
from core.store import Store

REFUSED = [
    "/etc/passwd",  # absolute
    "\\\\server\\share\\x.png",  # UNC path, absolute once slashes are unified
    "C:/Windows/x.png",  # drive letter
    "c:x.png",  # drive-relative
    "../x.png",  # parent
    "a/../../x.png",  # parent in the middle
    "a\\..\\..\\x.png",  # parent with Windows separators
    ".hidden.png",  # hidden file
    "a/.git/config",  # hidden folder
    "__MACOSX/a/._x.png",  # macOS resource forks
    "",  # nothing
    "./",  # nothing but dots
]


@pytest.mark.parametrize("name", REFUSED)
def test_unsafe_names_are_refused(name: str) -> None:
    assert uploads.safe_relative_path(name) is None


def test_control_and_reserved_characters_are_replaced() -> None:
    assert uploads.safe_relative_path("a\x00b/c\x1fd.png") == "a_b/c_d.png"
    assert uploads.safe_relative_path('cats/what?*<>|:".png') == "cats/what_______.png"
    assert uploads.safe_relative_path("set\\dogs\\b.png") == "set/dogs/b.png"
    assert uploads.safe_relative_path("./cats//a.png") == "cats/a.png"
    assert len(uploads.safe_relative_path("x" * 500 + ".png") or "") == 200  # each part is cut to 200


def test_save_files_never_writes_outside_the_folder(tmp_path: Path) -> None:
    dest = tmp_path / "uploads" / "d"
    names = [*REFUSED, "pick/cats/a.png", "pick/dogs/b\x07.png"]
    saved, refused = uploads.save_files(dest, [(name, b"data") for name in names])
    assert saved == 2
    assert sorted(refused) == sorted(REFUSED)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["uploads/d/cats/a.png", "uploads/d/dogs/b_.png"]  # picked folder stripped, \x07 replaced


def test_save_files_refuses_to_follow_a_link_out_of_the_folder(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    os.symlink(outside, dest / "escape")
    saved, refused = uploads.save_files(dest, [("escape/x.png", b"1"), ("kept/y.png", b"2")])
    assert (saved, refused) == (1, ["escape/x.png"])
    assert not any(outside.iterdir())
    assert (dest / "kept" / "y.png").read_bytes() == b"2"


def test_save_files_keeps_labels_of_a_flat_folder(tmp_path: Path) -> None:
    assert uploads.save_files(tmp_path, [("birds/c.png", b"4"), ("birds/d.png", b"5")]) == (2, [])
    assert sorted(p.name for p in (tmp_path / "birds").iterdir()) == ["c.png", "d.png"]


def test_strip_common_root() -> None:
    assert uploads.strip_common_root(["pick/cats/a.png", "pick/dogs/b.png"]) == ["cats/a.png", "dogs/b.png"]
    assert uploads.strip_common_root(["birds/a.png", "birds/b.png"]) == ["birds/a.png", "birds/b.png"]
    assert uploads.strip_common_root(["p/cats/a.png", "q/dogs/b.png"]) == ["p/cats/a.png", "q/dogs/b.png"]
    assert uploads.strip_common_root(["p/cats/a.png", "loose.png"]) == ["p/cats/a.png", "loose.png"]
    assert uploads.strip_common_root([]) == []


def test_dataset_slug_and_upload_dir(tmp_path: Path) -> None:
    assert uploads.dataset_slug("  My photos & 2024 ") == "My-photos-2024"
    assert len(uploads.dataset_slug("a" * 200)) == 80
    # Names that look like paths are refused (issue 10), no longer turned into a folder name.
    for name in ("", "  ", "...", "/", "../../etc", "a/b", "a" * 201):
        with pytest.raises(InvalidInputError, match="at least one letter or digit"):
            uploads.dataset_slug(name)
    store = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    try:
        assert uploads.upload_dir(store, "my set!") == tmp_path / "cache" / "uploads" / "my-set"
        with pytest.raises(InvalidInputError, match="path separator"):
            uploads.upload_dir(store, "../my set")
    finally:
        store.close()


def test_save_archive(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="wrong header"):
        uploads.save_archive(tmp_path, "x.zip", b"not a zip")
    with pytest.raises(InvalidInputError, match="not a .zip file name"):
        uploads.save_archive(tmp_path, "x.png", b"PK\x03\x04")
    with pytest.raises(InvalidInputError, match="not a .zip file name"):
        uploads.save_archive(tmp_path, ".hidden.zip", b"PK\x03\x04")
    target = uploads.save_archive(tmp_path, "C:\\Users\\me\\a b.zip", b"PK\x03\x04")
    assert target == tmp_path / "archives" / "a b.zip" and target.read_bytes() == b"PK\x03\x04"


def test_upload_types_are_images_and_captions() -> None:
    assert {"png", "jpg", "jpeg", "webp", "txt"} <= set(uploads.UPLOAD_TYPES)
    assert all(not t.startswith(".") for t in uploads.UPLOAD_TYPES)


def test_exports_of_a_selection(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.png").write_bytes(png := png_bytes(1, 8))
    rows = pd.DataFrame(
        {
            "source": [str(tmp_path)] * 2,
            "rel_path": ["cats/a.png", "cats/gone.png"],
            "label": ["cats", "cats"],
            "content_hash": ["h1", "h2"],
            "width": [8, 8],
        }
    )
    table = pd.read_csv(io.BytesIO(paths_csv(rows)))
    assert list(table.columns) == ["source", "rel_path", "label", "content_hash"]  # no caption column to copy
    assert table["rel_path"].tolist() == ["cats/a.png", "cats/gone.png"]
    with zipfile.ZipFile(io.BytesIO(files_zip(rows))) as archive:
        assert archive.namelist() == ["cats/a.png"]  # a file deleted since the scan is left out
        assert archive.read("cats/a.png") == png


def test_save_upload_needs_one_saved_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    try:
        with pytest.raises(InvalidInputError, match=r"could be saved.*Refused 1 unsafe file name\(s\): \.\./x\.png"):
            uploads.save_upload(store, "d", [("../x.png", b"1")])
        dest, refused = uploads.save_upload(store, "d", [("pick/a.png", b"1"), ("/abs.png", b"2")])
        assert dest == uploads.upload_dir(store, "d") and refused == ["/abs.png"]
        assert (dest / "pick" / "a.png").read_bytes() == b"1"
    finally:
        store.close()
