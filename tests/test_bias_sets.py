"""Bias folder sets are exactly the folder path picked (with or without its sub-folders), their
counts agree with the Map's, and sets that share images are refused (issue 10, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import png_bytes
from core.bias_runs import (
    TOP_LEVEL,
    BatteryTest,
    folder_counts,
    folder_hashes,
    folder_options,
    folder_test,
)
from core.datasets import ingest_path
from core.encoders import load_encoder
from core.errors import InvalidInputError
from core.extract import embed_dataset
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
# Like the demo: `vehicles` at the top and again under `military`, `cartoon` at the top and under `animals`.
LAYOUT = {
    "vehicles": 3,
    "vehicles/old": 1,
    "military/vehicles": 2,
    "military": 1,
    "cartoon": 2,
    "animals/cartoon": 4,
    "animals": 2,
    "toys/teddy": 2,  # `toys` holds images only in a sub-folder
    "": 1,  # an image at the top level
}


def _write(root: Path) -> dict[str, set[Path]]:
    files: dict[str, set[Path]] = {}
    seed = 0
    for folder, n in LAYOUT.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            path = root / folder / f"img{seed}.png"
            path.write_bytes(png_bytes(seed, 16))
            files.setdefault(folder, set()).add(path)
            seed += 1
    return files


@pytest.fixture()
def nested(tmp_path: Path) -> tuple[Store, Path]:
    root = tmp_path / "nested"
    _write(root)
    store = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    ingest_path(store, "nested", root)
    yield store, root
    store.close()


def _on_disk(root: Path, folder: str, subfolders: bool) -> set[str]:
    """The rel_paths under ``folder`` read from the file system, independently of core."""
    base = root / folder
    found = base.rglob("*.png") if subfolders else base.glob("*.png")
    return {p.relative_to(root).as_posix() for p in found}


@pytest.mark.parametrize(
    ("folder", "subfolders", "n"),
    [
        ("vehicles", True, 4),  # vehicles/ and vehicles/old/, never military/vehicles/
        ("vehicles", False, 3),
        ("military/vehicles", True, 2),
        ("military", True, 3),
        ("military", False, 1),
        ("cartoon", True, 2),  # not animals/cartoon/
        ("animals", True, 6),
        ("toys", True, 2),
        ("toys", False, 0),
        (TOP_LEVEL, True, 1),
        (TOP_LEVEL, False, 1),
    ],
)
def test_a_folder_set_is_exactly_that_path(nested: tuple[Store, Path], folder: str, subfolders: bool, n: int) -> None:
    store, root = nested
    paths = store.dataset_paths("nested")
    hashes = set(folder_hashes(paths, folder, subfolders=subfolders))
    if folder == TOP_LEVEL:
        expected = {p.name for p in root.glob("*.png")}
    else:
        expected = _on_disk(root, folder, subfolders)
    by_path = dict(zip(paths["rel_path"], paths["content_hash"]))
    assert hashes == {by_path[p] for p in expected}
    assert len(hashes) == n
    assert folder_counts(paths, subfolders=subfolders)[folder] == n


def test_options_are_full_paths_and_top_level_counts_agree_with_the_map(nested: tuple[Store, Path]) -> None:
    store, _ = nested
    paths = store.dataset_paths("nested")
    options = folder_options(paths)
    assert options == [
        TOP_LEVEL,
        "animals",
        "animals/cartoon",
        "cartoon",
        "military",
        "military/vehicles",
        "toys",
        "toys/teddy",
        "vehicles",
        "vehicles/old",
    ]
    # The Map's "By folder" legend: distinct images per outermost folder (pages/map.py, core.mapfigure).
    images = store.dataset_images("nested")
    legend = images["label"].replace("", TOP_LEVEL).value_counts().to_dict()
    counts = folder_counts(paths, subfolders=True)
    assert {f: counts[f] for f in legend} == legend


def test_same_or_overlapping_sets_are_refused(nested: tuple[Store, Path]) -> None:
    store, _ = nested
    paths = store.dataset_paths("nested")
    with pytest.raises(InvalidInputError, match=r"X \(folder vehicles \(with sub-folders\)\) and Y .* are the same 4"):
        folder_test(paths, "t", "vehicles", "vehicles", "cartoon", "animals/cartoon")
    with pytest.raises(InvalidInputError, match=r"share 1 image\(s\), e\.g\. vehicles/old/img3\.png"):
        folder_test(paths, "t", "vehicles", "vehicles/old", "cartoon", "animals/cartoon")
    with pytest.raises(InvalidInputError, match=r"A \(folder animals .*\) and B \(folder animals/cartoon"):
        folder_test(paths, "t", "vehicles", "military/vehicles", "animals", "animals/cartoon")
    # Leaving out the sub-folders makes the nested pair disjoint.
    test = folder_test(
        paths, "t", "vehicles", "vehicles/old", "animals", "animals/cartoon", subfolders={"x": False, "a": False}
    )
    assert (len(test.x), len(test.y), len(test.a), len(test.b)) == (3, 1, 2, 4)
    assert test.roles["x"] == "folder vehicles (this folder only, no sub-folders)"
    # A target shared with an attribute is refused too, and so is a hand-made test.
    with pytest.raises(InvalidInputError, match="share"):
        folder_test(paths, "t", "vehicles", "military", "vehicles/old", "cartoon")
    with pytest.raises(InvalidInputError, match="are the same"):
        BatteryTest("t", test.x, test.x, test.a, test.b)


def test_missing_folders_point_at_the_full_path(nested: tuple[Store, Path]) -> None:
    store, _ = nested
    paths = store.dataset_paths("nested")
    with pytest.raises(InvalidInputError, match=r"set Y \(folder 'old'\) has no images.*did you mean vehicles/old"):
        folder_test(paths, "t", "cartoon", "old", "animals", "military")
    with pytest.raises(InvalidInputError, match="all in sub-folders"):
        folder_test(paths, "t", "cartoon", "toys", "vehicles/old", "military/vehicles", subfolders=False)
    with pytest.raises(InvalidInputError, match=r"without \. or \.\."):
        folder_hashes(paths, "vehicles/../cartoon")


def test_bias_page_picks_exact_paths_and_refuses_x_equal_y(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pixels_encoder: object
) -> None:
    root = tmp_path / "nested"
    _write(root)
    store = Store(tmp_path / "db.duckdb", tmp_path / "cache")
    ingest_path(store, "nested", root)
    embed_dataset(store, "nested", load_encoder("pixels", "cpu"))
    store.close()
    monkeypatch.setenv("REPLENS_DB", str(tmp_path / "db.duckdb"))
    monkeypatch.setenv("REPLENS_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/bias.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    box = at.selectbox(key="w_bias_x")
    # Full paths with the image count of exactly that path (sub-folders included by default).
    # Each option shows both counts when they differ, so the text never changes with the checkbox.
    assert "vehicles (4; 3 directly)" in box.options and "military/vehicles (2)" in box.options
    assert "cartoon (2)" in box.options
    box.set_value("vehicles")
    at.selectbox(key="w_bias_y").set_value("military/vehicles")
    at.selectbox(key="w_bias_a").set_value("cartoon")
    at.selectbox(key="w_bias_b").set_value("animals/cartoon")
    at.run()
    captions = [c.value for c in at.caption]
    assert "4 images: folder vehicles (with sub-folders)" in captions
    at.checkbox(key="w_bias_x_sub").uncheck()
    at.run()
    captions = [c.value for c in at.caption]
    assert "3 images: folder vehicles (this folder only, no sub-folders)" in captions
    # The pick survives the checkbox (its option text did not change) and one more rerun.
    assert at.selectbox(key="w_bias_x").value == "vehicles"
    at.text_input(key="w_bias_name").set_value("vehicles only").run()
    assert at.selectbox(key="w_bias_x").value == "vehicles"
    at.button(key="w_bias_add").click()
    at.run()
    battery = at.session_state["rl_bias_battery"]
    assert [(len(t.x), len(t.y), len(t.a), len(t.b)) for t in battery] == [(3, 2, 2, 4)]
    # X = Y: refused with a message naming the sets, nothing added.
    at.selectbox(key="w_bias_y").set_value("vehicles")
    at.checkbox(key="w_bias_y_sub").uncheck()
    at.button(key="w_bias_add").click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("are the same 3 image(s)" in e.value for e in at.error), [e.value for e in at.error]
    assert len(at.session_state["rl_bias_battery"]) == 1
