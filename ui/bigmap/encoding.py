"""The big map's binary payloads: typed arrays in one self-describing blob, named by its content.

No Streamlit here (unit tests and benches use it as is). A blob is::

    b"RLBM" | u32 LE header length | header JSON (UTF-8, space-padded to 8 bytes) | sections

Each section starts on an 8-byte boundary, so the browser views it as a ``Float32Array`` (or
``Uint8/16/32Array``) without copying once the blob sits at the start of an ``ArrayBuffer``.
The header says ``{"meta": {...}, "sections": [{"name", "dtype", "offset", "nbytes", "count",
"encoding"}]}``; offsets count from the end of the header, and ``encoding`` is ``"raw"`` or
``"deflate"`` (zlib, which the browser's ``DecompressionStream("deflate")`` reads).

A blob is named by :func:`content_id` (a hash of its bytes): the browser keeps blobs by that id,
so the same points are sent once however often the page reruns. :func:`split` cuts a blob into
chunks of a bounded size, each one a blob of its own, so no websocket message outgrows the limit
whatever the number of points.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"RLBM"
ALIGN = 8
DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype("<f4"),
    "u8": np.dtype("u1"),
    "u16": np.dtype("<u2"),
    "u32": np.dtype("<u4"),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class PayloadError(ValueError):
    """A blob that is not what :func:`pack` writes (truncated, wrong magic, unknown dtype)."""


@dataclass(frozen=True)
class Section:
    """One named array of a blob; ``deflate`` compresses it (text compresses ~5x, floats barely)."""

    name: str
    array: np.ndarray
    deflate: bool = False


def _pad(n: int) -> int:
    return -n % ALIGN


def pack(meta: Mapping[str, Any], sections: Sequence[Section]) -> bytes:
    """One blob holding ``meta`` (JSON) and the sections' arrays (little-endian)."""
    bodies: list[bytes] = []
    described: list[dict[str, Any]] = []
    for section in sections:
        array = np.asarray(section.array)
        dtype = DTYPE_NAMES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
        if dtype is None:
            raise PayloadError(f"section {section.name!r}: dtype {array.dtype} is not one of {sorted(DTYPES)}")
        raw = np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes()
        body = zlib.compress(raw, 1) if section.deflate else raw
        described.append(
            {
                "name": section.name,
                "dtype": dtype,
                "count": int(array.size),
                "nbytes": len(body),
                "encoding": "deflate" if section.deflate else "raw",
            }
        )
        bodies.append(body)
    offset = 0  # from the first section, which starts right after the padded header
    for entry, body in zip(described, bodies):
        entry["offset"] = offset
        offset += len(body) + _pad(len(body))
    header = json.dumps({"meta": dict(meta), "sections": described}, separators=(",", ":")).encode()
    header += b" " * _pad(8 + len(header))
    out = bytearray(MAGIC + struct.pack("<I", len(header)) + header)
    for body in bodies:
        out += body + b"\0" * _pad(len(body))
    return bytes(out)


def unpack(blob: bytes | bytearray | memoryview) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, {name: array}) of a blob written by :func:`pack`; deflated sections come back inflated."""
    view = memoryview(blob)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise PayloadError("not a big-map blob (no RLBM magic)")
    (length,) = struct.unpack("<I", view[4:8])
    if 8 + length > len(view):
        raise PayloadError(f"header of {length} bytes overruns a {len(view)}-byte blob")
    header = json.loads(bytes(view[8 : 8 + length]))
    arrays: dict[str, np.ndarray] = {}
    for entry in header["sections"]:
        start, nbytes = 8 + length + int(entry["offset"]), int(entry["nbytes"])
        if entry["dtype"] not in DTYPES or start + nbytes > len(view):
            raise PayloadError(f"section {entry['name']!r} is malformed: {entry}")
        body = bytes(view[start : start + nbytes])
        if entry["encoding"] == "deflate":
            body = zlib.decompress(body)
        arrays[entry["name"]] = np.frombuffer(body, dtype=DTYPES[entry["dtype"]], count=int(entry["count"]))
    return header["meta"], arrays


def content_id(blob: bytes) -> str:
    """The name a blob is cached under in the browser: equal bytes, equal id."""
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def split(blob: bytes, blob_id: str, max_bytes: int) -> list[bytes]:
    """``blob`` as chunks (each a blob: meta names the whole and the chunk's index), none over ``max_bytes``."""
    room = max_bytes - 512  # the chunk's own header
    if room < ALIGN:
        raise PayloadError(f"max_bytes={max_bytes} leaves no room for data")
    room -= room % ALIGN
    count = max(1, -(-len(blob) // room))
    return [
        pack(
            {"role": "chunk", "id": blob_id, "index": k, "count": count, "total": len(blob)},
            [Section("data", np.frombuffer(blob, dtype=np.uint8)[k * room : (k + 1) * room])],
        )
        for k in range(count)
    ]


def join(chunks: Sequence[bytes]) -> tuple[str, bytes]:
    """(id, blob) from the chunks :func:`split` made, in any order; checks that none is missing."""
    parts: dict[int, bytes] = {}
    ids: set[str] = set()
    count = total = 0
    for chunk in chunks:
        meta, arrays = unpack(chunk)
        ids.add(meta["id"])
        count, total = int(meta["count"]), int(meta["total"])
        parts[int(meta["index"])] = arrays["data"].tobytes()
    if len(ids) != 1 or sorted(parts) != list(range(count)):
        raise PayloadError(f"chunks of {sorted(ids)} hold parts {sorted(parts)} of {count}")
    blob = b"".join(parts[k] for k in range(count))
    if len(blob) != total:
        raise PayloadError(f"joined {len(blob)} bytes, expected {total}")
    return ids.pop(), blob


def names_section(names: Sequence[str]) -> Section:
    """File names as one deflated UTF-8 run, NUL-separated (a NUL cannot occur in a path)."""
    text = "\0".join(names).encode("utf-8", "surrogatepass")
    return Section("names", np.frombuffer(text, dtype=np.uint8), deflate=True)


def names_of(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The names :func:`names_section` packed."""
    text = arrays["names"].tobytes().decode("utf-8", "surrogatepass")
    return text.split("\0") if text else [""]


def indices_from_b64(text: str, n: int) -> np.ndarray:
    """Row indices the browser sent (base64 of little-endian uint32), checked against ``n`` rows."""
    import base64

    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 4:
        raise PayloadError(f"{len(raw)} bytes is not a whole number of uint32 indices")
    rows = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    if rows.size and (rows.max() >= n):
        raise PayloadError(f"index {int(rows.max())} is out of range for {n} points")
    return np.unique(rows)


def indices_to_b64(rows: np.ndarray) -> str:
    """The inverse of :func:`indices_from_b64` (what the browser's ``selectionB64`` writes)."""
    import base64

    return base64.b64encode(np.asarray(rows, dtype="<u4").tobytes()).decode("ascii")
