"""Which files the fast decoder may take: JPEGs that decode exactly as Pillow decodes them.

A header walk (no pixel decoding) reads the frame size, the component count and the EXIF
orientation. Anything the fast path could treat differently from ``core.images.decode_rgb`` is
left to Pillow: not a JPEG, no end-of-image marker (truncated, or data after the image), a
second Exif segment (Pillow concatenates them), XMP (Pillow reads an orientation there too),
an Adobe segment (CMYK, YCCK or RGB colour transforms), 12-bit samples, arithmetic coding,
lossless or hierarchical frames, or a malformed segment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/"
_HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive
_OTHER_FRAMES = frozenset(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}  # lossless, hierarchical, arithmetic
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field
_ORIENTATION_TAG = 0x0112
_SHORT = 3


@dataclass(frozen=True)
class JpegHeader:
    width: int  # as stored, before orientation
    height: int
    components: int  # 1 (grey) or 3 (YCbCr)
    orientation: int  # EXIF orientation, 1 when absent


def fast_jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of a JPEG the fast path decodes like Pillow, or None (Pillow decodes it)."""
    if not data.startswith(_SOI) or not data.endswith(_EOI):
        return None
    view = memoryview(data)
    pos, end = 2, len(data)
    orientation, exif_seen, frame = 1, False, None
    while pos + 4 <= end:
        if view[pos] != 0xFF:
            return None
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        if length < 2 or pos + 2 + length > end:
            return None
        segment = view[pos + 4 : pos + 2 + length]
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker == 0xE1:
            head = bytes(segment[: len(_XMP)])
            if head.startswith(_XMP):
                return None
            if head.startswith(_EXIF):
                if exif_seen:
                    return None
                exif_seen = True
                found = exif_orientation(bytes(segment[len(_EXIF) :]))
                if found is None:
                    return None
                orientation = found
        elif marker == 0xEE or marker in _OTHER_FRAMES:
            return None
        elif marker in _HUFFMAN_FRAMES:
            frame = _frame(segment)
            if frame is None:
                return None
        pos += 2 + length
    else:
        return None  # no start of scan
    if frame is None:
        return None
    width, height, components = frame
    return JpegHeader(width, height, components, orientation)


def _frame(segment: memoryview) -> tuple[int, int, int] | None:
    if len(segment) < 6:
        return None
    precision, components = segment[0], segment[5]
    height, width = (segment[1] << 8) | segment[2], (segment[3] << 8) | segment[4]
    if precision != 8 or components not in (1, 3) or width == 0 or height == 0:
        return None
    return width, height, components


def exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag of IFD0 in a TIFF-structured Exif block: 1 when absent, None when the
    block is malformed or the tag is not one SHORT (Pillow decides those)."""
    if len(tiff) < 8:
        return None
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(tiff[:4])
    if order is None:
        return None
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == _ORIENTATION_TAG:
            if kind != _SHORT or n != 1:
                return None
            (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
            return int(value)
    return 1
