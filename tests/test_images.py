"""Tests for core.images: scanning folders and zips, decoding edge cases, thumbnails."""

from __future__ import annotations

import io
import os
import threading
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import xxhash
from PIL import Image

from conftest import write_file as write
from core.errors import ImageDecodeError, InvalidInputError, UnsupportedSourceError
from core.images import (
    SUPPORTED_EXTENSIONS,
    THUMBNAIL_SIZE,
    ImageRecord,
    ScanResult,
    SkippedFile,
    content_hash,
    decode_rgb,
    ensure_thumbnail,
    image_features,
    read_bytes,
    scan,
    thumbnail_path,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
GREY = (128, 128, 128)


# --------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int], fmt: str, **params: object) -> bytes:
    return encode(Image.new("RGB", size, colour), fmt, **params)


def noise_png(size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)), "PNG")


def zip_folder(folder: Path, zip_path: Path, extra: Iterable[tuple[str, bytes]] = ()) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
        for name, data in extra:
            zf.writestr(name, data)
    return zip_path


def close(actual: object, expected: tuple[int, ...], tol: int) -> bool:
    """Per-channel comparison for lossy formats; ``actual`` is what ``getpixel`` returned."""
    assert isinstance(actual, tuple), actual
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def channel0(pixel: object) -> int:
    assert isinstance(pixel, tuple), pixel
    return int(pixel[0])


EXPECTED_RECORDS = [  # sorted by rel_path, plain string order
    "anim.gif",
    "animals/cats/red.PNG",
    "animals/dogs/blue.JPG",
    "animals/dogs/copy_of_red.png",
    "top.webp",
]
EXPECTED_SKIPPED = ["bad/corrupt.jpg", "bad/truncated.png"]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    red = solid(RED, (32, 24), "PNG")
    write(root, "animals/cats/red.PNG", red)
    write(root, "animals/cats/red.txt", "  a red square \n")
    write(root, "animals/dogs/blue.JPG", solid(BLUE, (40, 30), "JPEG"))
    write(root, "animals/dogs/copy_of_red.png", red)
    write(root, "top.webp", solid(GREEN, (20, 10), "WEBP"))
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    write(root, "anim.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    write(root, "bad/corrupt.jpg", np.random.default_rng(1).bytes(500))
    png = noise_png()
    write(root, "bad/truncated.png", png[: len(png) // 2])
    # Everything below must be ignored, neither recorded nor skipped.
    write(root, ".hidden/secret.png", red)
    write(root, ".dotfile.png", red)
    write(root, "__MACOSX/animals/._red.PNG", b"\x00\x05\x16\x07 resource fork")
    write(root, "animals/._blue.JPG", b"junk")
    write(root, "notes.md", "not an image")
    write(root, "photo.heic", b"unsupported extension")
    return root


# --------------------------------------------------------------------------- constants


def test_constants_match_the_interface() -> None:
    assert SUPPORTED_EXTENSIONS == frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
    assert THUMBNAIL_SIZE == 128


def test_content_hash_is_xxh3_128_hex() -> None:
    assert content_hash(b"abc") == xxhash.xxh3_128_hexdigest(b"abc")
    assert len(content_hash(b"")) == 32
    assert content_hash(b"abc") != content_hash(b"abd")


# --------------------------------------------------------------------------- folder scan


def test_scan_folder_records_and_skips(dataset: Path) -> None:
    result = scan(dataset)

    assert isinstance(result, ScanResult)
    assert result.root == str(dataset.resolve())
    assert [r.rel_path for r in result.records] == EXPECTED_RECORDS
    assert [s.rel_path for s in result.skipped] == EXPECTED_SKIPPED
    reasons = {s.rel_path: s.reason for s in result.skipped}
    assert reasons["bad/corrupt.jpg"].startswith("cannot identify image file: unknown file type (first bytes: ")
    assert reasons["bad/truncated.png"].startswith("truncated file")


def test_scan_folder_record_fields(dataset: Path) -> None:
    by_path = {r.rel_path: r for r in scan(dataset, workers=2).records}

    red = by_path["animals/cats/red.PNG"]
    red_bytes = (dataset / red.rel_path).read_bytes()
    assert red == ImageRecord(
        content_hash=xxhash.xxh3_128_hexdigest(red_bytes),
        rel_path="animals/cats/red.PNG",
        labels=("animals", "cats"),
        width=32,
        height=24,
        n_bytes=len(red_bytes),
        format="PNG",
        mtime=os.stat(dataset / red.rel_path).st_mtime,
        caption="a red square",
    )
    blue = by_path["animals/dogs/blue.JPG"]
    assert (blue.format, blue.width, blue.height) == ("JPEG", 40, 30)
    assert blue.labels == ("animals", "dogs")
    assert blue.caption is None
    assert by_path["top.webp"].labels == ()
    assert by_path["top.webp"].format == "WEBP"
    assert by_path["anim.gif"].format == "GIF"


def test_duplicate_bytes_give_two_records_with_one_hash(dataset: Path) -> None:
    by_path = {r.rel_path: r for r in scan(dataset).records}
    original = by_path["animals/cats/red.PNG"]
    copy = by_path["animals/dogs/copy_of_red.png"]
    assert original.content_hash == copy.content_hash
    assert copy.labels == ("animals", "dogs")
    assert copy.caption is None  # the caption belongs to the other path only


def test_scan_is_deterministic_across_worker_counts(dataset: Path) -> None:
    assert scan(dataset, workers=1) == scan(dataset, workers=3)


def test_scan_rejects_nonpositive_workers(dataset: Path) -> None:
    with pytest.raises(InvalidInputError, match="workers"):
        scan(dataset, workers=0)


def test_progress_reports_every_file_on_the_calling_thread(dataset: Path) -> None:
    calls: list[tuple[int, int]] = []
    scan(dataset, progress=lambda done, total: calls.append((done, total)))
    total = len(EXPECTED_RECORDS) + len(EXPECTED_SKIPPED)
    assert calls == [(i, total) for i in range(total + 1)]


def test_progress_exception_aborts_the_scan(dataset: Path) -> None:
    def cancel(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt  # what a UI "stop" would raise

    with pytest.raises(KeyboardInterrupt):
        scan(dataset, progress=cancel, workers=1)


def test_empty_caption_and_caption_with_uppercase_extension(tmp_path: Path) -> None:
    write(tmp_path, "a.png", solid(RED, (4, 4), "PNG"))
    write(tmp_path, "a.TXT", "\ufeffcaption with BOM\n")
    write(tmp_path, "b.png", solid(BLUE, (4, 4), "PNG"))
    write(tmp_path, "b.txt", "   \n")
    captions = {r.rel_path: r.caption for r in scan(tmp_path).records}
    assert captions == {"a.png": "caption with BOM", "b.png": None}


def test_fifo_named_like_an_image_is_skipped_not_read(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    finished = threading.Event()

    def unblock_reader() -> None:
        # If scan wrongly opens the FIFO it blocks forever; a writer makes this a failure instead.
        if finished.wait(3.0):
            return
        while not finished.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            finished.wait(0.1)

    threading.Thread(target=unblock_reader, daemon=True).start()
    try:
        result = scan(tmp_path)
    finally:
        finished.set()
    assert result.records == []
    assert result.skipped == [SkippedFile("pipe.png", "cannot read file: not a regular file")]


def test_linked_folders_inside_the_root_are_followed_but_outside_ones_and_loops_are_not(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root, "real/x.png", solid(RED, (4, 4), "PNG"))
    write(tmp_path, "elsewhere/y.png", solid(BLUE, (4, 4), "PNG"))
    try:
        (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        (root / "real" / "loop").symlink_to(root, target_is_directory=True)
        (root / "inside").symlink_to(root / "real", target_is_directory=True)
    except OSError:
        pytest.skip("cannot create symlinks here")
    result = scan(root)
    assert [r.rel_path for r in result.records] == ["inside/x.png", "real/x.png"]
    assert [(s.rel_path, s.reason.split(";")[0]) for s in result.skipped] == [
        ("inside/loop", "symbolic link loop: it points back to a folder that contains it"),
        ("linked", "symbolic link to a folder outside the dataset root"),
        ("real/loop", "symbolic link loop: it points back to a folder that contains it"),
    ]


def test_zip_scan_matches_folder_scan(dataset: Path, tmp_path: Path) -> None:
    archive = zip_folder(dataset, tmp_path / "data.zip", extra=[("__MACOSX/animals/cats/._red.PNG", b"fork")])
    folder = scan(dataset)
    zipped = scan(archive)

    def essence(result: ScanResult) -> list[tuple[object, ...]]:
        return [
            (r.rel_path, r.content_hash, r.labels, r.caption) + (r.width, r.height, r.format, r.n_bytes)
            for r in result.records
        ]

    assert zipped.root == str(archive.resolve())
    assert essence(zipped) == essence(folder)
    assert [s.rel_path for s in zipped.skipped] == EXPECTED_SKIPPED
    assert [s.reason for s in zipped.skipped] == [s.reason for s in folder.skipped]
    assert all(r.mtime > 0 for r in zipped.records)


def test_zip_with_backslash_and_dot_segments_is_normalised(tmp_path: Path) -> None:
    archive = tmp_path / "win.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats\\red.png", solid(RED, (4, 4), "PNG"))
        zf.writestr("./dogs//blue.png", solid(BLUE, (4, 4), "PNG"))
    records = scan(archive).records
    assert [(r.rel_path, r.labels) for r in records] == [
        ("cats/red.png", ("cats",)),
        ("dogs/blue.png", ("dogs",)),
    ]
    assert Image.open(io.BytesIO(read_bytes(archive, "cats/red.png"))).getpixel((0, 0)) == RED


def test_zip_slip_member_names_are_skipped_and_never_read(tmp_path: Path) -> None:
    outside = write(tmp_path, "evil.png", solid(RED, (4, 4), "PNG"))
    archive = tmp_path / "inner" / "slip.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/good.png", solid(GREEN, (4, 4), "PNG"))
        zf.writestr("../evil.png", solid(RED, (4, 4), "PNG"))
        zf.writestr("a/../../evil.png", solid(RED, (4, 4), "PNG"))
        zf.writestr("/abs/evil.png", solid(RED, (4, 4), "PNG"))
        zf.writestr("C:/win/evil.png", solid(RED, (4, 4), "PNG"))
        zf.writestr("../evil.txt", "ignored: not an image")

    result = scan(archive)

    assert [r.rel_path for r in result.records] == ["ok/good.png"]
    assert sorted(s.rel_path for s in result.skipped) == sorted(
        ["../evil.png", "a/../../evil.png", "/abs/evil.png", "C:/win/evil.png"]
    )
    assert all("unsafe path" in s.reason for s in result.skipped)
    for name in ("../evil.png", "/abs/evil.png", str(outside)):
        with pytest.raises(ImageDecodeError):
            read_bytes(archive, name)


def test_zip_duplicate_member_is_skipped(tmp_path: Path) -> None:
    archive = tmp_path / "dup.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("x.png", solid(RED, (4, 4), "PNG"))
            zf.writestr("x.png", solid(BLUE, (4, 4), "PNG"))
    result = scan(archive)
    assert len(result.records) == 1
    assert result.records[0].content_hash == content_hash(solid(RED, (4, 4), "PNG"))
    assert [s.rel_path for s in result.skipped] == ["x.png"]
    assert "duplicate" in result.skipped[0].reason


def test_corrupt_zip_member_is_skipped(tmp_path: Path) -> None:
    archive = tmp_path / "crc.zip"
    good = solid(GREEN, (4, 4), "PNG")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("good.png", good)
        zf.writestr("flipped.png", good)
    raw = bytearray(archive.read_bytes())
    # Flip a byte inside the second member's stored data so its CRC no longer matches.
    second = raw.find(good, raw.find(good) + 1)
    raw[second + 20] ^= 0xFF
    archive.write_bytes(bytes(raw))
    result = scan(archive)
    assert [r.rel_path for r in result.records] == ["good.png"]
    assert [s.rel_path for s in result.skipped] == ["flipped.png"]
    assert result.skipped[0].reason.startswith("cannot read file")


# --------------------------------------------------------------------------- sources


def test_unsupported_sources(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedSourceError, match="does not exist"):
        scan(tmp_path / "missing")
    text = write(tmp_path, "notes.txt", "hello")
    with pytest.raises(UnsupportedSourceError, match="not a folder or a .zip"):
        scan(text)
    bogus = write(tmp_path, "broken.zip", b"PK not really a zip")
    with pytest.raises(UnsupportedSourceError, match="not a readable zip"):
        scan(bogus)
    image = write(tmp_path, "single.png", solid(RED, (4, 4), "PNG"))
    with pytest.raises(UnsupportedSourceError):
        scan(image)


def test_read_bytes_round_trip_folder_and_zip(dataset: Path, tmp_path: Path) -> None:
    archive = zip_folder(dataset, tmp_path / "data.zip")
    for root in (dataset, archive):
        for record in scan(root).records:
            data = read_bytes(root, record.rel_path)
            assert content_hash(data) == record.content_hash
            assert len(data) == record.n_bytes


def test_read_bytes_errors_name_the_path(dataset: Path, tmp_path: Path) -> None:
    write(tmp_path, "outside.png", solid(RED, (4, 4), "PNG"))
    archive = zip_folder(dataset, tmp_path / "data.zip")
    for root in (dataset, archive):
        with pytest.raises(ImageDecodeError, match="gone.png"):
            read_bytes(root, "animals/gone.png")
    with pytest.raises(ImageDecodeError, match="not inside"):
        read_bytes(dataset, "../outside.png")
    with pytest.raises(ImageDecodeError):
        read_bytes(dataset, str(tmp_path / "outside.png"))
    with pytest.raises(UnsupportedSourceError):
        read_bytes(tmp_path / "nope", "x.png")


# --------------------------------------------------------------------------- decoding


def test_exif_orientation_rotates_pixels_and_size(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste(RED, (0, 0, 10, 10))  # top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)

    decoded = decode_rgb(data)
    assert decoded.mode == "RGB"
    assert decoded.size == (20, 40)
    # Clockwise rotation moves the stored top-left corner to the displayed top-right.
    assert close(decoded.getpixel((17, 2)), RED, 40)
    assert close(decoded.getpixel((2, 2)), (255, 255, 255), 40)

    write(tmp_path, "rotated.jpg", data)
    record = scan(tmp_path).records[0]
    assert (record.width, record.height) == (20, 40)


def test_exif_orientation_size_survives_draft() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (800, 400), RED), "JPEG", exif=exif.tobytes())
    small = decode_rgb(data, draft_size=(100, 100))
    assert small.size[0] < small.size[1]  # still portrait
    assert min(small.size) >= 100 and max(small.size) < 800


def test_draft_decodes_jpeg_at_reduced_scale_but_not_below_request() -> None:
    data = solid(BLUE, (800, 600), "JPEG")
    assert decode_rgb(data).size == (800, 600)
    small = decode_rgb(data, draft_size=(100, 100))
    assert small.size == (200, 150)  # the largest DCT scale (1/4) that keeps >= 100
    assert close(small.getpixel((100, 75)), BLUE, 10)
    # Non-JPEG formats ignore the hint and decode at full size.
    assert decode_rgb(solid(BLUE, (300, 200), "PNG"), draft_size=(50, 50)).size == (300, 200)


def test_rgba_transparent_region_becomes_grey() -> None:
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (4, 0, 8, 8))
    img.putpixel((0, 7), (0, 0, 0, 128))
    out = decode_rgb(encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == RED
    assert out.getpixel((6, 6)) == GREY
    assert close(out.getpixel((0, 7)), (64, 64, 64), 1)


def test_la_image_is_composited_on_grey() -> None:
    img = Image.new("LA", (4, 4), (255, 255))
    img.putpixel((3, 3), (0, 0))
    out = decode_rgb(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((3, 3)) == GREY


def test_palette_png_with_transparency() -> None:
    img = Image.new("P", (6, 6), 0)
    img.putpalette([255, 255, 255, 0, 255, 0] + [0, 0, 0] * 254)
    img.paste(1, (0, 0, 3, 6))
    out = decode_rgb(encode(img, "PNG", transparency=0))
    assert out.getpixel((1, 1)) == GREEN
    assert out.getpixel((5, 5)) == GREY  # white index is transparent, so not white


def test_gif_uses_first_frame_and_its_transparency() -> None:
    first = Image.new("P", (6, 6), 0)
    first.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    first.paste(1, (0, 0, 3, 6))
    second = Image.new("RGB", (6, 6), BLUE)
    data = encode(first, "GIF", save_all=True, append_images=[second], transparency=0)
    out = decode_rgb(data)
    assert out.getpixel((1, 1)) == RED
    assert out.getpixel((5, 5)) == GREY


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_rgb(data)
    assert out.mode == "RGB"
    assert close(out.getpixel((8, 8)), RED, 12)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (3, 1))
    for x, value in enumerate((0, 257 * 100, 65535)):
        img.putpixel((x, 0), value)
    data = encode(img, "PNG")
    out = decode_rgb(data)
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", (0, 32896, 65535), (0, 128, 255)),  # 16-bit samples in a 32-bit container
        ("I", (-10, 0, 10), (0, 128, 255)),  # unknown range: stretched
        ("F", (0.0, 0.5, 1.0), (0, 128, 255)),  # normalised floats
        ("1", (0, 1, 1), (0, 255, 255)),
        ("L", (0, 7, 255), (0, 7, 255)),
    ],
)
def test_other_modes_convert_to_rgb(mode: str, values: tuple[float, ...], expected: tuple[int, ...]) -> None:
    img = Image.new(mode, (3, 1))
    for x, value in enumerate(values):
        img.putpixel((x, 0), value)
    data = encode(img, "TIFF")
    out = decode_rgb(data)
    assert out.mode == "RGB"
    assert [channel0(out.getpixel((x, 0))) for x in range(3)] == list(expected)


def test_decode_errors_are_typed_with_advice() -> None:
    with pytest.raises(ImageDecodeError, match="cannot identify image file") as err:
        decode_rgb(b"definitely not an image")
    assert "PNG or JPEG" in str(err.value)
    png = noise_png()
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_rgb(png[: len(png) // 2])


def test_truncated_jpeg_is_an_error_even_with_draft() -> None:
    rng = np.random.default_rng(2)
    jpeg = encode(Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_rgb(jpeg[: len(jpeg) // 2], draft_size=(32, 32))


def test_decompression_bomb_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "bomb.png", solid(RED, (100, 100), "PNG"))
    write(tmp_path, "ok.png", solid(RED, (10, 10), "PNG"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refused above 2 * 1000 pixels

    result = scan(tmp_path)

    assert [r.rel_path for r in result.records] == ["ok.png"]
    assert [s.rel_path for s in result.skipped] == ["bomb.png"]
    reason = result.skipped[0].reason
    assert reason.startswith("decompression bomb")
    assert "10000 pixels" in reason and "limit of 2000 pixels" in reason
    with pytest.raises(ImageDecodeError, match="MAX_IMAGE_PIXELS"):
        decode_rgb((tmp_path / "bomb.png").read_bytes())


def test_bomb_warning_level_is_not_fatal_even_as_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "big.png", solid(RED, (100, 100), "PNG"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # warns above 6000, refuses above 12000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = scan(tmp_path, workers=2)
        assert decode_rgb((tmp_path / "big.png").read_bytes()).size == (100, 100)
    assert result.skipped == []
    assert [(r.width, r.height) for r in result.records] == [(100, 100)]
    assert Image.MAX_IMAGE_PIXELS == 6000  # untouched by the module


# --------------------------------------------------------------------------- thumbnails


def test_thumbnail_path_layout(tmp_path: Path) -> None:
    digest = content_hash(b"x")
    assert thumbnail_path(tmp_path, digest) == tmp_path / "thumbs" / digest[:2] / f"{digest}.webp"
    with pytest.raises(InvalidInputError):
        thumbnail_path(tmp_path, "../../etc")


def test_ensure_thumbnail_creates_webp_once(tmp_path: Path) -> None:
    data = solid(BLUE, (300, 150), "JPEG")
    digest = content_hash(data)
    path = ensure_thumbnail(tmp_path, digest, data)

    assert path == thumbnail_path(tmp_path, digest)
    with Image.open(path) as thumb:
        assert thumb.format == "WEBP"
        assert thumb.size == (128, 64)
        assert close(thumb.convert("RGB").getpixel((64, 32)), BLUE, 12)
    first_mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(first_mtime - 10**9, first_mtime - 10**9))
    stamped = path.stat().st_mtime_ns

    assert ensure_thumbnail(tmp_path, digest, data) == path
    assert ensure_thumbnail(tmp_path, digest) == path  # cached: no bytes needed
    assert path.stat().st_mtime_ns == stamped
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_ensure_thumbnail_from_image_and_small_sources(tmp_path: Path) -> None:
    tall = ensure_thumbnail(tmp_path, "ab12", image=Image.new("RGBA", (10, 40), (0, 0, 0, 0)))
    with Image.open(tall) as thumb:
        assert thumb.size == (32, 128)
        assert close(thumb.convert("RGB").getpixel((16, 64)), GREY, 3)
    custom = ensure_thumbnail(tmp_path, "cd34", solid(RED, (500, 500), "PNG"), size=64)
    with Image.open(custom) as thumb:
        assert thumb.size == (64, 64)


def test_ensure_thumbnail_needs_a_source_when_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="pass the image bytes"):
        ensure_thumbnail(tmp_path, "ef56")
    with pytest.raises(ImageDecodeError):
        ensure_thumbnail(tmp_path, "ef56", b"not an image")
    assert not thumbnail_path(tmp_path, "ef56").exists()


def test_scan_with_cache_dir_writes_each_thumbnail(dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = scan(dataset, cache_dir=cache)
    hashes = {r.content_hash for r in result.records}
    assert len(hashes) == len(result.records) - 1  # the duplicate shares one thumbnail
    written = sorted(p.stem for p in (cache / "thumbs").rglob("*.webp"))
    assert written == sorted(hashes)
    for record in result.records:
        with Image.open(thumbnail_path(cache, record.content_hash)) as thumb:
            assert max(thumb.size) == THUMBNAIL_SIZE
    assert not list((cache / "thumbs").rglob("*.tmp"))


def test_scan_thumbnail_of_large_jpeg_has_full_size_record(tmp_path: Path) -> None:
    write(tmp_path / "src", "photo.jpg", solid(GREEN, (1000, 500), "JPEG"))
    record = scan(tmp_path / "src", cache_dir=tmp_path / "cache").records[0]
    assert (record.width, record.height) == (1000, 500)
    with Image.open(thumbnail_path(tmp_path / "cache", record.content_hash)) as thumb:
        assert thumb.size == (128, 64)


# --------------------------------------------------------------------------- features


def test_image_features() -> None:
    grey = image_features(Image.new("RGB", (64, 32), GREY))
    assert grey["aspect_ratio"] == 2.0
    assert grey["brightness"] == pytest.approx(128 / 255)
    assert grey["contrast"] == 0.0
    assert grey["saturation"] == 0.0
    assert grey["colorfulness"] == 0.0
    assert grey["sharpness"] == 0.0
    assert grey["entropy"] == 0.0

    red = image_features(Image.new("RGB", (16, 16), RED))
    assert red["saturation"] == 1.0
    assert red["colorfulness"] > 0.3

    noisy = image_features(Image.open(io.BytesIO(noise_png())))
    assert noisy["sharpness"] > 0.01
    assert noisy["entropy"] > 6.0
