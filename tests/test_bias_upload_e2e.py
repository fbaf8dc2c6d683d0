"""The Bias page's "upload four stimulus folders" path in a real browser, on an empty RepLens.

Four folders go through the page's four directory inputs; the page stores them as a dataset
with one sub-folder per role, embeds them with two encoders (the offline default and the
pixels baseline), fills X/Y/A/B, and runs the battery. The downloaded JSON table is checked
against ``core.bias.association_test`` on vectors this test computes itself from the files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core import bias
from core.datasets import ingest_path
from core.encoders import DEFAULT_ENCODER, load_encoder
from core.images import decode_rgb
from core.store import Store
from tests.browser import browser_page, settle, streamlit_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "bias-upload"
TIMEOUT_MS = 120_000
PER_SET = 6
# Role -> (folder name, base colour): reddish targets vs bluish targets, red vs blue attributes.
SETS = {
    "x": ("roses", (200, 40, 50)),
    "y": ("violets", (60, 50, 190)),
    "a": ("warm", (230, 30, 30)),
    "b": ("cool", (30, 30, 230)),
}


def _make_folders(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    folders = {}
    for role, (name, colour) in SETS.items():
        folder = root / role / name  # the picked folder is `name`; the parent only keeps them apart
        folder.mkdir(parents=True)
        for i in range(PER_SET):
            img = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(200, 256, 3)))
            jitter = rng.integers(-25, 26, 3)
            fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
            ImageDraw.Draw(img).ellipse([8 + i, 8, 56 - i % 3, 56], fill=fill)
            img.save(folder / f"{name}_{i}.png")
        folders[role] = folder
    return folders


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A RepLens holding one unrelated dataset, 'photos' (not embedded)."""
    base = tmp_path_factory.mktemp("bias_upload")
    photos = base / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(photos / "green.png")
    store = Store(base / "db" / "replens.duckdb", base / "cache")
    try:
        ingest_path(store, "photos", photos)
    finally:
        store.close()
    with streamlit_server(base / "db" / "replens.duckdb", base / "cache", base / "server.log") as url:
        yield url


def _expected(folders: dict[str, Path], encoder_id: str) -> bias.AssociationResult:
    encoder = load_encoder(encoder_id, "cpu")
    sets = {}
    for role, folder in folders.items():
        files = sorted(folder.glob("*.png"))
        sets[role] = encoder.embed_batch(np.stack([encoder.preprocess(decode_rgb(f.read_bytes())) for f in files]))
    return bias.association_test(sets["x"], sets["y"], sets["a"], sets["b"], n_samples=10_000, seed=0)


def test_four_uploaded_folders_run_across_two_encoders(server: str, tmp_path: Path) -> None:
    folders = _make_folders(tmp_path / "upload")
    started = time.monotonic()
    with browser_page(width=1400, height=1600, timeout_ms=TIMEOUT_MS) as page:
        page.goto(f"{server}/bias")
        page.get_by_role("heading", name="Bias").wait_for()
        settle(page)
        page.get_by_text("Upload four stimulus folders").click()  # collapsed: a dataset exists already
        settle(page)
        inputs = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
        inputs.nth(3).wait_for(state="attached")
        for index, role in enumerate(("x", "y", "a", "b")):
            inputs.nth(index).set_input_files(str(folders[role]))
            settle(page)
        encoders = page.get_by_role("combobox", name="Embed with").first
        encoders.click()
        encoders.fill("pixels")
        page.get_by_role("option", name="pixels", exact=True).first.click()
        page.keyboard.press("Escape")
        settle(page)
        # Into an existing dataset of other images: refused, nothing mixed in.
        name = page.get_by_role("textbox", name="Dataset name")
        name.fill("photos")
        page.keyboard.press("Enter")
        settle(page)
        page.get_by_role("button", name="Add stimuli").click()
        page.get_by_text("A dataset named 'photos' already holds other images").wait_for()
        name.fill("stimuli")
        page.keyboard.press("Enter")
        settle(page)
        page.get_by_role("button", name="Add stimuli").click()
        page.get_by_text(f"stimuli: {4 * PER_SET} stimuli in roses, violets, warm, cool").wait_for()
        settle(page)
        for label, folder in (
            ("Target X", "roses"),
            ("Target Y", "violets"),
            ("Attribute A", "warm"),
            ("Attribute B", "cool"),
        ):
            box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
            shown = box.inner_text() + " " + box.locator("input").first.input_value()
            assert folder in shown, (label, shown, box.inner_html()[:2000])
        page.get_by_role("button", name="Add test to battery").click()
        settle(page)
        page.get_by_role("button", name="Run battery").click()
        page.get_by_role("heading", name="3 · Results").wait_for()
        settle(page)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "results.png"), full_page=True)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download JSON").click()
        rows = json.loads(Path(download.value.path()).read_text())
    assert time.monotonic() - started < 240

    by_encoder = {row["encoder"].split("@")[0]: row for row in rows}
    assert set(by_encoder) == {DEFAULT_ENCODER, "pixels"}
    for encoder_id, row in by_encoder.items():
        want = _expected(folders, encoder_id)
        assert row["n_x"] == row["n_y"] == row["n_a"] == row["n_b"] == PER_SET
        assert row["effect_size"] == pytest.approx(want.effect_size, abs=1e-5)
        assert row["p_value"] == pytest.approx(want.p_value, abs=1e-12)
        assert row["exact"] is True and want.exact  # C(12, 6) = 924 partitions, enumerated
    assert by_encoder["pixels"]["effect_size"] > 1.0  # red targets sit with red attributes
