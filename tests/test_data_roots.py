"""The Data page's server-path box reads only inside the configured data roots (issue 11).

``core.roots.check_server_path`` resolves ``~``, ``..`` and every symlink before comparing, with
real folders and real symlinks under tmp_path; the page shows its typed error and creates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import build_folder
from core.config import data_roots
from core.errors import DataRootsNotConfiguredError, InvalidInputError, OutsideDataRootsError
from core.roots import check_server_path
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A data root holding an image folder, and an image folder outside it."""
    root, outside = tmp_path / "data", tmp_path / "private"
    build_folder(root / "pets")
    build_folder(outside, seed0=50)
    return {"root": root, "pets": root / "pets", "outside": outside}


@pytest.fixture
def roots_env(monkeypatch: pytest.MonkeyPatch, layout: dict[str, Path]) -> Path:
    monkeypatch.setenv("REPLENS_DATA_ROOTS", str(layout["root"]))
    for name in ("REPLENS_PASSWORD", "REPLENS_PASSWORD_HASH"):
        monkeypatch.delenv(name, raising=False)
    return layout["root"]


# --------------------------------------------------------------------------- core


def test_data_roots_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REPLENS_DATA_ROOTS", raising=False)
    assert data_roots() == []
    a, b = tmp_path / "a", tmp_path / "b"
    (tmp_path / "link").symlink_to(b, target_is_directory=True)
    monkeypatch.setenv("REPLENS_DATA_ROOTS", os.pathsep.join([str(a), "", str(tmp_path / "link"), str(a) + "/"]))
    assert data_roots() == [a.resolve(), b.resolve()]  # resolved, empty parts and repeats dropped


def test_paths_inside_a_root_are_allowed(layout: dict[str, Path]) -> None:
    root = layout["root"]
    assert check_server_path(str(layout["pets"]), [root]) == layout["pets"].resolve()
    assert check_server_path(f"  {root}  ", [root]) == root.resolve()
    assert check_server_path(root / "pets" / "cats" / ".." / "dogs", [root]) == (root / "pets" / "dogs").resolve()
    assert check_server_path(root / "not-yet", [root]) == (root / "not-yet").resolve()  # the scan says it is missing
    inner = root / "shortcut"
    inner.symlink_to(layout["pets"] / "cats", target_is_directory=True)
    assert check_server_path(inner, [root]) == (layout["pets"] / "cats").resolve()


def test_a_root_given_through_a_symlink_is_compared_resolved(layout: dict[str, Path], tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(layout["root"], target_is_directory=True)
    assert check_server_path(layout["pets"], [alias]) == layout["pets"].resolve()
    assert check_server_path(alias / "pets", [layout["root"]]) == layout["pets"].resolve()


def test_a_path_outside_every_root_is_refused(layout: dict[str, Path]) -> None:
    with pytest.raises(OutsideDataRootsError) as err:
        check_server_path(layout["outside"], [layout["root"]])
    assert str(layout["root"].resolve()) in str(err.value)  # the CLI-side message names the roots
    assert str(layout["root"]) not in err.value.for_page()  # the page's does not
    with pytest.raises(OutsideDataRootsError):
        check_server_path("/etc", [layout["root"]])


def test_dot_dot_cannot_escape_a_root(layout: dict[str, Path]) -> None:
    root = layout["root"]
    for sneaky in (f"{root}/../private", f"{root}/pets/../../private", f"{root}/nope/../../private/cats"):
        with pytest.raises(OutsideDataRootsError):
            check_server_path(sneaky, [root])


def test_a_symlink_cannot_escape_a_root(layout: dict[str, Path]) -> None:
    root = layout["root"]
    (root / "door").symlink_to(layout["outside"], target_is_directory=True)
    (root / "etc").symlink_to("/etc", target_is_directory=True)
    (root / "pets" / "up").symlink_to(layout["root"].parent, target_is_directory=True)
    for sneaky in (root / "door", root / "door" / "cats", root / "etc", root / "pets" / "up" / "private"):
        with pytest.raises(OutsideDataRootsError):
            check_server_path(sneaky, [root])


def test_a_sibling_with_the_root_as_name_prefix_is_outside(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data-private").mkdir()
    with pytest.raises(OutsideDataRootsError):
        check_server_path(tmp_path / "data-private", [tmp_path / "data"])


def test_any_of_several_roots_will_do(layout: dict[str, Path]) -> None:
    roots = [layout["root"], layout["outside"]]
    assert check_server_path(layout["outside"] / "cats", roots) == (layout["outside"] / "cats").resolve()


def test_no_root_configured_refuses_and_says_how_to_enable(monkeypatch: pytest.MonkeyPatch, layout: dict) -> None:
    monkeypatch.delenv("REPLENS_DATA_ROOTS", raising=False)
    with pytest.raises(DataRootsNotConfiguredError) as err:
        check_server_path(layout["pets"])
    assert "REPLENS_DATA_ROOTS" in str(err.value) and "REPLENS_DATA_ROOTS" in err.value.for_page()


@pytest.mark.parametrize("text", ["", "   ", "pets", "./pets", "a\x00b"])
def test_relative_or_empty_paths_are_refused(layout: dict[str, Path], text: str) -> None:
    with pytest.raises(InvalidInputError):
        check_server_path(text, [layout["root"]])


def test_a_symlink_loop_is_refused_with_a_message(layout: dict[str, Path]) -> None:
    root = layout["root"]
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    with pytest.raises(InvalidInputError, match="cannot be followed"):
        check_server_path(root / "a" / "x", [root])


# --------------------------------------------------------------------------- the Data page


def data_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def scan(at: AppTest, path: str, name: str) -> AppTest:
    at.text_input(key="server_path").set_value(path).run()
    at.text_input(key="server_path_name").set_value(name).run()
    at.button(key="add_path").click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def dataset_names() -> list[str]:
    store = Store()
    try:
        return store.dataset_names()
    finally:
        store.close()


def test_without_roots_the_tab_explains_and_the_box_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLENS_DATA_ROOTS", raising=False)
    at = data_page()
    assert any("REPLENS_DATA_ROOTS" in i.value and "upload" in i.value for i in at.info)
    assert at.text_input(key="server_path").disabled
    assert at.button(key="add_path").disabled


def test_etc_is_refused_on_the_page_and_creates_no_dataset(roots_env: Path) -> None:
    at = data_page()
    assert not at.text_input(key="server_path").disabled
    assert any(str(roots_env.resolve()) in c.value for c in at.caption)  # the tab names what it may read
    at = scan(at, "/etc", "etc")
    assert not at.success
    assert len(at.error) == 1 and "outside the folders" in at.error[0].value
    assert "/etc" not in at.error[0].value
    assert at.get("progress") == []
    assert dataset_names() == []


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_escapes_are_refused_on_the_page(roots_env: Path, layout: dict[str, Path], how: str) -> None:
    if how == "symlink":
        (roots_env / "door").symlink_to(layout["outside"], target_is_directory=True)
        path = str(roots_env / "door")
    else:
        path = f"{roots_env}/pets/../../private"
    at = scan(data_page(), path, "sneaky")
    assert not at.success and len(at.error) == 1 and "outside the folders" in at.error[0].value
    assert dataset_names() == []


def test_a_folder_inside_the_root_is_scanned(roots_env: Path, layout: dict[str, Path]) -> None:
    at = scan(data_page(), str(layout["pets"]), "pets")
    assert not at.error and "**pets**: 8 added" in at.success[0].value
    assert dataset_names() == ["pets"]
