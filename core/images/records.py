"""What a scan produces: one record per image, one entry per file it could not use."""

from __future__ import annotations

from dataclasses import dataclass, field

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
THUMBNAIL_SIZE: int = 128


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
