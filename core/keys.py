"""The cache key of a set of vectors: which encoder, which version, which layer, pooling and precision.

One type reads, writes and shows keys everywhere. Written form: ``"{id}@{version}/{layer}/{pooling}"``
for vectors computed in fp32 (every key written before precisions existed, unchanged), and
``"{id}@{version}/{layer}/{pooling}~{precision}"`` for any other precision (``~bf16``; the grammar
takes any lower-case name, e.g. a future ``~int8``):
a bf16 vector is not an fp32 vector, so the two never share a key. ``"import:NAME"`` for vectors a
user imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidInputError

IMPORT_PREFIX = "import:"
FP32 = "fp32"
BF16 = "bf16"
# What RepLens encoders compute in today. int8 ONNX graphs were measured (bench/onnx_bench.py) and
# left out: none gained speed while keeping neighbours.
PRECISIONS = (FP32, BF16)
# '~' is unreserved in URLs and file names, appears in no encoder's pooling name, and reads as
# "approximately" — which a reduced-precision vector is.
PRECISION_SEPARATOR = "~"
_PRECISION_RE = re.compile(r"[a-z0-9]+")
# The id may itself hold ':' and '/' (e.g. "timm-file:vit_small:/models/w.safetensors"), so the
# version/layer/pooling/precision are read from the right: the precision is whatever follows the
# last '~' after the last '/', and pooling names hold neither.
_KEY_RE = re.compile(
    r"(?P<id>[^@]+)@(?P<version>.+)/(?P<layer>[^/]+)/(?P<pooling>[^/~]+)(?:~(?P<precision>[a-z0-9]+))?"
)


@dataclass(frozen=True)
class EncoderKey:
    """The parts of an encoder key. Imported vectors have only ``imported_name``."""

    encoder_id: str
    version: str = ""
    layer: str = ""
    pooling: str = ""
    imported_name: str | None = None
    precision: str = FP32

    def __post_init__(self) -> None:
        if not _PRECISION_RE.fullmatch(self.precision):
            raise InvalidInputError(f"precision={self.precision!r} is not a precision name (e.g. fp32, bf16).")
        if self.imported_name is None and PRECISION_SEPARATOR in self.pooling:
            # The key could not be read back: "avg~x" would parse as pooling "avg" at precision "x".
            raise InvalidInputError(f"pooling={self.pooling!r} may not contain {PRECISION_SEPARATOR!r}.")

    @classmethod
    def imported(cls, name: str) -> EncoderKey:
        return cls(encoder_id=f"{IMPORT_PREFIX}{name}", imported_name=name)

    @classmethod
    def parse(cls, key: str) -> EncoderKey:
        """The parts of ``key``; raises InvalidInputError for text that is not a key."""
        parsed = cls.try_parse(key)
        if parsed is None:
            raise InvalidInputError(
                f"{key!r} is not an encoder key; keys look like 'ENCODER@VERSION/LAYER/POOLING' "
                "(plus '~PRECISION' when not fp32) or 'import:NAME'."
            )
        return parsed

    @classmethod
    def try_parse(cls, key: str) -> EncoderKey | None:
        """The parts of ``key``, or None when it is not one."""
        if key.startswith(IMPORT_PREFIX) and len(key) > len(IMPORT_PREFIX):
            return cls.imported(key[len(IMPORT_PREFIX) :])
        match = _KEY_RE.fullmatch(key)
        if match is None or match["precision"] == FP32:
            return None  # fp32 is written without a suffix: "~fp32" would be a second spelling of one key
        return cls(
            match["id"], match["version"], match["layer"], match["pooling"], precision=match["precision"] or FP32
        )

    @property
    def is_imported(self) -> bool:
        return self.imported_name is not None

    def format(self) -> str:
        """The stored form of the key."""
        if self.imported_name is not None:
            return f"{IMPORT_PREFIX}{self.imported_name}"
        suffix = "" if self.precision == FP32 else f"{PRECISION_SEPARATOR}{self.precision}"
        return f"{self.encoder_id}@{self.version}/{self.layer}/{self.pooling}{suffix}"

    def __str__(self) -> str:
        return self.format()

    def display(self) -> str:
        """Short human form for pickers and legends: "dinov2-vits14 · block9/mean", with " · bf16" (the
        precision) when not fp32; imported keys as stored."""
        if self.imported_name is not None:
            return self.format()
        shown = f"{self.encoder_id} · {self.layer}/{self.pooling}"
        return shown if self.precision == FP32 else f"{shown} · {self.precision}"


def format_key(encoder_id: str, version: str, layer: str, pooling: str, precision: str = FP32) -> str:
    """The stored key of an encoder's vectors at ``layer``/``pooling``, computed at ``precision``."""
    return EncoderKey(encoder_id, version, layer, pooling, precision=precision).format()


def encoder_id_of(key: str) -> str:
    """The encoder id in a key (the whole key for imported vectors, which have no encoder)."""
    parsed = EncoderKey.try_parse(key)
    if parsed is None or parsed.is_imported:
        return key
    return parsed.encoder_id


def precision_of(key: str) -> str:
    """The precision the vectors under ``key`` were computed at (fp32 for imported vectors and non-keys)."""
    parsed = EncoderKey.try_parse(key)
    return FP32 if parsed is None else parsed.precision
