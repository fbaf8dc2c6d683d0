"""The plumbing every encoder shares: its cache key, preprocessing and batch checks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from core.encoders.preprocess import preprocess_image
from core.encoders.spec import EncoderSpec
from core.errors import EncoderUnavailableError, InvalidInputError
from core.keys import format_key


class BaseEncoder:
    """Common plumbing: key, preprocessing, batch checks. Adapters implement ``_forward``."""

    def __init__(self, spec: EncoderSpec, device: str, layer: str, pooling: str) -> None:
        self.spec, self.device, self.layer, self.pooling = spec, device, layer, pooling

    @property
    def key(self) -> str:
        """The cache key of this encoder's vectors: ``"{id}@{version}/{layer}/{pooling}"``."""
        return format_key(self.spec.id, self.spec.version, self.layer, self.pooling)

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


# loader(spec, device, layer, pooling, weights) -> the encoder; registered with @register_encoder.
Loader = Callable[..., BaseEncoder]
