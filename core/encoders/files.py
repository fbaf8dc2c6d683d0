"""User files as encoders: any timm architecture + local weights (``timm-file:ARCH:PATH``), any ONNX
model + output node (``onnx-file:PATH#OUTPUT``). Their spec is read from the file when loaded."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from core.encoders.adapters import OnnxEncoder, TimmCNNEncoder, TimmViTEncoder, onnx_subgraph
from core.encoders.base import BaseEncoder
from core.encoders.deps import import_package
from core.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, check_option
from core.errors import EncoderUnavailableError, InvalidInputError, UnknownEncoderError

TIMM_FILE_PREFIX = "timm-file:"
ONNX_FILE_PREFIX = "onnx-file:"
FILE_PREFIXES = (TIMM_FILE_PREFIX, ONNX_FILE_PREFIX)


def file_version(path: Path) -> str:
    """Identity of a weights file: its size and a hash of its head and tail (fast on GB files)."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=8)
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return f"file-{size}-{digest.hexdigest()}"


def load_timm_file(encoder_id: str, device: str, layer: str | None, pooling: str | None) -> BaseEncoder:
    match = re.fullmatch(r"timm-file:([^:]+):(.+)", encoder_id)
    if not match:
        raise InvalidInputError(
            f"{encoder_id!r}: write timm-file:ARCHITECTURE:PATH, e.g. timm-file:resnet50:/w/r50.safetensors"
        )
    arch, path = match.group(1), Path(match.group(2)).expanduser()
    if not path.is_file():
        raise EncoderUnavailableError(f"Weights file {path} does not exist.")
    timm = import_package("timm", None)
    if arch not in timm.list_models():
        raise UnknownEncoderError(f"timm has no architecture {arch!r}; see timm.list_models() for the names.")
    try:
        # weights_only loading (safetensors or torch.load(weights_only=True)) happens inside timm.
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=0)
    except Exception as exc:  # timm raises many types for a file that does not fit; all mean "wrong file"
        raise EncoderUnavailableError(f"Could not load {path} into timm {arch!r}: {exc}") from exc
    is_vit = hasattr(model, "forward_intermediates") and hasattr(model, "num_prefix_tokens")
    data_cfg = timm.data.resolve_model_data_config(model)
    depth = len(getattr(model, "blocks", ())) if is_vit else 0
    spec = EncoderSpec(
        id=encoder_id,
        version=file_version(path),
        name=f"{arch} ({path.name})",
        family="user checkpoint",
        source=f"file:{path}",
        dim=int(model.num_features),
        input_size=int(data_cfg["input_size"][-1]),
        mean=tuple(data_cfg["mean"]),
        std=tuple(data_cfg["std"]),
        licence="as the checkpoint's owner says",
        needs_network=False,
        architecture=arch,
        description="Local timm checkpoint.",
        layers=("last",) + tuple(f"block{i}" for i in range(depth)) if is_vit else ("last",),
        poolings=("cls", "mean") if is_vit else ("avg", "gem"),
        default_pooling="cls" if is_vit else "avg",
        crop_pct=float(data_cfg.get("crop_pct", 0.875)),
        interpolation=str(data_cfg.get("interpolation", "bicubic")),
        precisions=TimmCNNEncoder.supported_precisions,  # both adapters share TorchEncoder's
    )
    layer, pooling = layer or spec.default_layer, pooling or spec.default_pooling
    check_option("layer", layer, spec.layers, arch)
    check_option("pooling", pooling, spec.poolings, arch)
    cls = TimmViTEncoder if is_vit else TimmCNNEncoder
    return cls(spec, device, layer, pooling, model)


def load_onnx_file(encoder_id: str, device: str, layer: str | None, pooling: str | None) -> BaseEncoder:
    match = re.fullmatch(r"onnx-file:(.+)#([^#]+)", encoder_id)
    if not match:
        raise InvalidInputError(
            f"{encoder_id!r}: write onnx-file:PATH#OUTPUT_NAME, e.g. onnx-file:/m/model.onnx#features"
        )
    path, output = Path(match.group(1)).expanduser(), match.group(2)
    if not path.is_file():
        raise EncoderUnavailableError(f"ONNX file {path} does not exist.")
    model_bytes = onnx_subgraph(path, output)
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
        id=encoder_id,
        version=file_version(path),
        name=f"{path.name} → {output}",
        family="user ONNX model",
        source=f"file:{path}",
        dim=dim,
        input_size=int(size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence="as the model's owner says",
        needs_network=False,
        architecture="onnx",
        description="Local ONNX model; ImageNet normalisation assumed.",
        layers=("output",),
        default_layer="output",
        poolings=("cls", "mean") if token_output else ("flatten",),
        default_pooling="cls" if token_output else "flatten",
    )
    layer, pooling = layer or spec.default_layer, pooling or spec.default_pooling
    check_option("layer", layer, spec.layers, encoder_id)
    check_option("pooling", pooling, spec.poolings, encoder_id)
    return OnnxEncoder(spec, device, layer, pooling, model_bytes, output, nhwc=nhwc, token_output=token_output)
