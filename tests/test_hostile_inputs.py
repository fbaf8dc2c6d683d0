"""The hostile-input catalogue (issue 11): what a stranger's folder, .zip, vectors file or
``.replens`` snapshot can hold that is broken or hostile, one table, one case per row.

Every case runs the way users ingest: ``core.datasets.ingest_path`` of a folder and, where the
case can exist inside a zip, of a .zip of that same folder, into a real DuckDB store. Beside each
hostile file lie three good images, and every run asserts the exact outcome:

* ``Ingested(rel_path, check)``: stored under that path, ``check`` looks at the stored record and
  the thumbnail the scan wrote (pixels, size, format);
* ``Skipped(rel_path, reason)``: reported among the dataset's skipped files with a reason that
  contains ``reason`` (what is wrong with *that* file);
* and nothing else: the set of stored paths is exactly the good files plus the ``Ingested`` ones,
  the set of skipped paths exactly the ``Skipped`` ones.

A source that cannot be a dataset at all, a hostile snapshot and a hostile vectors file are
``Refused(error, message)``: a typed RepLens error, and every table's row count and the cache
unchanged. Every fixture is generated here, in tmp_path; nothing binary is committed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import struct
import subprocess
import threading
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from PIL import Image
from test_snapshots import build_world, forge_declared_size, resealed, with_table, write_zip

from conftest import PYTHON, REPO_ROOT
from core import images, snapshots
from core.datasets import ingest_path
from core.errors import ImportFormatError, NoImagesFoundError, RepLensError, UnsupportedSourceError
from core.importer import import_embeddings
from core.snapshots import SnapshotFormatError
from core.store import Store

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
YELLOW, MAGENTA, CYAN = (255, 255, 0), (255, 0, 255), (0, 255, 255)
WHITE, GREY = (255, 255, 255), (128, 128, 128)  # GREY: what transparency is composited on
RGB = tuple[int, int, int]


# --------------------------------------------------------------------------- image makers


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def solid(colour: RGB, size: tuple[int, int] = (16, 16), fmt: str = "PNG", **params: Any) -> bytes:
    return encode(Image.new("RGB", size, colour), fmt, **params)


def noise_jpeg(seed: int = 3, side: int = 96) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def halves(left: Any, right: Any, mode: str, size: tuple[int, int] = (16, 8), **params: Any) -> bytes:
    """A PNG whose left half is ``left`` and right half ``right`` (in ``mode``)."""
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return encode(img, "PNG", **params)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking RGB PNG whose header declares ``width`` x ``height`` but holds 100 bytes of pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(100)))
        + png_chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A 4x4 GIF whose logical screen and first frame are rewritten to declare ``width`` x ``height``."""
    data = bytearray(encode(Image.new("P", (4, 4), 0), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)
    descriptor = data.index(b",", 13)  # the first image descriptor follows the global colour table
    struct.pack_into("<HH", data, descriptor + 5, width, height)
    return bytes(data)


def damaged_png_header() -> bytes:
    data = bytearray(solid(GREEN))
    data[16] ^= 0xFF  # a byte of the IHDR width: its CRC no longer matches
    return bytes(data)


def damaged_jpeg_header() -> bytes:
    data = bytearray(noise_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = bytes(4)  # height and width 0: no decoder accepts the frame
    return bytes(data)


def animated(fmt: str, **params: Any) -> bytes:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)


def palette_with_transparency() -> bytes:
    img = Image.new("P", (16, 8), 0)
    img.putpalette([255, 255, 255, 0, 255, 0] + [0, 0, 0] * 254)
    img.paste(1, (0, 0, 8, 8))  # left half green; right half index 0, white but transparent
    return encode(img, "PNG", transparency=0)


def grey16() -> bytes:
    """16-bit grey in three columns: 0, half scale (32896) and full scale (65535)."""
    img = Image.new("I;16", (48, 16))
    for x in range(48):
        for y in range(16):
            img.putpixel((x, y), (0, 32896, 65535)[x // 16])
    return encode(img, "PNG")


# EXIF orientation: a 3x2 grid of coloured 16 px blocks, stored as is, with the tag saying how to
# show it. The expected displayed grid comes from the EXIF/TIFF definition of each value (where
# the stored 0th row and 0th column go), written here with numpy, not with Pillow's transpose.
EXIF_GRID = np.array([[0, 1, 2], [3, 4, 5]])
EXIF_COLOURS = (RED, GREEN, BLUE, YELLOW, MAGENTA, CYAN)
DISPLAYED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,  # 0th row top, 0th column left
    2: lambda a: a[:, ::-1],  # 0th row top, 0th column right
    3: lambda a: a[::-1, ::-1],  # 0th row bottom, 0th column right
    4: lambda a: a[::-1, :],  # 0th row bottom, 0th column left
    5: lambda a: a.T,  # 0th row left, 0th column top
    6: lambda a: np.rot90(a, -1),  # 0th row right, 0th column top
    7: lambda a: a[::-1, ::-1].T,  # 0th row right, 0th column bottom
    8: lambda a: np.rot90(a, 1),  # 0th row left, 0th column bottom
}


def exif_oriented(orientation: int) -> bytes:
    rows, cols = EXIF_GRID.shape
    img = Image.new("RGB", (cols * 16, rows * 16))
    for r in range(rows):
        for c in range(cols):
            img.paste(EXIF_COLOURS[EXIF_GRID[r, c]], (c * 16, r * 16, c * 16 + 16, r * 16 + 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95, subsampling=0)


def zip_bytes(entries: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def content_hash(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)  # computed here, not by the code under test


# --------------------------------------------------------------------------- zip forgery


def patch_member_headers(
    path: Path, name: str, *, flags: int = 0, method: int | None = None, file_size: int | None = None
) -> None:
    """Rewrite what the central directory and the local header state about member ``name``."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    # (signature, offset of flags, of method, of uncompressed size, of name length, of name)
    for sig, flags_at, method_at, size_at, name_len_at, name_at in (
        (b"PK\x01\x02", 8, 10, 24, 28, 46),
        (b"PK\x03\x04", 6, 8, 22, 26, 30),
    ):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            n = struct.unpack_from("<H", data, i + name_len_at)[0]
            if data[i + name_at : i + name_at + n] == encoded:
                old_flags = struct.unpack_from("<H", data, i + flags_at)[0]
                struct.pack_into("<H", data, i + flags_at, old_flags | flags)
                if method is not None:
                    struct.pack_into("<H", data, i + method_at, method)
                if file_size is not None:
                    struct.pack_into("<I", data, i + size_at, file_size)
            start = i + 4
    path.write_bytes(bytes(data))


def garble_member_data(path: Path, name: str, skip: int = 12) -> None:
    """Overwrite the middle of member ``name``'s compressed data, leaving its headers intact."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len + skip
    data[start : start + 48] = b"\xa5" * 48
    path.write_bytes(bytes(data))


def rename_member_bytes(path: Path, old: bytes, new: bytes) -> None:
    """Replace a member's raw name bytes (same length) in every header, keeping its UTF-8 flag."""
    assert len(old) == len(new)
    path.write_bytes(path.read_bytes().replace(old, new))


def add_member(zf: zipfile.ZipFile, name: str, data: bytes, *, mode: int | None = None, method: int = 0) -> None:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = method
    if mode is not None:
        info.create_system = 3  # Unix: the mode bits below mean what they say
        info.external_attr = mode << 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name" is what one case wants
        zf.writestr(info, data)


# --------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Got:
    """An ingested path as the store holds it, with the thumbnail its scan wrote."""

    rel_path: str
    content_hash: str
    labels: tuple[str, ...]
    width: int
    height: int
    format: str
    n_paths: int
    thumbnail: Image.Image


@dataclass(frozen=True)
class Ingested:
    rel_path: str
    check: Callable[[Got], None] | None = None


@dataclass(frozen=True)
class Skipped:
    rel_path: str
    reason: str  # a substring of the stored reason


@dataclass(frozen=True)
class Refused:
    error: type[RepLensError]
    message: str  # a substring of str(error)


Outcome = tuple[Ingested | Skipped, ...]


def near(actual: object, expected: RGB, tol: int) -> bool:
    assert isinstance(actual, tuple), actual
    return all(abs(int(a) - e) <= tol for a, e in zip(actual[:3], expected, strict=True))


def image(
    *,
    fmt: str | None = None,
    size: tuple[int, int] | None = None,
    colours: Mapping[tuple[float, float], RGB] | None = None,
    tol: int = 40,
    labels: tuple[str, ...] | None = None,
    n_paths: int = 1,
) -> Callable[[Got], None]:
    """A check on an ingested image; ``colours`` maps (x, y) as fractions of the thumbnail to RGB."""

    def check(got: Got) -> None:
        if fmt is not None:
            assert got.format == fmt
        if size is not None:
            assert (got.width, got.height) == size
            # The thumbnail keeps the aspect ratio: longest side THUMBNAIL_SIZE, the other scaled.
            scale = images.THUMBNAIL_SIZE / max(size)
            assert got.thumbnail.size == (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        if labels is not None:
            assert got.labels == labels
        assert got.n_paths == n_paths
        w, h = got.thumbnail.size
        for (fx, fy), rgb in (colours or {}).items():
            pixel = got.thumbnail.getpixel((min(w - 1, int(fx * w)), min(h - 1, int(fy * h))))
            assert near(pixel, rgb, tol), (got.rel_path, (fx, fy), pixel, rgb)

    return check


def oriented(orientation: int) -> Callable[[Got], None]:
    shown = DISPLAYED[orientation](EXIF_GRID)
    rows, cols = shown.shape
    colours = {
        ((c + 0.5) / cols, (r + 0.5) / rows): EXIF_COLOURS[shown[r, c]] for r in range(rows) for c in range(cols)
    }
    return image(fmt="JPEG", size=(cols * 16, rows * 16), colours=colours, tol=60)


# --------------------------------------------------------------------------- the catalogue

Maker = Callable[[], bytes]


@dataclass(frozen=True)
class Case:
    """One hostile input. ``files`` are written into the folder and the zip alike; ``folder`` and
    ``zip`` add what only that kind of source can hold; ``patch`` edits the finished zip's bytes."""

    id: str
    expect: Outcome
    files: Mapping[str, Maker] = field(default_factory=dict)
    folder: Callable[[Path, Path], None] | None = None  # (dataset folder, tmp_path)
    zip: Callable[[zipfile.ZipFile], None] | None = None
    patch: Callable[[Path], None] | None = None
    where: tuple[str, ...] = ("folder", "zip")
    unprivileged: bool = False  # run the ingest as a process without root's file-access override


def symlink(path: Path, target: Path | str) -> None:
    try:
        path.symlink_to(target)
    except OSError as exc:  # pragma: no cover - platforms without symlinks
        pytest.skip(f"cannot create symlinks here: {exc}")


def make_fifo(root: Path, _: Path) -> None:
    if not hasattr(os, "mkfifo"):  # pragma: no cover
        pytest.skip("no FIFOs on this platform")
    fifo = root / "pipe.png"
    os.mkfifo(fifo)

    def unblock_a_reader() -> None:
        # A scan that wrongly opens the FIFO blocks forever; a writer turns that into a failure.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and fifo.exists():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            time.sleep(0.2)

    threading.Thread(target=unblock_a_reader, daemon=True).start()


def make_device(root: Path, _: Path) -> None:
    try:
        os.mknod(root / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: endless bytes
    except (PermissionError, AttributeError) as exc:  # pragma: no cover - needs CAP_MKNOD
        pytest.skip(f"cannot create a device node here: {exc}")


def link_loop_to_root(root: Path, _: Path) -> None:
    (root / "loops").mkdir()
    symlink(root / "loops" / "back", root)


def mutual_link_loop(root: Path, _: Path) -> None:
    (root / "a").mkdir()
    (root / "b").mkdir()
    (root / "a" / "x.png").write_bytes(solid((10, 200, 10)))
    (root / "b" / "y.png").write_bytes(solid((10, 10, 200)))
    symlink(root / "a" / "to_b", root / "b")
    symlink(root / "b" / "to_a", root / "a")


def self_link(root: Path, _: Path) -> None:
    symlink(root / "self.png", root / "self.png")


def folder_link_outside(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.png").write_bytes(solid((1, 2, 3)))
    symlink(root / "door", outside)


def file_link_outside(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(solid((4, 5, 6)))
    symlink(root / "secret.png", tmp_path / "secret.png")


def etc_link(root: Path, _: Path) -> None:
    symlink(root / "etc", "/etc")
    symlink(root / "passwd.png", "/etc/passwd")


def file_link_inside(root: Path, _: Path) -> None:
    symlink(root / "alias.png", root / "good" / "a.png")


def folder_link_inside(root: Path, _: Path) -> None:
    (root / "all" / "cats").mkdir(parents=True)
    (root / "all" / "cats" / "c1.png").write_bytes(solid((90, 60, 30)))
    (root / "train").mkdir()
    symlink(root / "train" / "cats", root / "all" / "cats")
    symlink(root / "train" / "cats_again", root / "all" / "cats")


def broken_link(root: Path, _: Path) -> None:
    symlink(root / "gone.png", root / "nowhere.png")


def non_utf8_name(root: Path, _: Path) -> None:
    os.makedirs(os.fsencode(root / "sub"), exist_ok=True)
    with open(os.fsencode(root) + b"/\xff\xfe.png", "wb") as fh:
        fh.write(solid((7, 7, 7)))
    os.mkdir(os.fsencode(root) + b"/bad\xffdir")
    with open(os.fsencode(root) + b"/bad\xffdir/inside.png", "wb") as fh:
        fh.write(solid((8, 8, 8)))


def locked_file(root: Path, _: Path) -> None:
    (root / "locked.png").write_bytes(solid((9, 9, 9)))
    os.chmod(root / "locked.png", 0)


def locked_folder(root: Path, _: Path) -> None:
    (root / "locked").mkdir()
    (root / "locked" / "in.png").write_bytes(solid((11, 11, 11)))
    os.chmod(root / "locked", 0)


def zip_member(name: str, data: Maker, **kw: Any) -> Callable[[zipfile.ZipFile], None]:
    return lambda zf: add_member(zf, name, data(), **kw)


def bomb_member(zf: zipfile.ZipFile) -> None:
    add_member(zf, "bomb.bmp", bytes(32 << 20), method=zipfile.ZIP_DEFLATED)  # 32 MiB of zeros: ~32 KiB


def two_members(zf: zipfile.ZipFile) -> None:
    add_member(zf, "twice.png", solid(RED))
    add_member(zf, "twice.png", solid(BLUE))


def slip_members(zf: zipfile.ZipFile) -> None:
    for name in ("../evil.png", "a/../../evil2.png", "/abs/evil.png", "C:/win/evil.png", "..\\evil3.png"):
        add_member(zf, name, solid(RED))


RED_PNG: Maker = lambda: solid(RED)

CASES: list[Case] = [
    # -- broken files
    Case("truncated-jpeg", (Skipped("cut.jpg", "truncated file"),), {"cut.jpg": lambda: noise_jpeg()[:1500]}),
    Case(
        "corrupt-png-header",
        (Skipped("hdr.png", "starts like a PNG image but its header is damaged"),),
        {"hdr.png": damaged_png_header},
    ),
    Case(
        "corrupt-jpeg-header",
        (Skipped("hdr.jpg", "starts like a JPEG image but its header is damaged"),),
        {"hdr.jpg": damaged_jpeg_header},
    ),
    Case("zero-byte", (Skipped("empty.png", "the file is empty (0 bytes)"),), {"empty.png": lambda: b""}),
    Case(
        "text-named-jpg",
        (Skipped("notes.jpg", "the file holds text, not an image"),),
        {"notes.jpg": lambda: b"Dear diary, today I renamed a text file.\n"},
    ),
    Case(
        "html-named-png",
        (Skipped("page.png", "the file holds HTML markup, not an image"),),
        {"page.png": lambda: b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"},
    ),
    Case(
        "eps-named-png-never-reaches-ghostscript",
        (Skipped("drawing.png", "the file is a PostScript file, not an image"),),
        {"drawing.png": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"},
    ),
    Case(
        "heic-named-jpg",
        (Skipped("phone.jpg", "the file is a HEIC image, not a format RepLens reads"),),
        {"phone.jpg": lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)},
    ),
    Case(
        "png-named-jpg",
        (Ingested("actually_png.jpg", image(fmt="PNG", size=(16, 16), colours={(0.5, 0.5): MAGENTA}, tol=12)),),
        {"actually_png.jpg": lambda: solid(MAGENTA)},
    ),
    # -- decompression bombs: refused from the header, before a pixel buffer exists
    Case(
        "decompression-bomb-png",
        (Skipped("bomb.png", "decompression bomb: Image size (10000000000 pixels) exceeds limit"),),
        {"bomb.png": lambda: png_declaring(100_000, 100_000)},
    ),
    Case(
        "decompression-bomb-gif",
        (Skipped("bomb.gif", "decompression bomb: Image size (4294836225 pixels) exceeds limit"),),
        {"bomb.gif": lambda: gif_declaring(65535, 65535)},
    ),
    # -- unusual but valid pictures: ingested, and they look right
    Case(
        "cmyk-jpeg",
        (Ingested("cmyk.jpg", image(fmt="JPEG", size=(16, 16), colours={(0.5, 0.5): RED})),),
        {"cmyk.jpg": lambda: encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)},
    ),
    Case(
        "sixteen-bit-grey-scaled-not-clipped",
        (
            Ingested(
                "grey16.png",
                image(
                    fmt="PNG",
                    size=(48, 16),
                    colours={(1 / 6, 0.5): (0, 0, 0), (0.5, 0.5): GREY, (5 / 6, 0.5): WHITE},
                    tol=12,
                ),
            ),
        ),
        {"grey16.png": grey16},
    ),
    Case(
        "palette-with-transparency",
        (Ingested("pal.png", image(fmt="PNG", colours={(0.2, 0.5): GREEN, (0.8, 0.5): GREY}, tol=12)),),
        {"pal.png": palette_with_transparency},
    ),
    Case(
        "la-grey-with-alpha",
        (Ingested("la.png", image(fmt="PNG", colours={(0.2, 0.5): WHITE, (0.8, 0.5): GREY}, tol=12)),),
        {"la.png": lambda: halves((255, 255), (0, 0), "LA")},
    ),
    Case(
        "rgba-with-alpha",
        (Ingested("rgba.png", image(fmt="PNG", colours={(0.2, 0.5): RED, (0.8, 0.5): GREY}, tol=12)),),
        {"rgba.png": lambda: halves((255, 0, 0, 255), (0, 0, 0, 0), "RGBA")},
    ),
    Case(
        "animated-gif-first-frame",
        (Ingested("anim.gif", image(fmt="GIF", size=(16, 16), colours={(0.5, 0.5): RED}, tol=12)),),
        {"anim.gif": lambda: animated("GIF")},
    ),
    Case(
        "animated-webp-first-frame",
        (Ingested("anim.webp", image(fmt="WEBP", size=(16, 16), colours={(0.5, 0.5): RED}, tol=12)),),
        {"anim.webp": lambda: animated("WEBP", lossless=True)},
    ),
    *(
        Case(
            f"exif-orientation-{k}",
            (Ingested(f"exif{k}.jpg", oriented(k)),),
            {f"exif{k}.jpg": lambda k=k: exif_oriented(k)},
        )
        for k in range(1, 9)
    ),
    Case(
        "one-by-one",
        (Ingested("dot.png", image(fmt="PNG", size=(1, 1), colours={(0.5, 0.5): (200, 100, 50)}, tol=12)),),
        {"dot.png": lambda: solid((200, 100, 50), (1, 1))},
    ),
    Case(
        "twenty-thousand-by-ten",
        (Ingested("strip.png", image(fmt="PNG", size=(20_000, 10), colours={(0.5, 0.5): CYAN}, tol=12)),),
        {"strip.png": lambda: solid(CYAN, (20_000, 10))},
    ),
    # -- names
    Case(
        "unicode-and-space-names",
        (
            Ingested("ünïcødé 名前/é ü.png", image(labels=("ünïcødé 名前",))),
            Ingested("  leading and trailing  .png", image(labels=())),
        ),
        {
            "ünïcødé 名前/é ü.png": lambda: solid((1, 50, 99)),
            "  leading and trailing  .png": lambda: solid((2, 50, 99)),
        },
    ),
    Case(
        "newline-and-tab-in-names",
        (Ingested("line\nbreak/tab\there.png", image(labels=("line\nbreak",))),),
        {"line\nbreak/tab\there.png": lambda: solid((3, 50, 99))},
    ),
    Case(
        "markup-in-names",
        (
            Ingested("<b>bold</b>.png", image(labels=("<b>bold<",))),
            Ingested("<script>alert(1)</script>.png", image(labels=("<script>alert(1)<",))),
            Ingested("&amp;'\".png", image(labels=())),
        ),
        {
            "<b>bold</b>.png": lambda: solid((4, 50, 99)),
            "<script>alert(1)</script>.png": lambda: solid((5, 50, 99)),
            "&amp;'\".png": lambda: solid((6, 50, 99)),
        },
    ),
    Case(
        "folder-named-like-an-image",
        (Ingested("dir.png/inside.png", image(labels=("dir.png",))),),
        {"dir.png/inside.png": lambda: solid((7, 50, 99))},
    ),
    Case(
        "non-utf8-names",
        (
            Skipped("\\xff\\xfe.png", "file name is not valid UTF-8"),
            Skipped("bad\\xffdir", "folder name is not valid UTF-8; its files were not scanned"),
        ),
        folder=lambda root, tmp: non_utf8_name(root, tmp),
        where=("folder",),
    ),
    Case(
        "duplicate-content-under-two-names",
        (
            Ingested("dup/one.png", image(n_paths=2, colours={(0.5, 0.5): (77, 88, 99)}, tol=12)),
            Ingested("dup/two.png", image(n_paths=2, colours={(0.5, 0.5): (77, 88, 99)}, tol=12)),
        ),
        {"dup/one.png": lambda: solid((77, 88, 99)), "dup/two.png": lambda: solid((77, 88, 99))},
    ),
    # -- special files and links (a folder can hold them; a zip is checked separately below)
    Case(
        "fifo-named-png",
        (Skipped("pipe.png", "cannot read file: not a regular file"),),
        folder=make_fifo,
        where=("folder",),
    ),
    Case(
        "device-named-png",
        (Skipped("zero.png", "cannot read file: not a regular file"),),
        folder=make_device,
        where=("folder",),
    ),
    Case(
        "symlink-loop-to-root",
        (Skipped("loops/back", "symbolic link loop"),),
        folder=link_loop_to_root,
        where=("folder",),
    ),
    Case(
        "symlink-mutual-loop",
        (
            Ingested("a/x.png"),
            Ingested("b/y.png"),
            Ingested("a/to_b/y.png", image(n_paths=2)),
            Ingested("b/to_a/x.png", image(n_paths=2)),
            Skipped("a/to_b/to_a", "symbolic link loop"),
            Skipped("b/to_a/to_b", "symbolic link loop"),
        ),
        folder=mutual_link_loop,
        where=("folder",),
    ),
    Case(
        "symlink-to-itself",
        (Skipped("self.png", "symbolic link loop: following it never reaches a file or folder"),),
        folder=self_link,
        where=("folder",),
    ),
    Case(
        "symlink-folder-outside-root",
        (Skipped("door", "symbolic link to a folder outside the dataset root; not followed"),),
        folder=folder_link_outside,
        where=("folder",),
    ),
    Case(
        "symlink-file-outside-root",
        (Skipped("secret.png", "symbolic link to a file outside the dataset root; not read"),),
        folder=file_link_outside,
        where=("folder",),
    ),
    Case(
        "symlinks-to-etc",
        (
            Skipped("etc", "symbolic link to a folder outside the dataset root"),
            Skipped("passwd.png", "symbolic link to a file outside the dataset root"),
        ),
        folder=etc_link,
        where=("folder",),
    ),
    Case(
        "symlink-file-inside-root",
        (Ingested("alias.png", image(n_paths=2)),),
        folder=file_link_inside,
        where=("folder",),
    ),
    Case(
        "symlink-folders-inside-root-followed-once",
        (
            Ingested("all/cats/c1.png", image(n_paths=2, labels=("all", "cats"))),
            Ingested("train/cats/c1.png", image(n_paths=2, labels=("train", "cats"))),
            Skipped("train/cats_again", "already scanned through the link 'train/cats'"),
        ),
        folder=folder_link_inside,
        where=("folder",),
    ),
    Case("broken-symlink", (Skipped("gone.png", "broken symbolic link"),), folder=broken_link, where=("folder",)),
    Case(
        "unreadable-file",
        (Skipped("locked.png", "cannot read file: permission denied"),),
        folder=locked_file,
        where=("folder",),
        unprivileged=True,
    ),
    Case(
        "unreadable-folder",
        (Skipped("locked", "cannot list folder: permission denied"),),
        folder=locked_folder,
        where=("folder",),
        unprivileged=True,
    ),
    # -- archives inside the dataset: never opened, always reported
    Case(
        "nested-zip",
        (Skipped("inner/more.zip", "archive (.zip) inside the dataset: archives within a dataset are not opened"),),
        {"inner/more.zip": lambda: zip_bytes({"hidden.png": solid(RED)})},
    ),
    Case(
        "nested-tarball",
        (Skipped("more.tar.gz", "archive (.tar.gz) inside the dataset"),),
        {"more.tar.gz": lambda: b"\x1f\x8b\x08\x00" + bytes(20)},
    ),
    # -- hostile zip members (a folder cannot hold these)
    Case(
        "zip-slip-and-absolute-paths",
        tuple(
            Skipped(n, "unsafe path in archive (absolute or with '..'); it was not read")
            for n in ("../evil.png", "a/../../evil2.png", "/abs/evil.png", "C:/win/evil.png", "..\\evil3.png")
        ),
        zip=slip_members,
        where=("zip",),
    ),
    Case(
        "zip-bomb-by-ratio",
        (Skipped("bomb.bmp", "zip bomb: archive member inflates"),),
        zip=bomb_member,
        where=("zip",),
    ),
    Case(
        "zip-member-declares-4-gib",
        (Skipped("huge.png", "archive member declares 4294967040 bytes uncompressed, more than the"),),
        zip=zip_member("huge.png", RED_PNG),
        patch=lambda p: patch_member_headers(p, "huge.png", file_size=0xFFFFFF00),
        where=("zip",),
    ),
    Case(
        "zip-member-understates-its-size",
        (Skipped("liar.png", "damaged archive member: its data does not match its CRC-32 checksum"),),
        zip=zip_member("liar.png", lambda: noise_jpeg(side=32)),
        patch=lambda p: patch_member_headers(p, "liar.png", file_size=100),
        where=("zip",),
    ),
    Case(
        "zip-corrupt-deflate-data",
        (Skipped("garbled.png", "damaged archive member: its compressed data cannot be inflated"),),
        zip=zip_member("garbled.png", lambda: noise_jpeg(side=32), method=zipfile.ZIP_DEFLATED),
        patch=lambda p: garble_member_data(p, "garbled.png"),
        where=("zip",),
    ),
    Case(
        "zip-corrupt-lzma-data",
        (Skipped("garbled.png", "damaged archive member: its compressed data cannot be inflated"),),
        zip=zip_member("garbled.png", lambda: noise_jpeg(side=32), method=zipfile.ZIP_LZMA),
        patch=lambda p: garble_member_data(p, "garbled.png"),
        where=("zip",),
    ),
    Case(
        "zip-encrypted-member",
        (Skipped("secret.png", "encrypted archive member"),),
        zip=zip_member("secret.png", RED_PNG),
        patch=lambda p: patch_member_headers(p, "secret.png", flags=0x1),
        where=("zip",),
    ),
    Case(
        "zip-unknown-compression-method",
        (Skipped("odd.png", "compression method 99, which RepLens cannot read"),),
        zip=zip_member("odd.png", RED_PNG),
        patch=lambda p: patch_member_headers(p, "odd.png", method=99),
        where=("zip",),
    ),
    Case(
        "zip-stored-symlink",
        (Skipped("link.png", "symbolic link stored in the archive; links are not followed"),),
        zip=zip_member("link.png", lambda: b"/etc/passwd", mode=stat.S_IFLNK | 0o777),
        where=("zip",),
    ),
    Case(
        "zip-duplicate-member",
        (Ingested("twice.png", image(colours={(0.5, 0.5): RED}, tol=12)), Skipped("twice.png", "duplicate entry")),
        zip=two_members,
        where=("zip",),
    ),
]


# Sources that cannot be a dataset at all: the whole ingest is refused with a typed error.
def empty_folder(tmp: Path) -> Path:
    (tmp / "src" / "docs").mkdir(parents=True)
    (tmp / "src" / "docs" / "readme.md").write_text("# nothing to see")
    (tmp / "src" / "notes.txt").write_text("a caption with no image")
    return tmp / "src"


def folder_of_broken_images(tmp: Path) -> Path:
    (tmp / "src").mkdir()
    (tmp / "src" / "a.png").write_bytes(b"")
    (tmp / "src" / "b.jpg").write_bytes(noise_jpeg()[:500])
    return tmp / "src"


def write_source(name: str, data: Maker) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data())
        return tmp / name

    return make


def zip_with_lying_utf8_name(tmp: Path) -> Path:
    path = tmp / "names.zip"
    path.write_bytes(zip_bytes({"good.png": solid(RED), "é.png": solid(BLUE)}))
    rename_member_bytes(path, "é.png".encode(), b"\xff\xfe.png"[: len("é.png".encode())])
    return path


def fifo_named_zip(tmp: Path) -> Path:
    if not hasattr(os, "mkfifo"):  # pragma: no cover
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tmp / "stream.zip")
    return tmp / "stream.zip"


SOURCES: dict[str, tuple[Callable[[Path], Path], Refused]] = {
    "folder-of-zero-images": (empty_folder, Refused(NoImagesFoundError, "0 images among 2 files")),
    "folder-of-only-broken-images": (
        folder_of_broken_images,
        Refused(NoImagesFoundError, "0 readable images among 2 files: 2 image file(s) could not be read"),
    ),
    "non-zip-named-zip": (
        write_source("fake.zip", lambda: b"this is a text file wearing a .zip name\n"),
        Refused(UnsupportedSourceError, "is not a readable zip archive"),
    ),
    "truncated-zip": (
        write_source("cut.zip", lambda: zip_bytes({f"{i}.png": solid((i, i, i)) for i in range(5)})[:300]),
        Refused(UnsupportedSourceError, "is not a readable zip archive"),
    ),
    "empty-zip": (
        write_source("empty.zip", lambda: zip_bytes({})),
        Refused(NoImagesFoundError, "0 images among 0 files"),
    ),
    "zip-name-lies-about-utf8": (
        zip_with_lying_utf8_name,
        Refused(UnsupportedSourceError, "a member name is marked as UTF-8 but is not"),
    ),
    "fifo-named-zip": (fifo_named_zip, Refused(UnsupportedSourceError, "is not a folder or a .zip archive")),
}


# A hostile .replens snapshot is refused whole (a snapshot is one unit): each builder writes the
# archive from the members of a valid export. Helpers shared with tests/test_snapshots.py.
Members = dict[str, bytes]


def snapshot_entries(make: Callable[[Members, list[str]], list[tuple[str | zipfile.ZipInfo, bytes]]]) -> Callable:
    return lambda members, hashes, path: write_zip(path, make(members, hashes))


def with_manifest_files(members: Members, name: str, **entry: Any) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    manifest = json.loads(members["manifest.json"])
    manifest["files"][name].update(entry)
    return list({**members, "manifest.json": json.dumps(manifest).encode()}.items())


def with_counts(members: Members, **counts: int) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    manifest = json.loads(members["manifest.json"])
    manifest["counts"].update(counts)
    return list({**members, "manifest.json": json.dumps(manifest).encode()}.items())


def forged_snapshot(name: str, size: int) -> Callable[[Members, list[str], Path], None]:
    def make(members: Members, hashes: list[str], path: Path) -> None:
        write_zip(path, list(members.items()))
        forge_declared_size(path, name, size)

    return make


def column_as(name: str, column: str, values: Callable[[list[Any]], pa.Array]) -> Callable:
    def change(table: pa.Table) -> pa.Table:
        at = table.schema.get_field_index(column)
        return table.set_column(at, column, values(table.column(column).to_pylist()))

    return snapshot_entries(lambda m, h: with_table(m, name, change))


def not_a_zip(members: Members, hashes: list[str], path: Path) -> None:
    path.write_text("a .replens name on a text file\n")


SNAPSHOTS: dict[str, tuple[Callable[[Members, list[str], Path], None], str]] = {
    "snapshot-manifest-lies-about-a-size": (
        snapshot_entries(lambda m, h: with_manifest_files(m, "points.parquet", bytes=len(m["points.parquet"]) + 7)),
        "but manifest.json says",
    ),
    "snapshot-manifest-lies-about-counts": (
        snapshot_entries(lambda m, h: with_counts(m, points=len(h) + 1)),
        "manifest.counts.points says",
    ),
    "snapshot-zip-header-understates-a-size": (
        forged_snapshot("points.parquet", 100),
        "points.parquet cannot be read from the archive",
    ),
    "snapshot-zip-header-declares-4-gib": (
        forged_snapshot("points.parquet", 0xFFFFFF00),
        "Member 'points.parquet' declares 4294967040 bytes, over its cap",
    ),
    "snapshot-thumbnail-is-markup": (
        snapshot_entries(lambda m, h: resealed(m, **{f"thumbs__{h[0]}_DOT_webp": b"<script>alert(1)</script>"})),
        "is not a valid WebP image",
    ),
    "snapshot-thumbnail-is-a-png": (
        snapshot_entries(lambda m, h: resealed(m, **{f"thumbs__{h[0]}_DOT_webp": solid(RED)})),
        "is not a valid WebP image",
    ),
    "snapshot-parquet-x-as-text": (
        column_as("points.parquet", "x", lambda v: pa.array([str(x) for x in v])),
        "column 'x' has type string, expected float32",
    ),
    "snapshot-parquet-cluster-as-float": (
        column_as("points.parquet", "cluster", lambda v: pa.array([float(x) for x in v])),
        "column 'cluster' has type double, expected integer",
    ),
    "snapshot-parquet-labels-as-int": (
        column_as("clusters.parquet", "label", lambda v: pa.array(list(range(len(v))))),
        "column 'label' has type int64, expected string",
    ),
    "snapshot-hash-mismatch": (
        snapshot_entries(lambda m, h: list({**m, "points.parquet": m["points.parquet"][:-1] + b"!"}.items())),
        "does not match the sha256 in manifest.json",
    ),
    "snapshot-member-path-traversal": (
        snapshot_entries(lambda m, h: [*m.items(), ("thumbs/../../evil.webp", b"x")]),
        "Unsafe member name",
    ),
    "snapshot-member-absolute-path": (
        snapshot_entries(lambda m, h: [*m.items(), ("/tmp/evil.webp", b"x")]),
        "Unsafe member name",
    ),
    "snapshot-content-id-mismatch": (
        snapshot_entries(
            lambda m, h: resealed(
                m, manifest_DOT_json=json.dumps({**json.loads(m["manifest.json"]), "title": "changed"}).encode()
            )
        ),
        "does not match its id",
    ),
    "snapshot-not-a-zip": (not_a_zip, "is not a readable .replens (zip) file"),
}


def npy_header_only(shape: tuple[int, ...]) -> bytes:
    """The header of a float32 .npy declaring ``shape``, followed by 64 bytes instead of the data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(64)


def npy_of(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def vectors_file(name: str, data: Callable[[], bytes]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data())
        return tmp / name

    return make


GOOD_IDS = np.array(sorted(GOOD_PATHS := ("good/a.png", "good/b.jpg", "c.webp")))
VECTORS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "vectors-npy-declares-terabytes": (
        vectors_file("v.npy", lambda: npy_header_only((10**7, 10**5))),
        "the array declares shape (10000000, 100000) (4000000000000 bytes) but holds only 64 bytes",
    ),
    "vectors-npz-declares-terabytes": (
        vectors_file(
            "v.npz", lambda: zip_bytes({"ids.npy": npy_of(GOOD_IDS), "vectors.npy": npy_header_only((10**7, 10**5))})
        ),
        "array 'vectors' declares shape (10000000, 100000)",
    ),
    "vectors-npy-pickled-objects": (
        vectors_file("v.npy", lambda: npy_of(np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)),
        "Object arrays cannot be loaded when allow_pickle=False",
    ),
    "vectors-truncated-npz": (
        vectors_file(
            "v.npz", lambda: zip_bytes({"ids.npy": npy_of(GOOD_IDS), "vectors.npy": npy_of(np.ones((3, 4)))})[:200]
        ),
        "Could not read v.npz",
    ),
    "vectors-binary-named-csv": (
        vectors_file("v.csv", lambda: np.random.default_rng(0).bytes(300)),
        "Could not read v.csv",
    ),
}


# --------------------------------------------------------------------------- running a case

GOOD: dict[str, Maker] = {
    "good/a.png": lambda: solid((30, 60, 90)),
    "good/b.jpg": lambda: noise_jpeg(seed=11, side=24),
    "c.webp": lambda: solid((90, 60, 30), (20, 12), "WEBP", lossless=True),
}


def write_tree(root: Path, files: Mapping[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def table_counts(store: Store) -> dict[str, int]:
    """Rows in every table of the database (a refused input must change none)."""
    # A store that closes its file when idle must not close it between these queries.
    keep_open = getattr(store, "connected", None)
    with keep_open() if keep_open is not None else contextlib.nullcontext():
        cur = store._cursor()
        names = [r[0] for r in cur.execute("SELECT table_name FROM duckdb_tables() ORDER BY table_name").fetchall()]
        return {n: int(cur.execute(f'SELECT count(*) FROM "{n}"').fetchall()[0][0]) for n in names}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".duckdb" not in p.name}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "db" / "replens.duckdb", tmp_path / "db" / "cache")
    yield store
    store.close()


def build_source(case: Case, where: str, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """The case's files beside the good ones, as a folder or as a .zip; -> (source, good files)."""
    good = {rel: make() for rel, make in GOOD.items()}
    hostile = {rel: make() for rel, make in case.files.items()}
    if where == "folder":
        root = tmp_path / "data"
        write_tree(root, {**good, **hostile})
        if case.folder is not None:
            case.folder(root, tmp_path)
        return root, good
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for rel, data in {**good, **hostile}.items():
            add_member(zf, rel, data)
        if case.zip is not None:
            case.zip(zf)
    if case.patch is not None:
        case.patch(archive)
    return archive, good


# Run in a child: lower CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2), the capabilities that let
# root read any file, then check that a mode-000 file is really unreadable, then `python -m core`.
# Threads the child starts later (the scan's pool, DuckDB's) inherit the lowered set.
UNPRIVILEGED = r"""
import ctypes, sys

class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

libc = ctypes.CDLL(None, use_errno=True)
header, data = Header(0x20080522, 0), (Data * 2)()
if hasattr(libc, "capget") and libc.capget(ctypes.byref(header), data) == 0:
    keep = ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    libc.capset(ctypes.byref(header), data)
try:
    open(sys.argv[1], "rb").close()
except PermissionError:
    pass
else:
    sys.exit(99)
from core.cli import main
sys.exit(main(sys.argv[2:]))
"""


def ingest_unprivileged(store: Store, source: Path, tmp_path: Path) -> None:
    """``python -m core ingest`` as a process that cannot read what its mode forbids, root or not."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    env = {
        **os.environ,
        "REPLENS_DB": str(store.path),
        "REPLENS_CACHE": str(store.cache_dir),
        "PYTHONPATH": str(REPO_ROOT),
    }
    args = [PYTHON, "-c", UNPRIVILEGED, str(probe), "ingest", str(source), "--dataset", "ds", "--json"]
    proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode == 99:  # pragma: no cover - e.g. a sandbox that forbids capset
        pytest.skip("cannot drop the capability to read any file here, so no file is unreadable")
    assert proc.returncode == 0, proc.stderr[-2000:]


def restore_modes(root: Path) -> None:
    """Undo chmod 0 so tmp_path can be cleaned up (and the store read) whoever runs the tests."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and stat.S_IMODE(os.lstat(path).st_mode) == 0:
                os.chmod(path, 0o700)  # before os.walk lists it, if it is a folder


def stored_outcome(store: Store) -> tuple[dict[str, Got], list[tuple[str, str]]]:
    paths = store.dataset_paths("ds")
    distinct = store.dataset_images("ds").set_index("content_hash")
    got: dict[str, Got] = {}
    for row in paths.itertuples():
        info = distinct.loc[row.content_hash]
        with Image.open(images.thumbnail_path(store.cache_dir, row.content_hash)) as thumb:
            rgb = thumb.convert("RGB")
        got[row.rel_path] = Got(
            row.rel_path,
            row.content_hash,
            tuple(row.labels),
            int(info["width"]),
            int(info["height"]),
            str(info["format"]),
            int(info["n_paths"]),
            rgb,
        )
    skipped = store.skipped_files("ds")
    return got, list(zip(skipped["rel_path"], skipped["reason"]))


RUNS = [pytest.param(case, where, id=f"{case.id}[{where}]") for case in CASES for where in case.where]


def test_the_catalogue_is_large_and_every_id_is_unique() -> None:
    ids = [c.id for c in CASES] + list(SOURCES) + list(SNAPSHOTS) + list(VECTORS)
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


@pytest.mark.parametrize(("case", "where"), RUNS)
def test_hostile_file_beside_good_ones(case: Case, where: str, tmp_path: Path, db: Store) -> None:
    source, good = build_source(case, where, tmp_path)
    try:
        if case.unprivileged:
            ingest_unprivileged(db, source, tmp_path)
        else:
            ingest_path(db, "ds", source)
    finally:
        restore_modes(tmp_path)
    got, skipped = stored_outcome(db)

    ingested = {e.rel_path: e for e in case.expect if isinstance(e, Ingested)}
    expected_skips = [e for e in case.expect if isinstance(e, Skipped)]
    # The good files beside the hostile one are all there, byte for byte.
    assert {rel: got[rel].content_hash for rel in good if rel in got} == {
        rel: content_hash(data) for rel, data in good.items()
    }
    # Exactly what the case says: nothing dropped in silence, nothing extra let in.
    assert sorted(got) == sorted(set(good) | set(ingested))
    assert sorted(rel for rel, _ in skipped) == sorted(e.rel_path for e in expected_skips), skipped
    for expected in expected_skips:
        reasons = [reason for rel, reason in skipped if rel == expected.rel_path]
        assert any(expected.reason in reason for reason in reasons), (expected, reasons)
    for rel, expected in ingested.items():
        if expected.check is not None:
            expected.check(got[rel])
    if where == "zip":  # a zip is read in place: nothing was extracted anywhere
        assert {p.parts[0] for p in map(Path, files_under(tmp_path))} <= {"data.zip", "db"}


@pytest.mark.parametrize("case_id", sorted(SOURCES))
def test_a_source_that_cannot_be_a_dataset_is_refused(case_id: str, tmp_path: Path, db: Store) -> None:
    make, refused = SOURCES[case_id]
    write_tree(tmp_path / "before", {rel: m() for rel, m in GOOD.items()})
    ingest_path(db, "before", tmp_path / "before")
    counts, cached = table_counts(db), files_under(tmp_path / "db")
    source = make(tmp_path)
    with pytest.raises(refused.error) as err:
        ingest_path(db, "ds", source)
    assert refused.message in str(err.value)
    assert table_counts(db) == counts
    assert files_under(tmp_path / "db") == cached
    assert db.dataset_names() == ["before"]


@pytest.fixture(scope="module")
def valid_snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Members, list[str], Path]:
    """(members of a valid export, its image hashes, the export itself), made once for the module."""
    root = tmp_path_factory.mktemp("snapshot")
    store = Store(root / "base.duckdb", root / "cache")
    try:
        world = build_world(store, root / "images")
        sid = snapshots.save_snapshot(store, "run1", title="base")
        path = snapshots.export_snapshot(store, sid, root / "base.replens").path
    finally:
        store.close()
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}, world.hashes, path


@pytest.mark.parametrize("case_id", sorted(SNAPSHOTS))
def test_a_hostile_snapshot_is_refused_and_changes_nothing(
    case_id: str, valid_snapshot: tuple[Members, list[str], Path], tmp_path: Path, db: Store
) -> None:
    members, hashes, valid = valid_snapshot
    make, message = SNAPSHOTS[case_id]
    snapshots.import_snapshot(db, valid)  # a database that already holds rows and thumbnails
    counts, cached = table_counts(db), files_under(tmp_path / "db")
    archive = tmp_path / "hostile.replens"
    make(members, hashes, archive)
    with pytest.raises(SnapshotFormatError) as err:
        snapshots.import_snapshot(db, archive)
    assert message in str(err.value)
    assert table_counts(db) == counts
    assert files_under(tmp_path / "db") == cached
    assert not (tmp_path / "evil.webp").exists() and not Path("/tmp/evil.webp").exists()


@pytest.mark.parametrize("case_id", sorted(VECTORS))
def test_a_hostile_vectors_file_is_refused_and_changes_nothing(case_id: str, tmp_path: Path, db: Store) -> None:
    make, message = VECTORS[case_id]
    write_tree(tmp_path / "data", {rel: m() for rel, m in GOOD.items()})
    ingest_path(db, "ds", tmp_path / "data")
    counts = table_counts(db)
    with pytest.raises(ImportFormatError) as err:
        import_embeddings(db, make(tmp_path), "ds", "hostile")
    assert message in str(err.value)
    assert table_counts(db) == counts
