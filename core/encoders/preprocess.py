"""Preprocessing shared by every adapter: built from the spec, never re-typed by callers."""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.encoders.spec import EncoderSpec

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


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
    arr: np.ndarray = np.asarray(image, dtype=np.float32)
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
