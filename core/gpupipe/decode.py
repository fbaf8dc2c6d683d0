"""Stages 1 and 2: read files, decode JPEGs with torchvision (nvjpeg on CUDA, libjpeg-turbo on
CPU) and everything else, or anything that decoder refuses, with Pillow exactly as
``core.extract`` does (``core.images.decode_rgb``).

Reading and Pillow decoding run on CPU threads. On CUDA (the "CUDA route") the JPEG bytes
travel to the decode stage and are decoded as one batch on the device; a JPEG Pillow would
decode at a reduced DCT scale (``draft``) is box-reduced to that size, nvjpeg having no DCT
scaling. On CPU each reader thread decodes its own JPEG (the same torchvision call, which
releases the GIL), and Pillow decodes the JPEGs it would draft, exactly and faster. Either way
the picture is then turned by its EXIF orientation, as Pillow turns it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from core.errors import ImageDecodeError, RepLensError
from core.gpupipe.geometry import box_reduce, draft_scale, orient
from core.gpupipe.jpeg import JpegHeader, fast_jpeg_header
from core.images import decode_rgb
from core.images.listing import READ_ERRORS, ImageSource, read_reason
from core.images.sources import open_source
from core.store import PendingImage

# Full-size pixels decoded at once on the device: 256 pictures of 2 megapixels (1.5 GB of uint8).
MAX_DECODE_PIXELS = 256 * 2_000_000


@dataclass
class Loaded:
    """One image after stage 1: JPEG bytes the device will decode, or decoded pixels, or why not."""

    item: PendingImage
    jpeg: Any = None  # uint8 1-D CPU tensor of the file, for the device decoder
    header: JpegHeader | None = None
    pixels: Any = None  # uint8 (3, H, W) CPU tensor, oriented and drafted already
    error: str | None = None
    decoder: str = ""  # "torchvision" or "pil": which decoder produced the pixels


class SourceReader:
    """Reads image bytes as ``core.images.read_bytes`` does, opening each dataset root once
    (``read_bytes`` opens the root on every call, which a zip root pays for in full)."""

    def __init__(self) -> None:
        self._sources: dict[str, ImageSource] = {}
        self._lock = threading.Lock()

    def read(self, root: str, rel_path: str) -> bytes:
        source = self._source(root)
        try:
            data, _ = source.read(rel_path)
        except READ_ERRORS as exc:
            raise ImageDecodeError(
                f"Cannot read {rel_path!r} from {source.root}: {read_reason(exc)}. "
                "The dataset changed since it was scanned; re-scan it."
            ) from exc
        return data

    def _source(self, root: str) -> ImageSource:
        with self._lock:
            source = self._sources.get(root)
            if source is None:
                source = self._sources[root] = open_source(root)
            return source


def jpeg_decoder() -> Callable[..., Any] | None:
    """torchvision's ``decode_jpeg``, or None where this torchvision has no image decoders
    (every file then goes through Pillow)."""
    try:
        from torchvision.io import decode_jpeg
    except ImportError:  # torchvision without its image extension
        return None
    return decode_jpeg


class Loader:
    """Stage 1 for one image: read it, and decode it unless the device decodes it later."""

    def __init__(self, reader: SourceReader, side: int, device_decodes_jpeg: bool) -> None:
        self.reader, self.side, self.device_decodes_jpeg = reader, side, device_decodes_jpeg
        self._decode_jpeg = jpeg_decoder()

    def __call__(self, item: PendingImage) -> Loaded:
        try:
            data = self.reader.read(item.source, item.rel_path)
        except RepLensError as exc:
            return Loaded(item, error=str(exc))
        except (OSError, ValueError) as exc:  # a file that changed on disk since the scan
            return Loaded(item, error=f"{type(exc).__name__}: {exc}")
        return self.from_bytes(item, data)

    def from_bytes(self, item: PendingImage, data: bytes) -> Loaded:
        """``item`` from the bytes of its file: JPEG bytes for the device, or decoded pixels."""
        header = fast_jpeg_header(data) if self._decode_jpeg is not None else None
        if header is not None and _over_pixel_limit(header):
            header = None  # Pillow's decompression-bomb check decides, before any pixel is decoded
        if header is not None and self.device_decodes_jpeg:
            return Loaded(item, jpeg=_byte_tensor(data), header=header)
        # On CPU a JPEG Pillow drafts goes to Pillow: its DCT-scaled decode is exactly the local
        # engine's and several times faster than a full decode (nvjpeg has no DCT scaling, so
        # on CUDA the draft is box-reduced instead).
        if header is not None and draft_scale(header.width, header.height, self.side) == 1:
            pixels = self._decode_on_cpu(data, header)
            if pixels is not None:
                return Loaded(item, pixels=pixels, decoder="torchvision")
        return pil_load(item, data, self.side)

    def _decode_on_cpu(self, data: bytes, header: JpegHeader) -> Any:
        from torchvision.io import ImageReadMode

        assert self._decode_jpeg is not None
        try:
            image = self._decode_jpeg(_byte_tensor(data), mode=ImageReadMode.RGB)
        except RuntimeError:  # libjpeg refused it: Pillow decides (and words the failure)
            return None
        return finish_jpeg(image, header, self.side)


def _over_pixel_limit(header: JpegHeader) -> bool:
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and header.width * header.height > limit


def finish_jpeg(image: Any, header: JpegHeader, side: int) -> Any:
    """A full-size decoded JPEG as ``decode_rgb`` returns it: drafted, then oriented."""
    scale = draft_scale(header.width, header.height, side)
    return orient(box_reduce(image, scale), header.orientation)


def pil_load(item: PendingImage, data: bytes, side: int) -> Loaded:
    """Decode with ``core.images.decode_rgb`` (the local engine's decoder); failures become the
    reason the local engine records."""
    import torch

    try:
        image = decode_rgb(data, draft_size=(side, side))
    except RepLensError as exc:
        return Loaded(item, error=str(exc))
    except (OSError, ValueError) as exc:
        return Loaded(item, error=f"{type(exc).__name__}: {exc}")
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # a writable copy
    return Loaded(item, pixels=pixels, decoder="pil")


def _byte_tensor(data: bytes) -> Any:
    import torch

    # frombuffer needs a writable buffer; one copy of the (compressed) file.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_on_device(
    batch: Sequence[Loaded],
    device: str,
    pool: Executor,
    side: int,
    decode_stream: Any = None,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
) -> tuple[list[PendingImage], list[Any], list[tuple[PendingImage, str]], dict[str, int]]:
    """Stage 2 on the device: (items, uint8 (3, H, W) tensors on ``device``, failures, how many
    each decoder produced). JPEG bytes are decoded in batches of at most ``max_decode_pixels``
    full-size pixels (each picture drafted before the next batch, so a batch of large photos
    never sits on the device at full size all at once); one a batch refuses is tried alone,
    then by Pillow on the pool. On CUDA, ``decode_stream`` is the stream the decoder's output is
    allocated on; the pixels are returned ordered on the current stream."""
    items: list[PendingImage] = []
    images: list[Any] = []
    failures = [(loaded.item, loaded.error) for loaded in batch if loaded.error is not None]
    counts = {"torchvision": 0, "pil": 0}
    refused: list[Loaded] = []
    for jpegs in _by_pixels([loaded for loaded in batch if loaded.jpeg is not None], max_decode_pixels):
        decoded, not_decoded = _decode_jpegs(jpegs, device, decode_stream)
        refused.extend(not_decoded)
        if decoded and device.startswith("cuda"):
            _order_after_nvjpeg(device, decode_stream, [image for _, image in decoded])
        for loaded, image in decoded:
            assert loaded.header is not None
            items.append(loaded.item)
            images.append(finish_jpeg(image, loaded.header, side))  # drafted: full size freed now
            counts["torchvision"] += 1
    retried = list(pool.map(lambda loaded: pil_load(loaded.item, _bytes_of(loaded.jpeg), side), refused))
    for loaded in [*retried, *(loaded for loaded in batch if loaded.pixels is not None)]:
        if loaded.error is not None:
            failures.append((loaded.item, loaded.error))
            continue
        items.append(loaded.item)
        pixels = loaded.pixels
        if device.startswith("cuda"):
            pixels = pixels.contiguous().pin_memory().to(device, non_blocking=True)
        elif device != "cpu":
            pixels = pixels.to(device)
        images.append(pixels)
        counts[loaded.decoder] += 1
    return items, images, [(item, str(error)) for item, error in failures], counts


def _by_pixels(jpegs: Sequence[Loaded], budget: int) -> list[list[Loaded]]:
    """``jpegs`` in order, cut into runs of at most ``budget`` pixels (a larger picture alone)."""
    runs: list[list[Loaded]] = []
    total = budget + 1
    for loaded in jpegs:
        assert loaded.header is not None
        pixels = loaded.header.width * loaded.header.height
        if total + pixels > budget:
            runs.append([])
            total = 0
        runs[-1].append(loaded)
        total += pixels
    return runs


def _order_after_nvjpeg(device: str, decode_stream: Any, images: Sequence[Any]) -> None:
    """Make the current stream wait for torchvision's nvjpeg work, which it orders before the
    legacy default stream (recent releases) or the stream current when it was called (older
    ones); and keep the caching allocator from giving the decoded images' memory to the next
    decode (which nvjpeg writes on a stream of its own) while this stream still reads them."""
    import torch

    current = torch.cuda.current_stream(device)
    current.wait_stream(torch.cuda.default_stream(device))
    if decode_stream is not None:
        current.wait_stream(decode_stream)
        for image in images:
            image.record_stream(current)


def _decode_jpegs(jpegs: Sequence[Loaded], device: str, stream: Any) -> tuple[list[tuple[Loaded, Any]], list[Loaded]]:
    """(decoded pairs, refused) for a batch of JPEGs; a failing batch is retried one by one,
    because the batched decoder returns nothing when any image fails."""
    if not jpegs:
        return [], []
    import torch
    from torchvision.io import ImageReadMode

    decode = jpeg_decoder()
    assert decode is not None
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        try:
            images = decode([loaded.jpeg for loaded in jpegs], mode=ImageReadMode.RGB, device=device)
            return list(zip(jpegs, images)), []
        except RuntimeError:
            pass
        decoded, refused = [], []
        for loaded in jpegs:
            try:
                decoded.append((loaded, decode(loaded.jpeg, mode=ImageReadMode.RGB, device=device)))
            except RuntimeError:
                refused.append(loaded)
        return decoded, refused


def _bytes_of(tensor: Any) -> bytes:
    return bytes(tensor.numpy().tobytes())


def default_workers() -> int:
    """Reader/decoder threads when the caller names none: one per core, at most 32."""
    return max(1, min(32, os.cpu_count() or 1))
