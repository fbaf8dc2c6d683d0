"""Decode image file bytes into an oriented RGB picture; every failure becomes one ``ImageDecodeError``.

Only the formats of ``SUPPORTED_EXTENSIONS`` are tried, whatever a file is named: Pillow can
open dozens more, each a parser a hostile file could reach (EPS even runs Ghostscript). A file
that is refused gets a reason that says what it is instead (empty, text, HTML, a damaged PNG…).
"""

from __future__ import annotations

import io
import re
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
# Pillow's format ids for SUPPORTED_EXTENSIONS (the JPEG opener also gives MPO, which has no opener).
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

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
        raise _failure_from(exc, data) from exc


def _decode_unchecked(data: bytes, draft_size: tuple[int, int] | None) -> Decoded:
    with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as img:
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


def _failure_from(exc: BaseException, data: bytes) -> DecodeFailure:
    if isinstance(exc, Image.DecompressionBombError):
        return DecodeFailure(
            f"decompression bomb: {exc} It was refused before its pixels were decoded",
            "The image has more pixels than Pillow's safety limit (PIL.Image.MAX_IMAGE_PIXELS) "
            "allows; downscale it, or raise that limit if you trust the file.",
        )
    if isinstance(exc, UnidentifiedImageError):
        # Pillow's own message ends in a useless BytesIO repr; say what the file is instead.
        return DecodeFailure(
            f"cannot identify image file: {what_it_is(data)}",
            "It is not an image RepLens can read; remove it or convert it to PNG or JPEG.",
        )
    message = str(exc).strip()
    if "truncated" in message.lower():
        return DecodeFailure(
            f"truncated file ({message})",
            "The file is incomplete; re-download or re-export it.",
        )
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return DecodeFailure(detail, "Re-export the image as PNG or JPEG, or remove it.")


# Leading bytes of the image formats RepLens reads: a file that starts like one but does not open
# is a damaged image, not a file of another kind.
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)
# Other kinds of files that end up named like images, by leading bytes no text starts with.
_OTHER_MAGIC = (
    (b"%PDF-", "a PDF document"),
    (b"%!PS", "a PostScript file"),
    (b"8BPS", "a Photoshop (PSD) file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x00\x00\x01\x00", "a Windows icon (ICO)"),
    (b"\x7fELF", "a program (ELF executable)"),
)
_ISO_MEDIA = {  # the brand after "ftyp" at offset 4
    b"heic": "a HEIC image",
    b"heix": "a HEIC image",
    b"mif1": "a HEIF image",
    b"avif": "an AVIF image",
    b"isom": "an MP4 video",
    b"mp42": "an MP4 video",
    b"qt  ": "a QuickTime video",
}
_MARKUP = re.compile(rb"<\s*(!doctype\s+html|html|head|body|script|iframe|div|meta)\b", re.IGNORECASE)


def what_it_is(data: bytes) -> str:
    """What a file that Pillow cannot identify holds, judged from its first bytes (for a skip reason)."""
    if not data:
        return "the file is empty (0 bytes)"
    for magic, fmt in _IMAGE_MAGIC:
        if data.startswith(magic):
            return f"it starts like a {fmt} image but its header is damaged"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "it starts like a WEBP image but its header is damaged"
    if data[4:8] == b"ftyp":
        kind = _ISO_MEDIA.get(data[8:12], "an ISO media file (video or HEIF)")
        return f"the file is {kind}, not a format RepLens reads"
    for magic, kind in _OTHER_MAGIC:
        if data.startswith(magic):
            return f"the file is {kind}, not an image"
    head = data[:4096]
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):  # markup, after any BOM and blank lines
        if _MARKUP.search(head):
            return "the file holds HTML markup, not an image"
        if b"<svg" in head.lower():
            return "the file is an SVG drawing (vector graphics), not a raster image RepLens reads"
        return "the file holds XML or other markup, not an image"
    if _is_text(head):
        return "the file holds text, not an image"
    if data.startswith(b"BM"):  # checked after text: two letters a text may start with
        return "it starts like a BMP image but its header is damaged"
    return f"unknown file type (first bytes: {data[:8].hex(' ')})"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut off at the end of the sample
            return False
        text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return bool(text) and printable >= 0.95 * len(text)
