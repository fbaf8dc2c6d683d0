"""`replens stimuli`: four local folders become one iEAT dataset from the command line, and
`replens bias` then tests exactly those sets (sizes checked against the folders themselves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import png_bytes
from core import bias, config
from core.cli import main
from core.encoders import load_encoder
from core.store import Store

# role -> (folder name, images)
SETS = {"x": ("roses", 3), "y": ("violets", 4), "a": ("warm", 2), "b": ("cool", 5)}


def make_folders(root: Path) -> dict[str, Path]:
    folders, seed = {}, 100
    for role, (name, n) in SETS.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i}.png").write_bytes(png_bytes(seed, 16))
            seed += 1
        folders[role] = folder
    (root / "violets" / "broken.png").write_bytes(b"not an image")  # skipped, never counted
    return folders


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_stimuli_then_bias_on_exactly_those_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = make_folders(tmp_path / "picked")
    args = [f"--{role}={folder}" for role, folder in folders.items()]
    out = run_json(capsys, "stimuli", "--dataset", "flowers", *args, "--encoder", "pixels")
    assert out["folders"] == {role: name for role, (name, _) in SETS.items()}
    assert out["role_counts"] == {role: n for role, (_, n) in SETS.items()}
    assert out["skipped"] == 1 and out["encoders"] == ["pixels@v1/pixels/none"]

    result = run_json(
        capsys,
        "bias",
        "--dataset",
        "flowers",
        "--encoder",
        "pixels",
        *[f"--{role}={name}" for role, (name, _) in SETS.items()],
    )
    assert {role: s["n"] for role, s in result["sets"].items()} == {role: n for role, (_, n) in SETS.items()}
    # The effect size, recomputed here from the images on disk through the same encoder.
    encoder = load_encoder("pixels", "cpu")

    def vectors(folder: Path) -> np.ndarray:
        from PIL import Image

        files = sorted(p for p in folder.glob("*.png") if p.name != "broken.png")
        return encoder.embed_batch(np.stack([encoder.preprocess(Image.open(p).convert("RGB")) for p in files]))

    X, Y, A, B = (vectors(folders[r]) for r in "xyab")
    expected = bias.association_test(X, Y, A, B, n_samples=10_000, seed=0)
    assert result["effect_size"] == pytest.approx(expected.effect_size, rel=1e-5)


def test_stimuli_refuses_mixing_into_a_dataset_of_other_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other" / "misc"
    other.mkdir(parents=True)
    (other / "x.png").write_bytes(png_bytes(1, 16))
    assert main(["ingest", str(tmp_path / "other"), "--dataset", "flowers"]) == 0
    folders = make_folders(tmp_path / "picked")
    capsys.readouterr()
    code = main(["stimuli", "--dataset", "flowers", *[f"--{r}={f}" for r, f in folders.items()], "--encoder", "pixels"])
    assert code == 2
    assert "already holds other images" in capsys.readouterr().err
    store = Store(config.db_path(), config.cache_dir())
    try:
        assert len(store.dataset_paths("flowers")) == 1  # nothing was added
    finally:
        store.close()


def test_a_missing_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = make_folders(tmp_path / "picked")
    folders["b"] = tmp_path / "nope"
    code = main(["stimuli", "--dataset", "f2", *[f"--{r}={f}" for r, f in folders.items()], "--encoder", "pixels"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_bias_cli_sets_are_exact_folder_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = {"a": 2, "a/sub": 1, "b": 2, "c": 2, "d": 2, "other/a": 3}  # "other/a" shares a's name only
    seed = 300
    for folder, n in layout.items():
        (tmp_path / "ds" / folder).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "ds" / folder / f"{i}.png").write_bytes(png_bytes(seed, 16))
            seed += 1
    assert main(["ingest", str(tmp_path / "ds"), "--dataset", "nested"]) == 0
    assert main(["embed", "--dataset", "nested", "--encoder", "pixels"]) == 0
    capsys.readouterr()
    sets = ["--x=a", "--y=b", "--a=c", "--b=d"]
    with_sub = run_json(capsys, "bias", "--dataset", "nested", "--encoder", "pixels", *sets)
    only = run_json(capsys, "bias", "--dataset", "nested", "--encoder", "pixels", *sets, "--no-subfolders")
    assert with_sub["sets"]["x"]["n"] == 3 and only["sets"]["x"]["n"] == 2  # never other/a's 3 images
    assert [with_sub["sets"][r]["n"] for r in "yab"] == [2, 2, 2]
    code = main(["bias", "--dataset", "nested", "--encoder", "pixels", "--x=a", "--y=a/sub", "--a=c", "--b=d"])
    assert code == 2 and "share" in capsys.readouterr().err.lower()  # a contains a/sub: overlapping targets
