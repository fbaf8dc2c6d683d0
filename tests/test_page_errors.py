"""Errors in the terms of where the user is (issue 10, item 8): the CLI's message names commands,
flags and the database file; a page's (``for_page``) names what to do on the page and never a
server path or a CLI command. Neither is cut off mid-word."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core import snapshots
from core.encoders import load_encoder
from core.errors import EmbeddingsNotFoundError, EncoderUnavailableError, RepLensError
from core.store import Store

CLI_WORDS = re.compile(r"python -m core|(?<![.\w])replens [a-z]|(?<![\w-])--[a-z]")


def page_safe(message: str, server_paths: list[str]) -> None:
    assert not CLI_WORDS.search(message), message
    for path in server_paths:
        assert path not in message, message


def test_the_base_error_keeps_one_message_unless_given_two() -> None:
    plain = RepLensError("do X")
    assert str(plain) == plain.for_page() == "do X"
    both = RepLensError("run `replens x --y`", page_message="click X")
    assert str(both) == "run `replens x --y`" and both.for_page() == "click X"


def test_snapshot_not_found(store: Store) -> None:
    with pytest.raises(snapshots.SnapshotNotFoundError) as caught:
        snapshots.resolve_snapshot_id(store, "deadbeef")
    assert "python -m core snapshot list" in str(caught.value) and str(store.path) in str(caught.value)
    page_safe(caught.value.for_page(), [str(store.path), str(store.path.parent)])
    assert "Snapshots page" in caught.value.for_page()


def test_missing_embeddings(ingested: tuple) -> None:
    store = ingested[0]
    with pytest.raises(EmbeddingsNotFoundError) as caught:
        store.load_embeddings("d", "pixels@v1/pixels/none")
    assert "python -m core embed" in str(caught.value)
    page_safe(caught.value.for_page(), [str(store.path)])
    assert "Data page" in caught.value.for_page()


def test_an_offline_hub_encoder_says_so_whole(tmp_path: Path) -> None:
    # conftest makes the hub offline with empty caches: the hub loader fails as on an air-gapped box.
    with pytest.raises(EncoderUnavailableError) as caught:
        load_encoder("dinov2-vits14", "cpu")
    cause = caught.value.__cause__
    assert cause is not None
    assert f"{type(cause).__name__}: {cause}" in str(caught.value)  # the whole cause, not its first 200 characters
    assert "--weights FILE" in str(caught.value)
    page = caught.value.for_page()
    page_safe(page, [str(tmp_path)])
    assert "offline encoder" in page and "opennsfw-resnet50" in page and "local weights file" in page
    assert "/" not in page.replace("DINOv2 ViT-S/14", "")  # no file-system path of the server


def test_a_dead_snapshot_link_on_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    db = tmp_path / "served" / "replens.duckdb"
    monkeypatch.setenv("REPLENS_DB", str(db))
    monkeypatch.setenv("REPLENS_CACHE", str(tmp_path / "served" / "cache"))
    Store(db, tmp_path / "served" / "cache").close()
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "snapshots.py"), default_timeout=60)
    at.query_params["snapshot"] = "deadbeef"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    shown = [e.value for e in at.error]
    assert len(shown) == 1 and "No snapshot 'deadbeef' here" in shown[0]
    page_safe(shown[0], [str(db), str(tmp_path)])


def test_the_data_overview_names_uploads_not_server_paths(store: Store, tmp_path: Path) -> None:
    from conftest import png_bytes
    from core.datasets import ingest_path
    from core.uploads import shown_sources, upload_dir

    uploaded = upload_dir(store, "up") / "cats"
    uploaded.mkdir(parents=True)
    (uploaded / "a.png").write_bytes(png_bytes(1, 16))
    ingest_path(store, "up", upload_dir(store, "up"))
    elsewhere = tmp_path / "served-folder" / "dogs"
    elsewhere.mkdir(parents=True)
    (elsewhere / "b.png").write_bytes(png_bytes(2, 16))
    ingest_path(store, "up", elsewhere.parent, add=True)
    sources = "; ".join(store.dataset_sources("up"))
    shown = shown_sources(store, sources)
    assert "uploaded (up)" in shown and str(store.cache_dir) not in shown
    assert str(elsewhere.parent) in shown  # a server path the user typed is theirs to see
