"""Property-based tests (hypothesis) over the two parsers that read strangers' bytes (issue 11).

* ``core.images.decode``: any bytes, random or a valid image of each readable format mutated,
  give either an RGB image whose size agrees with what the decoder reports, or an
  ``ImageDecodeError`` (a RepLensError) with a reason; never another exception, never a hang.
* ``core.snapshots.import_snapshot``: a valid ``.replens`` file mutated (raw bytes, one member's
  bytes with or without a resealed manifest, one manifest field) either imports as exactly the
  original snapshot or raises a RepLensError, and then every table's row count and the cache's
  files are what they were before.

Examples are derandomised and bounded (``max_examples``), so each test runs the same inputs on
every machine in a few seconds; ``deadline`` fails any single input that takes over 5 s, and the
timeout mark fails a test whose input never returns at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image
from test_hostile_inputs import files_under, table_counts
from test_snapshots import build_world

from core import images, snapshots
from core.errors import ImageDecodeError, RepLensError
from core.images.decode import decode_image
from core.store import Store

BOUNDED = settings(
    deadline=timedelta(seconds=5),
    database=None,  # nothing written into the repository
    derandomize=True,  # the same examples on every run: a bounded, reproducible cost
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPECIAL_INTS = (0, 1, 2, 7, 255, 256, 0x7FFF, 0xFFFF, 65_536, 100_000, 0x7FFFFFFF, 0xFFFFFFFF)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Hypothesis caches what it learns under ./.hypothesis even without an example database; the
# working tree is the repository, so that cache goes to the system's temporary folder instead.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "replens-hypothesis")


# --------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw: st.DrawFn, data: bytes, header: int = 64) -> bytes:
    """``data`` with 1-6 edits: bit flips, special integers (sizes, counts), cuts, insertions,
    deletions; half of the positions fall in the first ``header`` bytes, where parsers branch."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not out:
            out = bytearray(draw(st.binary(min_size=1, max_size=16)))
            continue
        at = draw(st.one_of(st.integers(0, min(len(out) - 1, header)), st.integers(0, len(out) - 1)))
        op = draw(st.sampled_from(("flip", "int", "cut", "insert", "delete")))
        if op == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "int":
            fmt = draw(st.sampled_from(("<H", ">H", "<I", ">I")))
            value = draw(st.sampled_from(SPECIAL_INTS)) & (0xFFFF if fmt.endswith("H") else 0xFFFFFFFF)
            packed = struct.pack(fmt, value)
            out[at : at + len(packed)] = packed
        elif op == "cut":
            del out[at:]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del out[at : at + draw(st.integers(1, 32))]
    return bytes(out)


def with_png_crcs_fixed(data: bytes) -> bytes:
    """Recompute every chunk CRC, so a mutated PNG header reaches the decoder instead of the CRC check."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    out, pos = bytearray(data), len(PNG_SIGNATURE)
    while pos + 8 <= len(out):
        end = pos + 8 + struct.unpack_from(">I", out, pos)[0]
        if end + 4 > len(out):
            break
        struct.pack_into(">I", out, end, zlib.crc32(bytes(out[pos + 4 : end])))
        pos = end + 4
    return bytes(out)


# --------------------------------------------------------------------------- decoding


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


@cache
def seed_images() -> dict[str, bytes]:
    """One small valid file per format and mode the decoder handles (made at test time, once)."""
    rgb = Image.new("RGB", (12, 8), (200, 30, 60))
    rgb.paste((10, 200, 90), (0, 0, 6, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    frames = [rgb, Image.new("RGB", (12, 8), (0, 0, 255))]
    grey16 = Image.new("I;16", (6, 4), 40_000)
    return {
        "png": encode(rgb, "PNG"),
        "png-rgba": encode(rgb.convert("RGBA"), "PNG"),
        "png-la": encode(rgb.convert("LA"), "PNG"),
        "png-palette-transparent": encode(palette, "PNG", transparency=0),
        "png-16bit": encode(grey16, "PNG"),
        "jpeg-exif": encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg-progressive": encode(rgb, "JPEG", progressive=True),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "gif-animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": encode(rgb, "WEBP"),
        "webp-animated": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
        "bmp": encode(rgb, "BMP"),
        "tiff": encode(rgb, "TIFF"),
        "tiff-lzw-float": encode(Image.new("F", (5, 3), 0.25), "TIFF", compression="tiff_lzw"),
    }


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    data = draw(mutated(seed_images()[draw(st.sampled_from(sorted(seed_images())))]))
    return with_png_crcs_fixed(data) if draw(st.booleans()) else data


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Corrupt EXIF data" etc.: expected here
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(BOUNDED, max_examples=400)
@given(data=st.one_of(st.binary(max_size=256), image_bytes()), draft=st.booleans())
@example(data=b"", draft=False)
def test_any_bytes_decode_to_rgb_or_a_typed_error(data: bytes, draft: bool) -> None:
    try:
        decoded = decode_image(data, (16, 16) if draft else None)
    except ImageDecodeError as exc:
        assert isinstance(exc, RepLensError)
        assert str(exc).startswith("Cannot decode image: ") and exc.reason  # type: ignore[attr-defined]
        return
    assert decoded.image.mode == "RGB"
    assert decoded.width > 0 and decoded.height > 0
    if draft:  # draft may shrink a JPEG, never below what was asked for or above the full size
        width, height = decoded.image.size
        assert width <= decoded.width and height <= decoded.height
    else:
        assert decoded.image.size == (decoded.width, decoded.height)


def test_every_seed_image_decodes_unmutated() -> None:
    """The seeds are valid, so the mutations above start from images the decoder accepts."""
    for name, data in seed_images().items():
        decoded = decode_image(data, None)
        assert decoded.image.mode == "RGB", name
        assert decoded.width > 0 and decoded.height > 0, name


# --------------------------------------------------------------------------- snapshot import

MANIFEST = "manifest.json"
Members = dict[str, bytes]
Mutation = Callable[[Members, bytes], bytes]


def zip_of(members: Members) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def resealed(members: Members) -> Members:
    """``members`` with manifest.files recomputed, so changed bytes pass the sha256 check."""
    manifest = json.loads(members[MANIFEST])
    manifest["files"] = {
        n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in members.items() if n != MANIFEST
    }
    return {**members, MANIFEST: json.dumps(manifest).encode()}


def key_paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path into the nested objects of ``value`` (a manifest)."""
    paths: list[tuple[str, ...]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            paths.append((*prefix, key))
            paths.extend(key_paths(inner, (*prefix, key)))
    return paths


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def snapshot_mutation(draw: st.DrawFn, members: Members, raw: bytes) -> bytes:
    kind = draw(st.sampled_from(("raw", "member", "member-resealed", "manifest-field")))
    if kind == "raw":
        return draw(mutated(raw, header=len(raw)))
    if kind.startswith("member"):
        # The three tables as often as all thumbnails together (there are many thumbnails).
        thumbs = sorted(n for n in members if n.startswith("thumbs/"))
        name = draw(st.sampled_from((MANIFEST, "points.parquet", "clusters.parquet", *thumbs[:1])))
        name = draw(st.sampled_from(thumbs)) if name.startswith("thumbs/") else name
        changed = {**members, name: draw(mutated(members[name]))}
        return zip_of(resealed(changed) if kind == "member-resealed" and name != MANIFEST else changed)
    manifest = json.loads(members[MANIFEST])
    path = draw(st.sampled_from(key_paths(manifest)))
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return zip_of({**members, MANIFEST: json.dumps(manifest).encode()})


@pytest.fixture(scope="module")
def valid_snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Members, bytes, str, Any]:
    """(members, file bytes, id, snapshot as loaded) of one valid export, made once for the module."""
    root = tmp_path_factory.mktemp("fuzz-snapshot")
    store = Store(root / "base.duckdb", root / "cache")
    try:
        build_world(store, root / "images")
        sid = snapshots.save_snapshot(store, "run1", title="fuzz base")
        path = snapshots.export_snapshot(store, sid, root / "base.replens").path
        original = snapshots.load_snapshot(store, sid)
    finally:
        store.close()
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    return members, path.read_bytes(), sid, original


@pytest.mark.timeout(300)
def test_a_mutated_snapshot_imports_as_the_original_or_changes_nothing(
    valid_snapshot: tuple[Members, bytes, str, Any], tmp_path: Path
) -> None:
    members, raw, sid, original = valid_snapshot
    store = Store(tmp_path / "db" / "replens.duckdb", tmp_path / "db" / "cache")
    archive = tmp_path / "mutated.replens"
    outcomes: list[str] = []

    @settings(BOUNDED, max_examples=120)
    @given(data=snapshot_mutation(members, raw))
    @example(data=raw)  # unmutated: the success path is always exercised
    def import_one(data: bytes) -> None:
        counts, cached = table_counts(store), files_under(tmp_path / "db")
        archive.write_bytes(data)
        try:
            imported = snapshots.import_snapshot(store, archive)
        except RepLensError as exc:
            outcomes.append(type(exc).__name__)
            assert table_counts(store) == counts
            assert files_under(tmp_path / "db") == cached
            return
        outcomes.append("imported")
        # Only the original content can match the id the file states (a sha256 over that content).
        assert imported == sid
        loaded = snapshots.load_snapshot(store, sid)
        assert loaded.points.equals(original.points) and loaded.clusters.equals(original.clusters)
        for content_hash in original.points["content_hash"]:
            if f"thumbs/{content_hash}.webp" in members:
                with Image.open(images.thumbnail_path(store.cache_dir, content_hash)) as thumb:
                    assert thumb.format == "WEBP" and max(thumb.size) <= 128
        snapshots.delete_snapshot(store, sid)
        assert table_counts(store) == counts

    try:
        import_one()
    finally:
        store.close()
    assert "imported" in outcomes and len(set(outcomes)) > 1, outcomes
