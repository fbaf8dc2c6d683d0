"""Find, verify, decode and thumbnail the images of a dataset (a folder or a .zip archive).

An image's identity is the hash of its file bytes, so the same picture at two paths is one
embedding but two records (labels and captions come from the path). ``scan`` decodes every
candidate once, so a file that would break extraction later is reported up front as a
``SkippedFile`` instead of failing a long job halfway through.
"""
from __future__ import annotations

import io
import os
import re
import stat
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import xxhash
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageDecodeError, InvalidInputError, UnsupportedSourceError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "THUMBNAIL_SIZE",
    "ImageRecord",
    "SkippedFile",
    "ScanResult",
    "content_hash",
    "scan",
    "read_bytes",
    "decode_rgb",
    "thumbnail_path",
    "ensure_thumbnail",
    "image_features",
]

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
THUMBNAIL_SIZE: int = 128

_CAPTION_EXTENSION = ".txt"
_BACKGROUND = (128, 128, 128)  # neutral grey: no bias towards black or white for encoders
_THUMBNAIL_QUALITY = 80
# Reading a file is all-in-memory; this bounds what one corrupt or hostile file can cost.
_MAX_FILE_BYTES = 1 << 30
_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # MPO is the multi-picture JPEG many phones write
_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")
_SAFE_HASH = re.compile(r"^[0-9A-Za-z]{2,}$")

# catch_warnings mutates process-wide state, so the rare retry that needs it is serialised.
_WARNINGS_LOCK = threading.Lock()


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class ImageRecord:
    content_hash: str
    rel_path: str
    labels: tuple[str, ...]
    width: int
    height: int
    n_bytes: int
    format: str
    mtime: float
    caption: str | None


@dataclass(frozen=True)
class SkippedFile:
    rel_path: str
    reason: str


@dataclass
class ScanResult:
    root: str
    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


@dataclass(frozen=True)
class _Decoded:
    image: Image.Image  # RGB, EXIF orientation applied, possibly reduced by draft
    format: str
    width: int  # full-resolution size after orientation, whatever draft did
    height: int


class _DecodeFailure(ImageDecodeError):
    """An ImageDecodeError that also keeps the short reason a ``SkippedFile`` shows."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(f"Cannot decode image: {reason}. {advice}")
        self.reason = reason


# --------------------------------------------------------------------------- hashing


def content_hash(data: bytes) -> str:
    """Hex xxh3-128 of the bytes: fast, and collisions are negligible at dataset scale."""
    return xxhash.xxh3_128_hexdigest(data)


# --------------------------------------------------------------------------- decoding


def decode_rgb(data: bytes, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode file bytes to an oriented RGB image; any failure is an ``ImageDecodeError``.

    ``draft_size`` lets JPEGs decode at a reduced DCT scale that is still at least that big,
    which is several times faster when the caller resizes anyway.
    """
    return _decode(data, draft_size).image


def _decode(data: bytes, draft_size: tuple[int, int] | None) -> _Decoded:
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


def _decode_unchecked(data: bytes, draft_size: tuple[int, int] | None) -> _Decoded:
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
    return _Decoded(image=_to_rgb(oriented), format=fmt, width=full_w, height=full_h)


def _to_rgb(img: Image.Image) -> Image.Image:
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


def _failure_from(exc: BaseException) -> _DecodeFailure:
    if isinstance(exc, Image.DecompressionBombError):
        return _DecodeFailure(
            f"decompression bomb: {exc}",
            "The image has more pixels than Pillow's safety limit (PIL.Image.MAX_IMAGE_PIXELS) "
            "allows; downscale it, or raise that limit if you trust the file.",
        )
    if isinstance(exc, UnidentifiedImageError):
        # Pillow's own message ends in a useless BytesIO repr.
        return _DecodeFailure(
            "cannot identify image file",
            "It is not an image Pillow can read; remove it or convert it to PNG or JPEG.",
        )
    message = str(exc).strip()
    if "truncated" in message.lower():
        return _DecodeFailure(
            f"truncated file ({message})",
            "The file is incomplete; re-download or re-export it.",
        )
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return _DecodeFailure(detail, "Re-export the image as PNG or JPEG, or remove it.")


# --------------------------------------------------------------------------- thumbnails


def thumbnail_path(cache_dir: str | os.PathLike[str], content_hash: str) -> Path:
    """``<cache_dir>/thumbs/<hash[:2]>/<hash>.webp``; fanned out so no folder gets huge."""
    if not _SAFE_HASH.match(content_hash):
        # The hash becomes a file name, so anything with separators or dots is refused.
        raise InvalidInputError(
            f"{content_hash!r} is not a content hash; pass the hex digest from content_hash()."
        )
    return Path(cache_dir) / "thumbs" / content_hash[:2] / f"{content_hash}.webp"


def ensure_thumbnail(
    cache_dir: str | os.PathLike[str],
    content_hash: str,
    data: bytes | None = None,
    *,
    image: Image.Image | None = None,
    size: int = THUMBNAIL_SIZE,
) -> Path:
    """Return the WebP thumbnail's path, creating it (longest side == ``size``) if missing.

    The path does not encode ``size``: an existing thumbnail is reused whatever its size.
    """
    path = thumbnail_path(cache_dir, content_hash)
    if path.exists():
        return path
    if size < 1:
        raise InvalidInputError(f"Thumbnail size must be a positive number of pixels, got {size}.")
    if image is None:
        if data is None:
            raise InvalidInputError(
                f"No thumbnail cached for {content_hash}; pass the image bytes or a decoded image."
            )
        image = decode_rgb(data, draft_size=(size, size))
    _write_atomically(_resize_longest_side(_to_rgb(image), size), path)
    return path


def _resize_longest_side(img: Image.Image, size: int) -> Image.Image:
    width, height = img.size
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size == img.size:
        return img
    # reducing_gap first shrinks by an integer factor: much faster on big inputs, same look.
    return img.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _write_atomically(img: Image.Image, path: Path) -> None:
    # A reader (or a concurrent writer of the same hash) must never see a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            img.save(tmp, format="WEBP", quality=_THUMBNAIL_QUALITY, method=4)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- image features


def image_features(img: Image.Image) -> dict[str, float]:
    """Cheap, encoder-free descriptors for colouring plots and sanity checks.

    Computed on a copy shrunk to at most 256 px so cost does not depend on resolution;
    all values except ``aspect_ratio``, ``sharpness`` and ``entropy`` are in [0, 1].
    """
    width, height = img.size
    small = _to_rgb(img.copy())
    small.thumbnail((256, 256), Image.Resampling.BILINEAR)
    rgb = np.asarray(small, dtype=np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    return {
        "aspect_ratio": width / height if height else 0.0,
        "brightness": float(luma.mean() / 255.0),
        "contrast": float(luma.std() / 255.0),
        "saturation": _mean_saturation(rgb),
        "colorfulness": _colorfulness(rgb),
        "sharpness": _laplacian_variance(luma),
        "entropy": _histogram_entropy(luma),
    }


def _mean_saturation(rgb: np.ndarray) -> float:
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    return float(saturation.mean())


def _colorfulness(rgb: np.ndarray) -> float:
    # Hasler & Suesstrunk (2003), divided by 255 so grey is 0 and saturated images near 0.5-1.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = np.hypot(rg.std(), yb.std())
    centre = np.hypot(rg.mean(), yb.mean())
    return float((spread + 0.3 * centre) / 255.0)


def _laplacian_variance(luma: np.ndarray) -> float:
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return 0.0
    lap = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    )
    return float(lap.var() / 255.0**2)


def _histogram_entropy(luma: np.ndarray) -> float:
    counts = np.bincount(np.clip(np.rint(luma), 0, 255).astype(np.int64).ravel(), minlength=256)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log2(probs)).sum())


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Candidate:
    rel_path: str
    caption_rel_path: str | None


@dataclass(frozen=True)
class _Listing:
    candidates: list[_Candidate]
    skipped: list[SkippedFile]


@dataclass(frozen=True)
class _ZipIndex:
    archive: zipfile.ZipFile
    members: dict[str, zipfile.ZipInfo]  # safe, normalised, non-hidden paths only
    skipped: list[SkippedFile]  # unsafe or duplicate image entries
    # ZipFile's open-handle bookkeeping is not atomic, so threads take turns reading; the
    # expensive part of a scan, decoding, still runs in parallel.
    lock: threading.Lock = field(default_factory=threading.Lock)


class _FolderSource:
    label_skip = 0  # every parent folder under the root is a label

    def __init__(self, root: Path) -> None:
        self.root = root

    def listing(self) -> _Listing:
        images: list[str] = []
        texts: list[str] = []
        skipped: list[SkippedFile] = []
        for rel_path in self._walk(skipped):
            suffix = PurePosixPath(rel_path).suffix.lower()
            (images if suffix in SUPPORTED_EXTENSIONS else texts).append(rel_path)
        return _listing_with_captions(images, texts, skipped)

    def _walk(self, skipped: list[SkippedFile]) -> Iterator[str]:
        def report(err: OSError) -> None:
            rel = self._rel(Path(err.filename)) if err.filename else "."
            skipped.append(SkippedFile(rel, f"cannot list folder: {err.strerror or err}"))

        # Linked folders are followed (datasets are often assembled from symlinks), except a
        # link back to an ancestor, which would loop forever.
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=report, followlinks=True):
            dirnames[:] = [
                d for d in sorted(dirnames) if not _is_ignored_name(d) and not _is_loop(dirpath, d)
            ]
            for name in filenames:
                if _is_ignored_name(name) or not _is_relevant_suffix(name):
                    continue
                yield self._rel(Path(dirpath) / name)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def stat(self, rel_path: str) -> tuple[int, float]:
        info = os.stat(self.root / _checked_rel_path(rel_path))
        return info.st_size, info.st_mtime

    def read(self, rel_path: str) -> tuple[bytes, float]:
        path = self.root / _checked_rel_path(rel_path)
        # Checked before open(): opening a FIFO named *.png blocks until someone writes to it.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _NotReadable("not a regular file")
        if info.st_size > _MAX_FILE_BYTES:
            raise _NotReadable(_too_big(info.st_size))
        with open(path, "rb") as fh:
            return fh.read(), info.st_mtime


def _is_loop(parent: str, name: str) -> bool:
    real_parent = os.path.realpath(parent)
    real_child = os.path.realpath(os.path.join(parent, name))
    return real_parent == real_child or real_parent.startswith(real_child.rstrip(os.sep) + os.sep)


class _ZipSource:
    def __init__(self, root: Path, index: _ZipIndex) -> None:
        self.root = root
        self.index = index
        # Zipping a folder wraps everything in that folder's name; it is not a label.
        self.label_skip = 1 if _single_wrapper_folder(index.members) else 0

    def listing(self) -> _Listing:
        images: list[str] = []
        texts: list[str] = []
        for rel_path in self.index.members:
            suffix = PurePosixPath(rel_path).suffix.lower()
            (images if suffix in SUPPORTED_EXTENSIONS else texts).append(rel_path)
        return _listing_with_captions(images, texts, list(self.index.skipped))

    def stat(self, rel_path: str) -> tuple[int, float]:
        info = self.index.members.get(rel_path)
        if info is None:
            raise FileNotFoundError(f"no member {rel_path!r} in the archive")
        return info.file_size, _zip_mtime(info)

    def read(self, rel_path: str) -> tuple[bytes, float]:
        info = self.index.members.get(rel_path)
        if info is None:
            raise FileNotFoundError(f"no member {rel_path!r} in the archive")
        if info.file_size > _MAX_FILE_BYTES:
            raise _NotReadable(_too_big(info.file_size))
        with self.index.lock:
            data = self.index.archive.read(info)
        return data, _zip_mtime(info)


_Source = _FolderSource | _ZipSource


def _single_wrapper_folder(members: Mapping[str, zipfile.ZipInfo]) -> bool:
    images = [m for m in members if PurePosixPath(m).suffix.lower() in SUPPORTED_EXTENSIONS]
    tops = {m.split("/", 1)[0] for m in images}
    return bool(images) and len(tops) == 1 and all("/" in m for m in images)


class _NotReadable(Exception):
    """A file that exists but is refused before reading (size, type)."""


# What reading one file or archive member can raise for reasons of that file alone:
# zipfile signals encrypted members with RuntimeError, unknown compression with
# NotImplementedError, CRC mismatches with BadZipFile, cut-off data with EOFError/zlib.error.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    _NotReadable,
    zipfile.BadZipFile,
    RuntimeError,
    NotImplementedError,
    EOFError,
    zlib.error,
)


def _too_big(n_bytes: int) -> str:
    return f"file is {n_bytes} bytes, more than the {_MAX_FILE_BYTES} byte limit"


def _is_ignored_name(name: str) -> bool:
    # Dot-files include macOS "._x.jpg" resource forks; __MACOSX holds more of them in zips.
    return name.startswith(".") or name == "__MACOSX"


def _is_relevant_suffix(name: str) -> bool:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix in SUPPORTED_EXTENSIONS or suffix == _CAPTION_EXTENSION


def _listing_with_captions(
    images: list[str], texts: list[str], skipped: list[SkippedFile]
) -> _Listing:
    # Sorted so "x.TXT" vs "x.txt" resolves the same way on every run.
    captions: dict[str, str] = {}
    for text in sorted(texts, reverse=True):
        captions[_stem_key(text)] = text
    candidates = [_Candidate(rel, captions.get(_stem_key(rel))) for rel in sorted(images)]
    return _Listing(candidates, skipped)


def _stem_key(rel_path: str) -> str:
    path = PurePosixPath(rel_path)
    return str(path.with_suffix("")) if path.suffix else rel_path


def _checked_rel_path(rel_path: str) -> str:
    parts = re.split(r"[\\/]", rel_path)  # backslash too: it is a separator on Windows
    if not rel_path or rel_path.startswith("/") or _DRIVE_PREFIX.match(rel_path) or ".." in parts:
        raise _NotReadable(f"path {rel_path!r} is not inside the dataset root")
    return rel_path


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    try:
        # DOS timestamps have no zone; archivers write local time.
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return 0.0  # a nonsense date in the header; the image itself is still fine


def _open_source(source: str | os.PathLike[str]) -> _Source:
    root = Path(source).expanduser()
    if not root.exists():
        raise UnsupportedSourceError(
            f"{root} does not exist. Pass an existing folder of images or a .zip archive."
        )
    root = root.resolve()
    if root.is_dir():
        return _FolderSource(root)
    if root.is_file() and root.suffix.lower() == ".zip":
        return _ZipSource(root, _zip_index(root))
    raise UnsupportedSourceError(
        f"{root} is not a folder or a .zip archive. Pass the folder that contains the images, "
        "or a .zip of it."
    )


# Opening a large archive parses its whole central directory; extraction reads images one
# by one through read_bytes, so recently used archives stay open.
_ZIP_CACHE: OrderedDict[tuple[str, int, int], _ZipIndex] = OrderedDict()
_ZIP_CACHE_LOCK = threading.Lock()
_ZIP_CACHE_SIZE = 4


def _zip_index(path: Path) -> _ZipIndex:
    info = path.stat()
    key = (str(path), info.st_mtime_ns, info.st_size)
    with _ZIP_CACHE_LOCK:
        cached = _ZIP_CACHE.get(key)
        if cached is not None:
            _ZIP_CACHE.move_to_end(key)
            return cached
        index = _build_zip_index(path)
        _ZIP_CACHE[key] = index
        while len(_ZIP_CACHE) > _ZIP_CACHE_SIZE:
            # Not closed here: another thread may still be reading from it; GC closes it.
            _ZIP_CACHE.popitem(last=False)
        return index


def _build_zip_index(path: Path) -> _ZipIndex:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedSourceError(
            f"{path} is not a readable zip archive ({exc}). Re-create the archive, or extract "
            "it and pass the folder."
        ) from exc
    members: dict[str, zipfile.ZipInfo] = {}
    skipped: list[SkippedFile] = []
    for info in archive.infolist():
        if info.is_dir() or not _is_relevant_suffix(info.filename):
            continue
        is_image = PurePosixPath(info.filename).suffix.lower() in SUPPORTED_EXTENSIONS
        rel_path, problem = _normalise_member_name(info.filename)
        if rel_path is None:
            continue  # hidden or __MACOSX
        if problem is None and rel_path in members:
            problem = f"duplicate entry for {rel_path!r} in the archive; the first one is used"
        if problem is not None:
            if is_image:
                skipped.append(SkippedFile(info.filename, problem))
            continue
        members[rel_path] = info
    return _ZipIndex(archive, members, skipped)


def _normalise_member_name(name: str) -> tuple[str | None, str | None]:
    """-> (POSIX relative path, why it is unsafe); path None means "ignore silently"."""
    # Some Windows archivers write backslashes despite the zip spec.
    unified = name.replace("\\", "/")
    parts = unified.split("/")
    if unified.startswith("/") or _DRIVE_PREFIX.match(unified) or ".." in parts:
        # Checked before the hidden-name rule, which would otherwise hide "../x.png".
        return unified, "unsafe path in archive (absolute or with '..'); it was not read"
    kept = [part for part in parts if part not in ("", ".")]
    if not kept or any(_is_ignored_name(part) for part in kept):
        return None, None
    return "/".join(kept), None


# --------------------------------------------------------------------------- reading


def read_bytes(root: str | os.PathLike[str], rel_path: str) -> bytes:
    """Bytes of one image under a folder or zip root, as named by ``ImageRecord.rel_path``."""
    source = _open_source(root)
    try:
        data, _ = source.read(rel_path)
    except _READ_ERRORS as exc:
        raise ImageDecodeError(
            f"Cannot read {rel_path!r} from {source.root}: {_read_reason(exc)}. "
            "The dataset changed since it was scanned; re-scan it."
        ) from exc
    return data


def _read_reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- scanning


ProgressCallback = Callable[[int, int], None]


def scan(
    source: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    workers: int = 4,
    cache_dir: str | os.PathLike[str] | None = None,
    known: Callable[[str], Mapping[str, ImageRecord]] | None = None,
) -> ScanResult:
    """Hash and decode every image under ``source``; bad files become ``SkippedFile``.

    ``known(root)`` may return the records of an earlier scan of the same root (by
    rel_path): a file whose size and mtime are unchanged (and whose thumbnail exists) keeps
    its record without being read again, so rescanning a large folder is cheap.

    ``progress(done, total)`` runs on the calling thread (so UI code may use it), first with
    ``done == 0`` and then once per finished file; an exception from it cancels the scan.
    With ``cache_dir``, thumbnails are written from the image already decoded for checking.
    """
    if workers < 1:
        raise InvalidInputError(f"workers must be at least 1, got {workers}.")
    src = _open_source(source)
    listing = src.listing()
    result = ScanResult(root=str(src.root), skipped=list(listing.skipped))
    total = len(listing.candidates)
    previous = known(result.root) if known is not None else {}
    if progress is not None:
        progress(0, total)
    for record, skipped in _run_pool(src, listing.candidates, workers, cache_dir, progress, previous):
        if record is not None:
            result.records.append(record)
        result.skipped.extend(skipped)
    result.records.sort(key=lambda r: r.rel_path)
    result.skipped.sort(key=lambda s: (s.rel_path, s.reason))
    return result


_Outcome = tuple[ImageRecord | None, list[SkippedFile]]


def _run_pool(
    src: _Source,
    candidates: list[_Candidate],
    workers: int,
    cache_dir: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
    previous: Mapping[str, ImageRecord],
) -> Iterator[_Outcome]:
    total = len(candidates)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replens-scan") as pool:
        pending: set[Future[_Outcome]] = {
            pool.submit(_scan_one, src, candidate, cache_dir, previous.get(candidate.rel_path))
            for candidate in candidates
        }
        done_count = 0
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
                    done_count += 1
                    if progress is not None:
                        progress(done_count, total)
        finally:
            # On error or cancellation, do not decode the rest of a large dataset first.
            for future in pending:
                future.cancel()


def _scan_one(
    src: _Source,
    candidate: _Candidate,
    cache_dir: str | os.PathLike[str] | None,
    previous: ImageRecord | None = None,
) -> _Outcome:
    rel_path = candidate.rel_path
    if previous is not None and _unchanged(src, previous, cache_dir):
        caption, caption_problem = _read_caption(src, candidate.caption_rel_path)
        return replace(previous, caption=caption), [caption_problem] if caption_problem else []
    try:
        data, mtime = src.read(rel_path)
    except _READ_ERRORS as exc:
        return None, [SkippedFile(rel_path, f"cannot read file: {_read_reason(exc)}")]
    digest = content_hash(data)
    try:
        decoded = _decode(data, (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    except _DecodeFailure as exc:
        return None, [SkippedFile(rel_path, exc.reason)]
    if cache_dir is not None:
        ensure_thumbnail(cache_dir, digest, image=decoded.image)
    caption, caption_problem = _read_caption(src, candidate.caption_rel_path)
    record = ImageRecord(
        content_hash=digest,
        rel_path=rel_path,
        labels=tuple(rel_path.split("/")[src.label_skip:-1]),
        width=decoded.width,
        height=decoded.height,
        n_bytes=len(data),
        format=decoded.format,
        mtime=mtime,
        caption=caption,
    )
    return record, [caption_problem] if caption_problem else []


def _unchanged(src: _Source, previous: ImageRecord, cache_dir: str | os.PathLike[str] | None) -> bool:
    try:
        n_bytes, mtime = src.stat(previous.rel_path)
    except _READ_ERRORS:
        return False  # let the full path report why it cannot be read
    same_file = n_bytes == previous.n_bytes and abs(mtime - previous.mtime) < 1e-3
    return same_file and (cache_dir is None or thumbnail_path(cache_dir, previous.content_hash).exists())


def _read_caption(src: _Source, rel_path: str | None) -> tuple[str | None, SkippedFile | None]:
    """An unreadable caption is reported but does not cost the image its record."""
    if rel_path is None:
        return None, None
    try:
        raw, _ = src.read(rel_path)
    except _READ_ERRORS as exc:
        return None, SkippedFile(rel_path, f"cannot read caption: {_read_reason(exc)}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Keep the readable part of a legacy-encoded caption rather than dropping it.
        text = raw.decode("utf-8", errors="replace")
    text = _strip_translations(text).strip()
    return (text or None), None


# Tux Paint-style sidecars put translations after the caption as "fr.utf8=…" lines.
_TRANSLATION_LINE = re.compile(r"^[A-Za-z]{2,3}(?:_[A-Za-z]{2})?(?:@[A-Za-z]+)?\.utf8=")


def _strip_translations(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not _TRANSLATION_LINE.match(line))
