"""What an encoder is: its spec (the facts a user and the cache need) and the interface it offers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from core.errors import InvalidInputError
from core.registry import RegistrationWarning

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderRegistrationWarning(RegistrationWarning):
    """An encoder id was registered twice (the later registration wins), or a plug-in failed to load."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything a user (and the cache) needs to know about an encoder."""

    id: str
    version: str  # changes whenever the weights change
    name: str  # what the UI shows
    family: str  # training method: DINOv2, DINO, MAE, SwAV, CLIP, baseline…
    source: str  # where weights come from, e.g. "timm:vit_small_patch14_dinov2.lvd142m"
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    needs_network: bool  # True: weights come from a hub on first use
    has_text_tower: bool = False
    architecture: str = ""
    fine_tuned: str | None = None  # honest note when weights were fine-tuned away from the SSL objective
    description: str = ""
    layers: tuple[str, ...] = ("last",)
    default_layer: str = "last"
    poolings: tuple[str, ...] = ("cls", "mean")
    default_pooling: str = "cls"
    resize: str = "center_crop"  # center_crop | letterbox | squash_crop
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    bgr_0_255: bool = False  # Caffe-style input: BGR channel order, 0-255 scale
    # Numeric precisions it can run at (load_encoder's ``precision``; part of the cache key).
    # fp32 only unless the adapter and the weights were checked at another one.
    precisions: tuple[str, ...] = ("fp32",)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Encoder(Protocol):
    """What ``load_encoder`` returns."""

    spec: EncoderSpec
    layer: str
    pooling: str
    device: str
    precision: str  # what the forward pass computes in: "fp32", "bf16"

    @property
    def key(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    def embed_batch(self, batch: np.ndarray) -> np.ndarray: ...


def check_option(what: str, value: str, allowed: Sequence[str], encoder: str) -> None:
    """Refuse a layer or pooling the encoder does not offer, naming the ones it does."""
    if value not in allowed:
        raise InvalidInputError(f"{what}={value!r} is not available for {encoder}; choose one of {', '.join(allowed)}.")
