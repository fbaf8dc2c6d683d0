"""Issue 10 item 8: a hub encoder on a server without network, given a local weights file on the
Data page (the page's counterpart of the CLI's ``--weights FILE``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app import finish_jobs

from core import encoders, images
from core.encoders import load_encoder
from core.errors import InvalidInputError
from core.extract import embed_images
from core.store import Store
from core.weights import save_weights, saved_weights

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
HUB_ID = "dino-vits16"
WEIGHTS_KEY = "rl_weights"  # pages/data.py: encoder id -> (saved path, uploaded name, upload id)


def random_hub_weights() -> bytes:
    """A random-init checkpoint in the format dino-vits16's hub serves (as tests/test_encoders.py makes it)."""
    import timm
    from safetensors.torch import save

    spec = encoders.get_spec(HUB_ID)
    assert spec.needs_network and spec.source.startswith("timm:")
    torch.manual_seed(0)
    model = timm.create_model(spec.source.removeprefix("timm:").split(".")[0], pretrained=False, num_classes=0)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def hub_weights() -> bytes:
    return random_hub_weights()


def test_save_weights_keeps_the_file_by_content_under_the_cache(tmp_path: Path, hub_weights: bytes) -> None:
    cache = tmp_path / "cache"
    path = save_weights(cache, "../../etc/My DINO.SafeTensors", hub_weights)
    assert path == cache / "weights" / f"{hashlib.sha256(hub_weights).hexdigest()}.safetensors"
    assert path.read_bytes() == hub_weights
    assert save_weights(cache, "again.safetensors", hub_weights) == path  # same bytes, one file
    assert [p.name for p in (cache / "weights").iterdir()] == [path.name]  # no temporary file left
    assert saved_weights(cache, path) == path
    assert saved_weights(cache, tmp_path / "elsewhere.safetensors") is None
    assert saved_weights(cache, cache / "weights" / "gone.safetensors") is None
    with pytest.raises(InvalidInputError, match="not a weights file"):
        save_weights(cache, "notes.txt", b"hello")
    with pytest.raises(InvalidInputError, match="empty"):
        save_weights(cache, "w.pth", b"")


def test_a_hub_encoder_extracts_offline_from_a_weights_file_given_on_the_page(
    tmp_path: Path, isolated_env: dict[str, str], hub_weights: bytes
) -> None:
    # The dataset, in the store the app opens (conftest: empty hub caches, hub offline).
    rng = np.random.default_rng(3)
    src = tmp_path / "pics"
    for i in range(5):
        (src / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(src / "a" / f"p{i}.png")
    store = Store(isolated_env["REPLENS_DB"], isolated_env["REPLENS_CACHE"])
    scan = images.scan(src, cache_dir=store.cache_dir)
    store.ingest("pics", scan.root, scan.records, scan.skipped)
    store.close()

    # Without a file the hub encoder cannot load here: the page says so and stores nothing.
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.selectbox(key="encoder_id").set_value(HUB_ID).run()
    at.button(key="extract").click().run()
    finish_jobs(at)
    assert not at.exception
    assert at.error and "weights file" in at.error[0].value
    assert "--weights" not in at.error[0].value

    # What the uploader does with a file (AppTest cannot drive st.file_uploader): save it, then
    # remember it for this encoder in the session.
    saved = save_weights(isolated_env["REPLENS_CACHE"], "dino_vits16.safetensors", hub_weights)
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state[WEIGHTS_KEY] = {HUB_ID: (str(saved), "dino_vits16.safetensors", "upload-1")}
    at.run()
    at.selectbox(key="encoder_id").set_value(HUB_ID).run()
    assert any("dino_vits16.safetensors" in c.value for c in at.caption)
    at.selectbox(key=f"precision_{HUB_ID}").set_value("fp32").run()
    at.button(key="extract").click().run()
    finish_jobs(at, timeout=300)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert "5 embedded" in at.success[0].value

    # Stored under the key of the file (its version names the file), equal to a direct load of it.
    direct = load_encoder(HUB_ID, "cpu", weights=saved)
    assert "+file-" in direct.key and direct.key.startswith(f"{HUB_ID}@{encoders.get_spec(HUB_ID).version}+file-")
    store = Store()
    try:
        assert store.embedded_keys("pics") == [direct.key]
        frame, vectors = store.load_embeddings("pics", direct.key)
        expected = embed_images(direct, [(Path(scan.root) / rel).read_bytes() for rel in frame["rel_path"]])
        np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
        assert store.last_encoder_key("pics") == direct.key
    finally:
        store.close()

    # The file stays chosen for this encoder until the user goes back to the hub.
    assert any("dino_vits16.safetensors" in c.value for c in at.caption)
    at.button(key=f"weights_clear_{HUB_ID}").click().run()
    assert not at.exception
    assert not any("dino_vits16.safetensors" in c.value for c in at.caption)
    assert HUB_ID not in at.session_state[WEIGHTS_KEY]

    # A query image is embedded into the same space: the key's encoder is loaded with the same file.
    from ui import resources

    assert resources.query_encoder(direct.key).key == direct.key
