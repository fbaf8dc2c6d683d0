"""core.stimuli: four stimulus folders become one dataset with a sub-folder per role, embedded,
on real PNG folders and a real DuckDB store (what the Bias page's upload and the CLI share)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import png_bytes
from core import stimuli
from core.bias_runs import folder_hashes
from core.datasets import ingest_path
from core.errors import InvalidInputError
from core.store import Store
from core.uploads import upload_dir

PIXELS_KEY = "pixels@v1/pixels/none"
# role -> (the folder the user picks, images in it)
SETS = {"x": ("roses", 3), "y": ("violets", 4), "a": ("warm", 2), "b": ("cool", 5)}


def make_folders(root: Path) -> dict[str, Path]:
    """Four folders of distinct PNGs (and one caption each), as a user would pick them."""
    folders, seed = {}, 0
    for role, (name, n) in SETS.items():
        folder = root / role / name
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{name}_{i}.png").write_bytes(png_bytes(seed, 16))
            seed += 1
        (folder / f"{name}_0.txt").write_text(f"a {name} picture")
        (folder / ".DS_Store").write_bytes(b"junk")  # hidden: never copied
        folders[role] = folder
    return folders


def as_uploads(folders: dict[str, Path]) -> dict[str, list[tuple[str, bytes]]]:
    """The (name, bytes) pairs a browser's folder upload sends: "<picked folder>/<file>"."""
    return {
        role: [
            (f"{folder.name}/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir()) if not p.name.startswith(".")
        ]
        for role, folder in folders.items()
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "db" / "replens.duckdb", tmp_path / "cache")
    yield s
    s.close()


def assert_one_subfolder_per_role(store: Store, added: stimuli.StimulusIngest) -> None:
    paths = store.dataset_paths(added.dataset)
    assert set(paths["source"]) == {str(upload_dir(store, added.dataset).resolve())}
    assert sorted({tuple(labels) for labels in paths["labels"]}) == sorted((f,) for f in added.folders.values())
    for role, (_, n) in SETS.items():
        assert added.role_counts[role] == n == len(folder_hashes(paths, added.folders[role]))
    assert added.n_paths == len(paths) == sum(n for _, n in SETS.values())


def test_uploaded_folders_become_a_dataset_with_a_subfolder_per_role(
    store: Store, tmp_path: Path, pixels_encoder: object
) -> None:
    seen: list[tuple[str, int, int]] = []
    added = stimuli.ingest_stimulus_folders(
        store,
        "stimuli",
        as_uploads(make_folders(tmp_path / "up")),
        [pixels_encoder],
        progress=lambda *a: seen.append(a),
    )
    assert added.folders == {role: name for role, (name, _) in SETS.items()}
    assert_one_subfolder_per_role(store, added)
    assert added.encoder_keys == [PIXELS_KEY] and added.refused == [] and added.n_skipped == 0
    frame, vectors = store.load_embeddings("stimuli", PIXELS_KEY)
    assert len(frame) == vectors.shape[0] == sum(n for _, n in SETS.values())
    caption = store.dataset_paths("stimuli").set_index("rel_path").loc["roses/roses_0.png", "caption"]
    assert caption == "a roses picture"
    stages = [s for s, _, _ in seen]
    assert stages[0] == stimuli.SCAN_STAGE and stages[-1] == "pixels"
    assert seen[-1][1] == seen[-1][2] == len(frame)


def test_four_local_folders_and_encoder_ids(store: Store, tmp_path: Path) -> None:
    """The CLI's form: folder paths, and encoder ids loaded by the default loader."""
    folders = make_folders(tmp_path / "local")
    (folders["b"] / "deeper").mkdir()
    (folders["b"] / "deeper" / "notes.md").write_text("not an image type: left out")
    added = stimuli.ingest_stimulus_folders(store, "stimuli", {r: str(f) for r, f in folders.items()}, ["pixels"])
    assert_one_subfolder_per_role(store, added)
    assert added.encoder_keys == [PIXELS_KEY]
    saved = sorted(
        p.relative_to(upload_dir(store, "stimuli")).as_posix()
        for p in upload_dir(store, "stimuli").rglob("*")
        if p.is_file()
    )
    assert "cool/.DS_Store" not in saved and not any(s.endswith(".md") for s in saved)
    assert len([s for s in saved if s.endswith(".png")]) == added.n_paths
    # Adding the same stimuli again changes nothing (the dataset holds only them).
    again = stimuli.ingest_stimulus_folders(store, "stimuli", folders, ["pixels"])
    assert again.role_counts == added.role_counts and again.n_paths == added.n_paths


def test_refuses_to_mix_stimuli_into_a_dataset_of_other_images(store: Store, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "green.png").write_bytes(png_bytes(99, 16))
    ingest_path(store, "photos", photos)
    with pytest.raises(InvalidInputError, match="A dataset named 'photos' already holds other images"):
        stimuli.ingest_stimulus_folders(store, "photos", make_folders(tmp_path / "up"), ["pixels"])
    assert len(store.dataset_paths("photos")) == 1
    assert not upload_dir(store, "photos").exists()  # nothing was saved either


def test_clashing_missing_and_nested_folder_names(store: Store, tmp_path: Path) -> None:
    """Two roles picked from folders of one name, loose files, sub-folders inside a role."""
    pngs = iter(png_bytes(seed, 16) for seed in range(100))
    uploads = {
        "x": [("flowers/a.png", next(pngs)), ("flowers/b.png", next(pngs))],
        "y": [("Flowers/c.png", next(pngs))],  # same name as x's, case aside
        "a": [("loose.png", next(pngs))],  # no folder at all
        "b": [("cool/deep/er/d.png", next(pngs)), ("cool/e.png", next(pngs))],
    }
    added = stimuli.ingest_stimulus_folders(store, "s", uploads, ["pixels"])
    assert added.folders == {"x": "flowers", "y": "Y", "a": "A", "b": "cool"}
    assert added.role_counts == {"x": 2, "y": 1, "a": 1, "b": 2}
    paths = sorted(store.dataset_paths("s")["rel_path"])
    assert paths == [
        "A/loose.png",
        "Y/c.png",
        "cool/deep__er__d.png",
        "cool/e.png",
        "flowers/a.png",
        "flowers/b.png",
    ]  # a role's own sub-folders are folded into the file name


def test_unsafe_names_are_refused_and_reported(store: Store, tmp_path: Path) -> None:
    uploads = as_uploads(make_folders(tmp_path / "up"))
    uploads["x"].append(("roses/../../../escape.png", png_bytes(500, 16)))
    added = stimuli.ingest_stimulus_folders(store, "stimuli", uploads, ["pixels"])
    assert added.refused == ["roses/..__..__..__escape.png"]  # folded into one hidden name: refused
    assert added.role_counts["x"] == 3
    assert not list(tmp_path.rglob("escape.png"))


def test_a_role_without_a_readable_image_is_named(store: Store, tmp_path: Path) -> None:
    uploads = as_uploads(make_folders(tmp_path / "up"))
    uploads["y"] = [("violets/a.png", b"not a png"), ("violets/b.txt", b"a caption only")]
    with pytest.raises(InvalidInputError, match=r"Target Y \(violets\): none of its files is a readable image"):
        stimuli.ingest_stimulus_folders(store, "stimuli", uploads, ["pixels"])
    assert store.embedded_keys("stimuli") == []  # nothing embedded before every role checks out


def test_missing_or_empty_roles_and_no_encoder_are_refused(store: Store, tmp_path: Path) -> None:
    uploads = as_uploads(make_folders(tmp_path / "up"))
    with pytest.raises(InvalidInputError, match="missing: Attribute B"):
        stimuli.ingest_stimulus_folders(store, "s", {r: f for r, f in uploads.items() if r != "b"}, ["pixels"])
    with pytest.raises(InvalidInputError, match="Target X: no image files"):
        stimuli.ingest_stimulus_folders(store, "s", {**uploads, "x": []}, ["pixels"])
    with pytest.raises(InvalidInputError, match="is not a folder"):
        stimuli.ingest_stimulus_folders(store, "s", {**uploads, "a": tmp_path / "nowhere"}, ["pixels"])
    with pytest.raises(InvalidInputError, match="at least one encoder"):
        stimuli.ingest_stimulus_folders(store, "s", uploads, [])
    with pytest.raises(InvalidInputError, match="at least one letter or digit"):
        stimuli.ingest_stimulus_folders(store, " ", uploads, ["pixels"])
    assert store.dataset_names() == []
