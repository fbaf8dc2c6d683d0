"""The plumbing every encoder shares: its cache key, precision, preprocessing and batch checks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from core.encoders.precision import PrecisionChoice
from core.encoders.preprocess import preprocess_image
from core.encoders.spec import EncoderSpec
from core.errors import EncoderUnavailableError, InvalidInputError
from core.keys import FP32, format_key


class BaseEncoder:
    """Common plumbing: key, precision, preprocessing, batch checks. Adapters implement ``_forward``.

    ``precision`` is what the forward pass computes in; adapters that can run at more than fp32
    list it in ``supported_precisions`` and honour it in ``_forward``. ``load_encoder`` sets it
    (``use_precision``) before handing the encoder out.
    """

    supported_precisions: tuple[str, ...] = (FP32,)

    def __init__(self, spec: EncoderSpec, device: str, layer: str, pooling: str) -> None:
        self.spec, self.device, self.layer, self.pooling = spec, device, layer, pooling
        self.precision = FP32
        self.precision_reason = "fp32 (the default)"

    @property
    def key(self) -> str:
        """The cache key of this encoder's vectors: ``"{id}@{version}/{layer}/{pooling}"``, plus
        ``"~{precision}"`` when it does not compute in fp32."""
        return format_key(self.spec.id, self.spec.version, self.layer, self.pooling, self.precision)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def use_precision(self, choice: PrecisionChoice) -> None:
        """Compute in ``choice.precision`` from now on (its key changes with it)."""
        if choice.precision not in self.supported_precisions:
            # The spec offers a precision this adapter cannot compute: a registration mistake.
            raise EncoderUnavailableError(
                f"{self.spec.id}: {type(self).__name__} computes in {', '.join(self.supported_precisions)}, "
                f"not {choice.precision}; its spec should not offer {choice.precision}."
            )
        self.precision, self.precision_reason = choice.precision, choice.reason

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
