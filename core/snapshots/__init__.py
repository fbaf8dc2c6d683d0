"""Cluster snapshots: immutable, content-addressed records of one clustering, made to share.

A snapshot copies everything it shows: which images (content hash + relative path + folder
labels), the encoder, the 2-D map, the clustering (method, parameters, metrics,
assignments) and the cluster labels with their provenance, plus a title and notes. Its id is
the sha256 of a canonical serialisation of that content, so saving the same thing twice
gives the same id and one stored copy. Creation time, RepLens version and the source run id
are recorded but are not content: they do not change the id.

Snapshots travel three ways:

* ``export_snapshot`` / ``import_snapshot``: one ``.replens`` zip (``manifest.json``,
  ``points.parquet``, ``clusters.parquet``, ``thumbs/<hash>.webp``) that opens in another
  installation without the original images. Imported files are untrusted: every member is
  checked (names, kinds, sizes, sha256, schema, id) before the database is touched, and
  thumbnails are re-encoded through Pillow, never copied.
* ``snapshot_html``: one self-contained HTML page (inline plotly.js, thumbnails as data:
  URIs, a Content-Security-Policy that allows no network and only its own scripts).
* ``diff_snapshots``: agreement between two snapshots of the same images (ARI, NMI,
  confusion matrix, images whose cluster moved under the best one-to-one matching).

Modules: ``content`` (canonical tables, manifest, content id), ``model`` (types, errors,
limits), ``records`` (save/list/load/delete), ``export``, ``importing`` + ``validate``
(untrusted import), ``html`` (the page, from ``templates/``) and ``diff``.

``import_snapshot`` reads ``LIMITS`` from this package on each call, so a caller (or a test)
may replace ``core.snapshots.LIMITS``. ``_BoundedReader``, ``_content_id`` and
``_header_from_manifest`` stay importable from here for the tests that build hostile archives.
"""

from __future__ import annotations

from core.palette import cluster_colours
from core.snapshots.content import FORMAT, FORMAT_VERSION
from core.snapshots.content import content_id as _content_id  # noqa: F401
from core.snapshots.content import header_from_manifest as _header_from_manifest  # noqa: F401
from core.snapshots.diff import SnapshotDiff, diff_snapshots
from core.snapshots.export import export_snapshot
from core.snapshots.html import snapshot_html
from core.snapshots.importing import BoundedReader as _BoundedReader  # noqa: F401
from core.snapshots.importing import import_snapshot
from core.snapshots.model import (
    LIMITS,
    ArchiveLimits,
    ExportResult,
    Snapshot,
    SnapshotError,
    SnapshotFormatError,
    SnapshotNotFoundError,
)
from core.snapshots.records import delete_snapshot, list_snapshots, load_snapshot, resolve_snapshot_id, save_snapshot

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LIMITS",
    "ArchiveLimits",
    "ExportResult",
    "Snapshot",
    "SnapshotDiff",
    "SnapshotError",
    "SnapshotFormatError",
    "SnapshotNotFoundError",
    "cluster_colours",
    "delete_snapshot",
    "diff_snapshots",
    "export_snapshot",
    "import_snapshot",
    "list_snapshots",
    "load_snapshot",
    "resolve_snapshot_id",
    "save_snapshot",
    "snapshot_html",
]
