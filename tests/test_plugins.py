"""Third-party plug-ins: a real distribution, installed with pip into a temporary site, is found
through its entry points by the same registries the built-ins use — in the CLI, the `replens`
console script, an embedding run and the Data page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_ID = "mean-colour-demo"

PLUGIN_MODULE = '''
"""A tiny RepLens encoder plug-in: the mean and spread of each colour channel (6-d)."""
import numpy as np

from core.encoders import EncoderSpec, PixelsEncoder, register_encoder


class MeanColourEncoder(PixelsEncoder):
    def embed_batch(self, batch):
        # batch: (n, 3, H, W) channels first, as every RepLens encoder receives it.
        pixels = np.asarray(batch, dtype=np.float32).reshape(len(batch), 3, -1)
        return np.concatenate([pixels.mean(axis=2), pixels.std(axis=2)], axis=1)


@register_encoder(EncoderSpec(
    id="{id}", version="1.0", name="Mean colour (plug-in demo)", family="baseline", source="plugin",
    dim=6, input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), licence="MIT", needs_network=False,
    architecture="none", layers=("pixels",), default_layer="pixels", poolings=("none",),
    default_pooling="none", crop_pct=1.0, interpolation="area",
))
def load(spec, device, layer, pooling, weights):
    return MeanColourEncoder(spec, "cpu", layer, pooling)
'''.replace("{id}", PLUGIN_ID)

PYPROJECT = f"""
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "replens-mean-colour"
version = "1.0"

[project.entry-points."replens.encoders"]
{PLUGIN_ID} = "replens_mean_colour"

[tool.setuptools]
py-modules = ["replens_mean_colour"]
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plug-in built and installed by pip into a fresh --target folder (no index, no network)."""
    base = tmp_path_factory.mktemp("plugin")
    src, site = base / "src", base / "site"
    src.mkdir()
    (src / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (src / "replens_mean_colour.py").write_text(PLUGIN_MODULE)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert list(site.glob("replens_mean_colour-1.0.dist-info/entry_points.txt"))
    return site


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return env


def _run(cmd: list[str], site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=_env(site), capture_output=True, text=True, timeout=300)


def test_the_cli_lists_the_plugin_encoder(plugin_site: Path) -> None:
    listed = _run([sys.executable, "-m", "core", "encoders", "--json"], plugin_site)
    assert listed.returncode == 0, listed.stderr
    encoders = json.loads(listed.stdout)
    ids = [e["id"] for e in (encoders["encoders"] if isinstance(encoders, dict) else encoders)]
    assert PLUGIN_ID in ids and "pixels" in ids  # plug-ins join the built-ins, they do not replace them


def test_without_the_plugin_it_is_not_listed() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "core", "encoders", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    assert PLUGIN_ID not in listed.stdout


def test_the_console_script_sees_it_and_embeds_with_it(plugin_site: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("replens")
    assert script.is_file(), "the replens console script is installed by `make venv` (pip install -e .)"
    listed = _run([str(script), "encoders", "--json"], plugin_site)
    assert listed.returncode == 0, listed.stderr
    assert PLUGIN_ID in listed.stdout

    from PIL import Image

    folder = tmp_path / "imgs" / "reds"
    folder.mkdir(parents=True)
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    for i, colour in enumerate(colours):
        Image.new("RGB", (20, 20), colour).save(folder / f"{i}.png")
    assert _run([str(script), "ingest", str(tmp_path / "imgs"), "--dataset", "p"], plugin_site).returncode == 0
    embedded = _run([str(script), "embed", "--dataset", "p", "--encoder", PLUGIN_ID, "--json"], plugin_site)
    assert embedded.returncode == 0, embedded.stderr
    assert json.loads(embedded.stdout)["encoded"] == 3
    out = tmp_path / "vectors.parquet"
    exported = _run([str(script), "export", "--dataset", "p", "--encoder", PLUGIN_ID, "--out", str(out)], plugin_site)
    assert exported.returncode == 0, exported.stderr
    import pandas as pd

    frame = pd.read_parquet(out)
    assert set(frame["encoder_key"]) == {f"{PLUGIN_ID}@1.0/pixels/none"}
    vectors = np.stack(frame.sort_values("rel_path")["vector"].to_numpy())
    # Flat colour images: the channel means are the colours (0-1 scale), the spreads zero.
    np.testing.assert_allclose(vectors[:, :3] * 255, colours, atol=1.0)
    np.testing.assert_allclose(vectors[:, 3:], 0, atol=1e-5)


def test_the_data_page_offers_and_runs_the_plugin_encoder(
    plugin_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from core import config, encoders, images, registry
    from core.store import Store

    folder = tmp_path / "imgs" / "greens"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (20, 20), (10, 100 + 50 * i, 10)).save(folder / f"{i}.png")
    store = Store(config.db_path(), config.cache_dir())
    scan = images.scan(tmp_path / "imgs", cache_dir=store.cache_dir)
    store.ingest("g", scan.root, scan.records, scan.skipped)
    store.close()

    monkeypatch.syspath_prepend(str(plugin_site))
    registry.reload_plugins()
    try:
        assert PLUGIN_ID in [s.id for s in encoders.list_encoders()]
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        picker = at.selectbox(key="encoder_id")
        assert "Mean colour (plug-in demo) · offline" in picker.options  # options show formatted names
        picker.set_value(PLUGIN_ID).run()
        assert "Mean colour (plug-in demo)" in " ".join(m.value for m in at.markdown)
        at.button(key="extract").click().run()
        from test_app import finish_jobs

        finish_jobs(at)
        assert not at.exception, [e.message for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        store = Store(config.db_path(), config.cache_dir())
        try:
            _, vectors = store.load_embeddings("g", f"{PLUGIN_ID}@1.0/pixels/none")
        finally:
            store.close()
        assert vectors.shape == (2, 6)
    finally:
        encoders.unregister_encoder(PLUGIN_ID)
    assert PLUGIN_ID not in [s.id for s in encoders.list_encoders()]
