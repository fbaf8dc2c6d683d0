"""The cache key of a set of vectors: which encoder, which version, which layer and pooling.

One type reads, writes and shows keys everywhere. Written form: ``"{id}@{version}/{layer}/{pooling}"``
for extracted vectors, ``"import:NAME"`` for vectors a user imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidInputError

IMPORT_PREFIX = "import:"
# The id may itself hold ':' and '/' (e.g. "timm-file:vit_small:/models/w.safetensors"), so the
# version/layer/pooling are read from the right.
_KEY_RE = re.compile(r"(?P<id>[^@]+)@(?P<version>.+)/(?P<layer>[^/]+)/(?P<pooling>[^/]+)")


@dataclass(frozen=True)
class EncoderKey:
    """The parts of an encoder key. Imported vectors have only ``imported_name``."""

    encoder_id: str
    version: str = ""
    layer: str = ""
    pooling: str = ""
    imported_name: str | None = None

    @classmethod
    def imported(cls, name: str) -> EncoderKey:
        return cls(encoder_id=f"{IMPORT_PREFIX}{name}", imported_name=name)

    @classmethod
    def parse(cls, key: str) -> EncoderKey:
        """The parts of ``key``; raises InvalidInputError for text that is not a key."""
        parsed = cls.try_parse(key)
        if parsed is None:
            raise InvalidInputError(
                f"{key!r} is not an encoder key; keys look like 'ENCODER@VERSION/LAYER/POOLING' or 'import:NAME'."
            )
        return parsed

    @classmethod
    def try_parse(cls, key: str) -> EncoderKey | None:
        """The parts of ``key``, or None when it is not one."""
        if key.startswith(IMPORT_PREFIX) and len(key) > len(IMPORT_PREFIX):
            return cls.imported(key[len(IMPORT_PREFIX) :])
        match = _KEY_RE.fullmatch(key)
        if match is None:
            return None
        return cls(match["id"], match["version"], match["layer"], match["pooling"])

    @property
    def is_imported(self) -> bool:
        return self.imported_name is not None

    def format(self) -> str:
        """The stored form of the key."""
        if self.imported_name is not None:
            return f"{IMPORT_PREFIX}{self.imported_name}"
        return f"{self.encoder_id}@{self.version}/{self.layer}/{self.pooling}"

    def __str__(self) -> str:
        return self.format()

    def display(self) -> str:
        """Short human form for pickers and legends: "dinov2-vits14 · block9/mean"; imported keys as stored."""
        if self.imported_name is not None:
            return self.format()
        return f"{self.encoder_id} · {self.layer}/{self.pooling}"


def format_key(encoder_id: str, version: str, layer: str, pooling: str) -> str:
    """The stored key of an encoder's vectors at ``layer``/``pooling``."""
    return EncoderKey(encoder_id, version, layer, pooling).format()


def encoder_id_of(key: str) -> str:
    """The encoder id in a key (the whole key for imported vectors, which have no encoder)."""
    parsed = EncoderKey.try_parse(key)
    if parsed is None or parsed.is_imported:
        return key
    return parsed.encoder_id
