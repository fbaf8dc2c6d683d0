"""Batched preprocessing on the device that gives the pixels ``core.encoders.preprocess`` gives.

Pillow resizes with a separable filter whose taps it computes per output pixel
(``Resample.c``: ``precompute_coeffs``, 22-bit fixed-point weights, one pass per axis, each
rounded to 8 bits; Pillow 13 runs the vertical pass first when the height shrinks more than twice
as much as the width, earlier releases always run the horizontal pass first, and
:func:`vertical_pass_first` asks the installed Pillow which). Written as two weight matrices, the same
arithmetic is two batched matrix products, and the centre crop or letterbox of the spec folds
into the matrices (a row per output pixel that survives the crop, a zero row for letterbox
padding). So one formulation covers every resize mode and filter of ``EncoderSpec``: in float64
(the CPU) every pixel is Pillow's; in float32 (GPUs) a pixel whose sum lies a hair from a half
can round the other way (see :class:`Preprocessor`).

``decode_rgb`` decodes large JPEGs at a reduced DCT scale (Pillow's ``draft``); a decoder
without DCT scaling (nvjpeg) gets the same geometry from :func:`draft_scale` and
:func:`box_reduce`, which averages blocks of the same size (close to, not exactly, libjpeg's
scaled IDCT: on real photos about half a level on average; ``tests/test_gpu_pipeline.py``
bounds it, and ``bench/gpu_bench.py --cuda-route`` measures what it does to vectors).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from core.encoders.spec import EncoderSpec
from core.errors import InvalidInputError

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights for 8-bit images
_DRAFT_SCALES = (8, 4, 2, 1)  # the DCT scalings Pillow's JPEG draft chooses from


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


# interpolation name (EncoderSpec.interpolation) -> (filter, support); "area" is Pillow's BOX.
_FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bicubic": (_bicubic, 2.0),
    "bilinear": (_bilinear, 1.0),
    "area": (_box, 0.5),
}
INTERPOLATIONS = (*_FILTERS, "nearest")
RESIZE_MODES = ("center_crop", "letterbox", "squash_crop")


def resample_matrix(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """The (out_size, in_size) float64 matrix of Pillow's resize along one axis: row ``i`` holds
    the fixed-point weights output pixel ``i`` gives each input pixel."""
    if in_size < 1 or out_size < 1:
        raise InvalidInputError(f"cannot resample {in_size} pixels to {out_size}")
    if in_size == out_size:
        return np.eye(out_size)  # Pillow skips a pass that keeps the size
    scale = in_size / out_size
    if interpolation == "nearest":
        # Pillow's NEAREST (Geometry.c, ImagingScaleAffine) samples pixel centres at positions it
        # accumulates in double precision; the running sum, not the product, decides the ties.
        positions = np.cumsum(np.concatenate([[scale * 0.5], np.full(out_size - 1, scale)]))
        source = positions.astype(np.int64)
        inside = source < in_size  # Pillow leaves a sample past the edge black
        matrix = np.zeros((out_size, in_size))
        matrix[np.arange(out_size)[inside], source[inside]] = 1.0
        return matrix
    if interpolation not in _FILTERS:
        raise InvalidInputError(f"interpolation={interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    kernel, support = _FILTERS[interpolation]
    filterscale = max(scale, 1.0)
    support *= filterscale
    centers = (np.arange(out_size) + 0.5) * scale
    # C's (int) cast truncates towards zero; the lower bound is clamped at 0 either way.
    first = np.maximum(np.trunc(centers - support + 0.5), 0)
    last = np.minimum(np.trunc(centers + support + 0.5), in_size)
    pixels = np.arange(in_size, dtype=np.float64)
    weights = kernel((pixels[None, :] - centers[:, None] + 0.5) / filterscale)
    weights *= (pixels[None, :] >= first[:, None]) & (pixels[None, :] < last[:, None])
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, totals, out=weights, where=totals != 0)
    one = float(1 << _PRECISION_BITS)
    fixed = np.where(weights < 0, np.trunc(-0.5 + weights * one), np.trunc(0.5 + weights * one))
    return np.asarray(fixed / one)


@dataclass(frozen=True)
class AxisPlan:
    """One axis of the preprocessing: ``in_size`` pixels resized to ``resized``; output pixel
    ``j`` is resized pixel ``j + start`` (outside ``[0, resized)``: padding, zero)."""

    in_size: int
    resized: int
    start: int


def plan_axes(spec: EncoderSpec, width: int, height: int) -> tuple[AxisPlan, AxisPlan]:
    """(x, y) plans reproducing ``preprocess_image``'s geometry for a ``width`` x ``height`` image."""
    size = spec.input_size
    if spec.resize == "letterbox":
        scale = size / max(width, height)
        rw, rh = max(1, round(width * scale)), max(1, round(height * scale))
        return AxisPlan(width, rw, -((size - rw) // 2)), AxisPlan(height, rh, -((size - rh) // 2))
    if spec.resize == "squash_crop":
        big = round(size / spec.crop_pct)
        return AxisPlan(width, big, (big - size) // 2), AxisPlan(height, big, (big - size) // 2)
    if spec.resize != "center_crop":
        raise InvalidInputError(f"resize={spec.resize!r} is not one of {', '.join(RESIZE_MODES)}")
    short = round(size / spec.crop_pct)
    scale = short / min(width, height)
    rw, rh = max(size, round(width * scale)), max(size, round(height * scale))
    return AxisPlan(width, rw, (rw - size) // 2), AxisPlan(height, rh, (rh - size) // 2)


def axis_matrix(plan: AxisPlan, out_size: int, interpolation: str) -> np.ndarray:
    """(out_size, in_size): the resize of ``plan`` followed by its crop or padding."""
    full = resample_matrix(plan.in_size, plan.resized, interpolation)
    matrix = np.zeros((out_size, plan.in_size))
    rows = np.arange(out_size) + plan.start
    inside = (rows >= 0) & (rows < plan.resized)
    matrix[inside] = full[rows[inside]]
    return matrix


def vertical_pass_first(width: int, height: int, out_width: int, out_height: int) -> bool:
    """Whether the installed Pillow resizes ``width`` x ``height`` to ``out_width`` x ``out_height``
    with its vertical pass first (the order changes which pixels round up)."""
    shrink_y, shrink_x = height - out_height, width - out_width
    return _pillow_orders_passes() and shrink_y > 0 and shrink_y > 2 * shrink_x


@functools.cache
def _pillow_orders_passes() -> bool:
    """True for a Pillow that runs the vertical pass first when the height shrinks most (13+):
    a 37x91 image resized to 16x16 rounds differently in the two orders."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (91, 37), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.Resampling.BICUBIC), dtype=np.float64)
    mx, my = resample_matrix(37, 16, "bicubic"), resample_matrix(91, 16, "bicubic")
    vertical_first = _round_u8(_round_u8(my @ pixels) @ mx.T)
    return bool(np.array_equal(vertical_first, resized))


def _round_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255)


def draft_scale(width: int, height: int, side: int) -> int:
    """The DCT scale Pillow's ``draft(None, (side, side))`` picks for a ``width`` x ``height`` JPEG."""
    ratio = min(width // side, height // side)
    return next(s for s in _DRAFT_SCALES if ratio >= s or s == 1)


def box_reduce(image: Any, scale: int) -> Any:
    """Average ``scale`` x ``scale`` blocks of a (3, H, W) uint8 tensor, edge blocks partial (the
    size a DCT-scaled decode has: ceil(H / scale) x ceil(W / scale)); uint8 out."""
    if scale == 1:
        return image
    import torch

    pooled = torch.nn.functional.avg_pool2d(image[None].float(), scale, scale, ceil_mode=True)[0]
    return pooled.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)


def orient(image: Any, orientation: int) -> Any:
    """A (C, H, W) tensor as ``ImageOps.exif_transpose`` turns an image with EXIF ``orientation``."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return image.flip(-1)
    if orientation == 3:  # ROTATE_180
        return image.flip(-2, -1)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return image.flip(-2)
    if orientation == 5:  # TRANSPOSE
        return image.transpose(-2, -1)
    if orientation == 6:  # ROTATE_270 (clockwise)
        return image.transpose(-2, -1).flip(-1)
    if orientation == 7:  # TRANSVERSE
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # ROTATE_90 (counter-clockwise)
        return image.transpose(-2, -1).flip(-2)
    return image  # 1, or a value exif_transpose ignores


class Preprocessor:
    """Turns decoded uint8 (3, H, W) tensors on one device into the normalised float32
    (n, 3, S, S) batch ``spec`` asks for; the weight matrices are cached per image size.

    ``exact`` (the default on CPU) sums in float64, where Pillow's fixed-point sums are exact, so
    every pixel is Pillow's. float32 (the default on GPUs, where float64 is slow on most cards)
    rounds a pixel the other way when its sum lies a hair from a half: one level, on up to about
    1% of the pixels when upscaling with the bilinear filter and 0.01% when downscaling.
    """

    def __init__(self, spec: EncoderSpec, device: str, cache_size: int = 256, exact: bool | None = None) -> None:
        if spec.interpolation not in INTERPOLATIONS:
            raise InvalidInputError(f"interpolation={spec.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        self.spec, self.device, self.cache_size = spec, device, cache_size
        self.exact = device == "cpu" if exact is None else exact
        self._matrices: dict[tuple[int, int], tuple[Any, Any, bool]] = {}
        self._lock = threading.Lock()
        self._scale: Any = None
        self._shift: Any = None

    def __call__(self, images: Sequence[Any]) -> Any:
        import torch

        size = self.spec.input_size
        out = torch.empty((len(images), 3, size, size), dtype=self._dtype(), device=self.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault((int(image.shape[-2]), int(image.shape[-1])), []).append(index)
        for (height, width), members in groups.items():
            stacked = torch.stack([images[i] for i in members]) if len(members) > 1 else images[members[0]][None]
            resized = self._resize(stacked.to(self._dtype()), height, width)
            if len(members) == len(images):
                out = resized
            else:
                out[torch.tensor(members, device=self.device)] = resized
        return self._normalise(out)

    def _resize(self, batch: Any, height: int, width: int) -> Any:
        mx, my, vertical_first = self._matrices_for(height, width)
        # Each pass rounded to 8 bits, as Pillow stores its intermediate image.
        if vertical_first:
            return torch_round_u8(torch_round_u8(my @ batch) @ mx.T)
        return torch_round_u8(my @ torch_round_u8(batch @ mx.T))

    def _matrices_for(self, height: int, width: int) -> tuple[Any, Any, bool]:
        import torch

        with self._lock:
            found = self._matrices.get((height, width))
            if found is None:
                px, py = plan_axes(self.spec, width, height)
                size, interpolation = self.spec.input_size, self.spec.interpolation
                mx, my = (
                    torch.from_numpy(axis_matrix(plan, size, interpolation)).to(self.device, self._dtype())
                    for plan in (px, py)
                )
                found = (mx, my, vertical_pass_first(width, height, px.resized, py.resized))
                if len(self._matrices) >= self.cache_size:
                    self._matrices.pop(next(iter(self._matrices)))
                self._matrices[(height, width)] = found
            return found

    def _dtype(self) -> Any:
        import torch

        return torch.float64 if self.exact else torch.float32

    def _normalise(self, pixels: Any) -> Any:
        import torch

        spec = self.spec
        if self._scale is None:
            mean = np.asarray(spec.mean, np.float32)
            if spec.bgr_0_255:
                scale, shift = np.ones(3, np.float32), -mean
            else:
                std = np.asarray(spec.std, np.float32)
                scale, shift = 1.0 / (255.0 * std), -mean / std
            self._scale = torch.from_numpy(scale.reshape(1, 3, 1, 1)).to(self.device)
            self._shift = torch.from_numpy(shift.reshape(1, 3, 1, 1)).to(self.device)
        if spec.bgr_0_255:
            pixels = pixels.flip(1)
        return torch.addcmul(self._shift, pixels.to(torch.float32), self._scale)


def torch_round_u8(values: Any) -> Any:
    """Round half up and clip to 0..255 in place, as Pillow stores a resampled 8-bit pixel."""
    return values.add_(0.5).floor_().clamp_(0.0, 255.0)
