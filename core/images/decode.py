"""Decode image file bytes into an oriented RGB picture; every failure becomes one ``ImageDecodeError``."""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageDecodeError

_BACKGROUND = (128, 128, 128)  # neutral grey: no bias towards black or white for encoders
_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # MPO is the multi-picture JPEG many phones write

# catch_warnings mutates process-wide state, so the rare retry that needs it is serialised.
_WARNINGS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB, EXIF orientation applied, possibly reduced by draft
    format: str
    width: int  # full-resolution size after orientation, whatever draft did
    height: int


class DecodeFailure(ImageDecodeError):
    """An ImageDecodeError that also keeps the short reason a ``SkippedFile`` shows."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(f"Cannot decode image: {reason}. {advice}")
        self.reason = reason


def decode_rgb(data: bytes, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode file bytes to an oriented RGB image; any failure is an ``ImageDecodeError``.

    ``draft_size`` lets JPEGs decode at a reduced DCT scale that is still at least that big,
    which is several times faster when the caller resizes anyway.
    """
    return decode_image(data, draft_size).image


def decode_image(data: bytes, draft_size: tuple[int, int] | None) -> Decoded:
    """Like ``decode_rgb``, also keeping the format and the full-resolution size (what a scan records)."""
    try:
        try:
            return _decode_unchecked(data, draft_size)
        except Image.DecompressionBombWarning:
            # Only reachable when warnings are configured as errors. Pillow's own policy is
            # that between MAX_IMAGE_PIXELS and twice that an image is suspicious, not refused.
            with _WARNINGS_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return _decode_unchecked(data, draft_size)
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow raises many types on corrupt input; all mean "bad file"
        raise _failure_from(exc) from exc


def _decode_unchecked(data: bytes, draft_size: tuple[int, int] | None) -> Decoded:
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format or "UNKNOWN"
        full_w, full_h = img.size
        if draft_size is not None and fmt in _DRAFT_FORMATS:
            # Draft compares per axis before orientation is known; a square request is
            # orientation-proof and still at least as large as asked.
            side = max(draft_size)
            img.draft(None, (side, side))
        img.load()
        # Read after load: PNG may carry its eXIf chunk after the pixel data.
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
        oriented = ImageOps.exif_transpose(img)
    assert oriented is not None  # in_place=False always returns an image
    if orientation in _TRANSPOSING_ORIENTATIONS:
        full_w, full_h = full_h, full_w
    return Decoded(image=to_rgb(oriented), format=fmt, width=full_w, height=full_h)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB: 16-bit and float data rescaled, transparency composited on grey."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # Pillow clips these to 0..255 when converting; rescaling keeps 16-bit data visible.
        return Image.fromarray(_high_depth_to_uint8(img)).convert("RGB")
    if img.has_transparency_data:
        return _composite_on_background(img.convert("RGBA"))
    return img.convert("RGB")


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return _scale_to_uint8(arr.astype(np.float64), 0.0, 65535.0)
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if img.mode == "I" and lo >= 0 and hi <= 65535:
        return _scale_to_uint8(values, 0.0, 65535.0)  # 32-bit container of 16-bit samples
    if img.mode == "F" and lo >= 0 and hi <= 1:
        return _scale_to_uint8(values, 0.0, 1.0)  # normalised float images
    return _scale_to_uint8(values, lo, hi)  # unknown range: stretch rather than clip


def _scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite_on_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _failure_from(exc: BaseException) -> DecodeFailure:
    if isinstance(exc, Image.DecompressionBombError):
        return DecodeFailure(
            f"decompression bomb: {exc}",
            "The image has more pixels than Pillow's safety limit (PIL.Image.MAX_IMAGE_PIXELS) "
            "allows; downscale it, or raise that limit if you trust the file.",
        )
    if isinstance(exc, UnidentifiedImageError):
        # Pillow's own message ends in a useless BytesIO repr.
        return DecodeFailure(
            "cannot identify image file",
            "It is not an image Pillow can read; remove it or convert it to PNG or JPEG.",
        )
    message = str(exc).strip()
    if "truncated" in message.lower():
        return DecodeFailure(
            f"truncated file ({message})",
            "The file is incomplete; re-download or re-export it.",
        )
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return DecodeFailure(detail, "Re-export the image as PNG or JPEG, or remove it.")
