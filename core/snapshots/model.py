"""The snapshot's types: errors, archive limits, the ``Snapshot`` record and an export's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import ImportFormatError, RepLensError
from core.snapshots.content import build_manifest, header_from_manifest

EXPORT_THUMB_SIZE = 128  # thumbnails written into a .replens file
MAX_IMPORTED_THUMB_SIDE = 512  # larger thumbnails in an imported file are refused
MAX_TITLE_CHARS = 500
MAX_NOTES_CHARS = 100_000


class SnapshotError(RepLensError):
    """A snapshot that cannot be made, found or shown as asked."""


class SnapshotNotFoundError(SnapshotError, KeyError):
    """A snapshot id (or prefix) that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SnapshotFormatError(SnapshotError, ImportFormatError):
    """A ``.replens`` file that is damaged, hostile, or of a format version this RepLens cannot read."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what an imported ``.replens`` file may hold (uncompressed sizes)."""

    max_members: int = 250_003
    max_points: int = 250_000
    max_clusters: int = 100_000
    max_total_bytes: int = 2 << 30
    max_manifest_bytes: int = 64 << 20
    max_table_bytes: int = 512 << 20
    max_thumb_bytes: int = 1 << 20
    max_json_field_bytes: int = 1 << 20  # one free-form dict (params, metrics, encoder spec)
    max_candidates_bytes: int = 64 << 10  # one cluster's candidate labels
    max_label_chars: int = 1_000
    max_path_chars: int = 4_096
    max_folder_labels: int = 64


LIMITS = ArchiveLimits()


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Everything one snapshot holds. Treat the dicts and frames as read-only.

    ``points``: content_hash, rel_path, labels (list of folder names), x, y (float32),
    cluster (int32; -1 = noise), ordered by content_hash. ``clusters``: cluster, label,
    method (clip | text | visual | user | default), candidates (parsed JSON), edited, size.
    """

    id: str
    title: str
    notes: str
    created: str
    replens_version: str
    format_version: int
    origin: str  # 'local' or 'imported'
    dataset: dict[str, Any]  # {"name": …}
    encoder: dict[str, Any]  # {"key": …, "spec": {…} | None}
    projection: dict[str, Any]  # {"key": … | None, "method": …, "params": {…}}
    clustering: dict[str, Any]  # {"run_id", "method", "params", "metrics", "n_clusters", "noise_fraction"}
    points: pd.DataFrame = field(repr=False)
    clusters: pd.DataFrame = field(repr=False)

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def coords(self) -> np.ndarray:
        """(n, 2) float32 map coordinates in ``points`` order."""
        return np.column_stack([self.points["x"].to_numpy(np.float32), self.points["y"].to_numpy(np.float32)])

    @property
    def assignments(self) -> dict[str, int]:
        return dict(zip(self.points["content_hash"], (int(c) for c in self.points["cluster"])))

    def header(self) -> dict[str, Any]:
        """The hashed part of the description (see ``content.content_id``)."""
        return header_from_manifest(
            {
                "title": self.title,
                "notes": self.notes,
                "dataset": self.dataset,
                "encoder": self.encoder,
                "projection": self.projection,
                "clustering": self.clustering,
            }
        )

    def manifest(self) -> dict[str, Any]:
        """The JSON description (no tables) as stored and exported."""
        return build_manifest(
            self.id, self.created, self.replens_version, self.header(), self.n_points, len(self.clusters)
        )


@dataclass(frozen=True)
class ExportResult:
    path: Path
    snapshot_id: str
    n_points: int
    n_thumbnails: int
    missing_thumbnails: int  # images with no cached thumbnail: blank tiles after import

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "snapshot_id": self.snapshot_id,
            "n_points": self.n_points,
            "n_thumbnails": self.n_thumbnails,
            "missing_thumbnails": self.missing_thumbnails,
        }
