"""Issue 11: size limits on uploads, checked before a byte is written, and uploads that fail
half-way leave nothing: no partial file, no staging folder, no dataset record.

Limits: each file of a folder upload <= REPLENS_MAX_FILE_MB (200), one upload in all (a folder's
files together, or one .zip / weights / .replens file) <= REPLENS_MAX_UPLOAD_MB (2048), which is
also Streamlit's server.maxUploadSize in .streamlit/config.toml.
"""

from __future__ import annotations

import io
import os
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors
from streamlit.testing.v1 import AppTest

from conftest import png_bytes
from core import config, fsutil, uploads
from core.errors import InvalidInputError, UploadTooLargeError
from core.fsutil import human_bytes, move_into
from core.store import Store
from core.uploads import BytesUpload, UploadLimits
from core.weights import save_weights

ROOT = Path(__file__).resolve().parent.parent
DATA_PAGE = str(ROOT / "pages" / "data.py")
MB = 1024 * 1024


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    yield s  # type: ignore[misc]
    s.close()


# --------------------------------------------------------------------------- the limits themselves


def test_limits_default_to_200_mb_a_file_and_2_gb_an_upload_and_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("REPLENS_MAX_FILE_MB", "REPLENS_MAX_UPLOAD_MB"):
        monkeypatch.delenv(name, raising=False)  # a developer's shell must not decide this test
    assert (config.max_file_mb(), config.max_upload_mb()) == (200, 2048)
    assert UploadLimits.from_config() == UploadLimits(200 * MB, 2048 * MB)
    monkeypatch.setenv("REPLENS_MAX_FILE_MB", "5")
    monkeypatch.setenv("REPLENS_MAX_UPLOAD_MB", " 40 ")
    assert UploadLimits.from_config() == UploadLimits(5 * MB, 40 * MB)
    for bad in ("0", "-3", "lots", "1.5"):
        monkeypatch.setenv("REPLENS_MAX_FILE_MB", bad)
        with pytest.raises(InvalidInputError, match="REPLENS_MAX_FILE_MB") as caught:
            config.max_file_mb()
        assert "whole number of megabytes" in caught.value.for_page()


def test_streamlit_takes_files_up_to_the_per_upload_limit() -> None:
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    # Streamlit refuses a larger file before RepLens sees it: a .zip or weights file may be a whole upload.
    assert settings["server"]["maxUploadSize"] == config.MAX_UPLOAD_MB_DEFAULT
    assert config.MAX_FILE_MB_DEFAULT <= config.MAX_UPLOAD_MB_DEFAULT


def test_the_data_page_uploaders_carry_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLENS_MAX_FILE_MB", "7")
    monkeypatch.setenv("REPLENS_MAX_UPLOAD_MB", "70")
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.run()
    assert at.file_uploader(key="upload_folder_0").proto.max_upload_size_mb == 7  # the browser refuses early
    assert at.file_uploader(key="upload_zip_0").proto.max_upload_size_mb == 70


# --------------------------------------------------------------------------- core.uploads


def test_a_file_over_the_per_file_limit_is_refused_naming_it_and_nothing_is_written(store: Store) -> None:
    limits = UploadLimits(file_bytes=1000, upload_bytes=10_000)
    files = [("pick/cats/ok.png", b"x" * 1000), ("pick/cats/huge.png", b"x" * 1001)]
    with pytest.raises(UploadTooLargeError) as caught:
        uploads.save_upload(store, "d", files, limits)
    err = caught.value
    assert (err.name, err.size, err.limit) == ("pick/cats/huge.png", 1001, 1000)
    page = err.for_page()
    assert "'pick/cats/huge.png'" in page and human_bytes(1000) in page and "Nothing was saved" in page
    assert not (store.cache_dir / "uploads").exists()
    assert store.dataset_names() == []


def test_files_over_the_per_upload_limit_together_are_refused(store: Store) -> None:
    limits = UploadLimits(file_bytes=1000, upload_bytes=2500)
    files = [(f"pick/cats/c{i}.png", b"x" * 900) for i in range(3)]  # each fits, 2700 in all does not
    with pytest.raises(UploadTooLargeError) as caught:
        uploads.save_upload(store, "d", files, limits)
    assert "these 3 files" in caught.value.for_page() and human_bytes(2500) in caught.value.for_page()
    assert not (store.cache_dir / "uploads").exists()
    # Exactly at both limits is allowed.
    dest, refused = uploads.save_upload(store, "d", files[:2] + [("pick/dogs/d.png", b"y" * 700)], limits)
    assert refused == [] and files_under(dest) == ["cats/c0.png", "cats/c1.png", "dogs/d.png"]


def test_an_archive_over_the_per_upload_limit_is_refused_and_leaves_no_folder(store: Store) -> None:
    dest = uploads.upload_dir(store, "d")
    with pytest.raises(UploadTooLargeError) as caught:
        uploads.save_archive(dest, "pics.zip", b"PK" + b"\0" * 2000, UploadLimits(100, 1000))
    assert caught.value.name == "pics.zip" and caught.value.limit == 1000
    assert not dest.exists() and not (store.cache_dir / "uploads").exists()
    target = uploads.save_archive(dest, "pics.zip", b"PK" + b"\0" * 998, UploadLimits(100, 1000))
    assert target == dest / "archives" / "pics.zip" and target.stat().st_size == 1000
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no staging folder left beside it


def test_weights_over_the_per_upload_limit_are_refused_and_not_kept(tmp_path: Path) -> None:
    data = save_safetensors({"w": np.zeros(1000, dtype=np.float32)})
    with pytest.raises(UploadTooLargeError) as caught:
        save_weights(tmp_path / "cache", "w.safetensors", data, UploadLimits(100, len(data) - 1))
    assert caught.value.name == "w.safetensors"
    assert not (tmp_path / "cache").exists()
    assert save_weights(tmp_path / "cache", "w.safetensors", data, UploadLimits(100, len(data))).is_file()


class FailingUpload:
    """An upload whose bytes cannot be read (a client gone mid-upload, a full temporary disk)."""

    name = "pick/cats/broken.png"
    size = 10

    def getvalue(self) -> bytes:
        raise OSError("connection reset while reading the upload")


def test_an_error_mid_write_keeps_no_file_of_the_upload(store: Store) -> None:
    files = [BytesUpload(f"pick/cats/c{i}.png", png_bytes(i, 16)) for i in range(3)]
    with pytest.raises(OSError, match="connection reset"):
        uploads.save_upload(store, "d", [files[0], files[1], FailingUpload(), files[2]])
    assert files_under(store.cache_dir) == [] and list((store.cache_dir / "uploads").iterdir()) == []
    assert store.dataset_names() == []


def test_an_error_mid_write_into_an_existing_folder_leaves_it_as_it_was(store: Store) -> None:
    dest, _ = uploads.save_upload(store, "d", [("pick/cats/a.png", b"old a"), ("pick/dogs/b.png", b"old b")])
    before = {rel: (dest / rel).read_bytes() for rel in files_under(dest)}
    adding = [BytesUpload("pick/cats/a.png", b"new a"), BytesUpload("pick/birds/n.png", b"new"), FailingUpload()]
    with pytest.raises(OSError):
        uploads.save_upload(store, "d", adding)
    assert {rel: (dest / rel).read_bytes() for rel in files_under(dest)} == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["d"]


def test_a_merge_that_fails_half_way_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest, new = tmp_path / "dest", tmp_path / "new"
    for root, files in ((dest, {"a.png": b"old a", "keep.png": b"keep"}), (new, {"a.png": b"new a", "x/b.png": b"b"})):
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    real_replace, calls = os.replace, []

    def replace_failing_on_the_third(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 3:  # a.png backed up (1) and replaced (2); x/b.png's move (3) fails
            raise OSError("simulated failure")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil.os, "replace", replace_failing_on_the_third)
    with pytest.raises(OSError, match="simulated"):
        move_into(new, dest)
    monkeypatch.setattr(fsutil.os, "replace", real_replace)
    assert {rel: (dest / rel).read_bytes() for rel in files_under(dest)} == {"a.png": b"old a", "keep.png": b"keep"}
    assert not (dest / "x").exists()  # the folder it made is gone too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "new"]  # no backup folder left


def test_the_free_disk_space_is_checked_before_writing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import namedtuple

    from core.errors import StorageFullError

    asked: list[Path] = []
    usage = namedtuple("usage", "total used free")

    def small_disk(path: Path) -> tuple[int, int, int]:
        asked.append(Path(path))
        return usage(10 * MB, 10 * MB - fsutil.SPACE_MARGIN_BYTES - 100_000, fsutil.SPACE_MARGIN_BYTES + 100_000)

    monkeypatch.setattr(fsutil.shutil, "disk_usage", small_disk)
    with pytest.raises(StorageFullError) as caught:
        uploads.save_upload(store, "d", [("pick/cats/a.png", b"x" * 300_000)])
    page = caught.value.for_page()
    assert human_bytes(300_000 + fsutil.SPACE_MARGIN_BYTES) in page  # needed, with the margin
    assert human_bytes(fsutil.SPACE_MARGIN_BYTES + 100_000) in page  # free
    assert asked and all(p == store.cache_dir or p in store.cache_dir.parents for p in asked)
    assert not (store.cache_dir / "uploads").exists()
    dest, _ = uploads.save_upload(store, "d", [("pick/cats/a.png", b"x" * 100_000)])  # it fits: saved
    assert files_under(dest) == ["cats/a.png"]


# --------------------------------------------------------------------------- the Data page


def upload_folder(at: AppTest, files: list[tuple[str, bytes]], name: str) -> None:
    at.file_uploader(key="upload_folder_0").set_value([(n, data, "image/png") for n, data in files]).run()
    at.text_input(key="upload_folder_name").set_value(name).run()
    at.button(key="add_folder").click().run()
    assert not at.exception, [e.message for e in at.exception]


def page_store_datasets() -> list[str]:
    from ui import resources

    return resources.get_store().dataset_names()


def test_the_data_page_refuses_a_file_over_the_limit_naming_it(
    monkeypatch: pytest.MonkeyPatch, isolated_env: dict[str, str]
) -> None:
    monkeypatch.setenv("REPLENS_MAX_FILE_MB", "1")
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.run()
    big = png_bytes(1, 16) + b"\0" * (MB + 1)  # a valid PNG with trailing bytes: over 1 MB
    upload_folder(at, [("pick/cats/small.png", png_bytes(2, 16)), ("pick/cats/big.png", big)], "pets")
    assert len(at.error) == 1 and not at.success
    message = at.error[0].value
    assert "big.png" in message and "1.0 MB" in message and "Nothing was saved" in message
    assert page_store_datasets() == []
    assert not (Path(isolated_env["REPLENS_CACHE"]) / "uploads").exists()


def test_the_data_page_refuses_an_upload_over_the_total_limit(
    monkeypatch: pytest.MonkeyPatch, isolated_env: dict[str, str]
) -> None:
    monkeypatch.setenv("REPLENS_MAX_UPLOAD_MB", "1")
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.run()
    part = png_bytes(1, 16) + b"\0" * (MB // 2 + 1)
    upload_folder(at, [("pick/cats/a.png", part), ("pick/cats/b.png", part)], "pets")
    assert len(at.error) == 1 and "these 2 files" in at.error[0].value and "1.0 MB" in at.error[0].value
    assert page_store_datasets() == []
    assert not (Path(isolated_env["REPLENS_CACHE"]) / "uploads").exists()


def test_the_data_page_saves_and_ingests_an_upload_within_the_limits(isolated_env: dict[str, str]) -> None:
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.run()
    upload_folder(
        at,
        [
            (f"pick/{label}/{label}{i}.png", png_bytes(10 * i + len(label), 16))
            for label in ("cats", "dogs")
            for i in range(2)
        ],
        "pets",
    )
    assert not at.error, [e.value for e in at.error]
    assert "**pets**: 4 added" in at.success[0].value
    assert page_store_datasets() == ["pets"]
    uploaded = Path(isolated_env["REPLENS_CACHE"]) / "uploads"
    assert sorted(p.name for p in uploaded.iterdir()) == ["pets"]  # no staging folder beside it
    assert files_under(uploaded / "pets") == ["cats/cats0.png", "cats/cats1.png", "dogs/dogs0.png", "dogs/dogs1.png"]


def test_the_data_page_refuses_an_archive_over_the_limit(
    monkeypatch: pytest.MonkeyPatch, isolated_env: dict[str, str]
) -> None:
    monkeypatch.setenv("REPLENS_MAX_UPLOAD_MB", "1")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("cats/a.png", png_bytes(1, 16) + b"\0" * (MB + 1))
    at = AppTest.from_file(DATA_PAGE, default_timeout=60)
    at.run()
    at.file_uploader(key="upload_zip_0").set_value(("holiday.zip", buffer.getvalue(), "application/zip")).run()
    at.button(key="add_zip").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.error) == 1 and "holiday.zip" in at.error[0].value and "1.0 MB" in at.error[0].value
    assert page_store_datasets() == []
    assert not (Path(isolated_env["REPLENS_CACHE"]) / "uploads").exists()
