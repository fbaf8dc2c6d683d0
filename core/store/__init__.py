"""The DuckDB store: the only package in RepLens that writes SQL.

One file holds datasets (paths, labels, captions), images (by content hash), encoder
specs, embeddings and run records. Schema changes are numbered migration functions
(``m001_…`` in :mod:`core.store.migrations`) applied in order and recorded in ``schema_migrations``.

``Store`` is the one facade: each table area is a mixin in its own module, all sharing the
connection, per-thread cursors and write transactions of :mod:`core.store.connection`.

Embeddings are keyed by (content hash, encoder key); reads come back as Arrow and become
one contiguous float32 matrix without per-row Python loops.
"""

from __future__ import annotations

from core.store.clusters import USER_LABEL_SET, ClustersMixin, LabelTakenError
from core.store.connection import StoreConnection
from core.store.datasets import DatasetsMixin
from core.store.embeddings import EmbeddingsMixin, _gather_rows
from core.store.jobs import JobsMixin
from core.store.migrations import MIGRATIONS, SCHEMA_VERSION
from core.store.preferences import PreferencesMixin
from core.store.projections import ProjectionsMixin
from core.store.records import IngestStats, PendingImage
from core.store.runs import RunsMixin
from core.store.snapshot_tables import SnapshotTablesMixin

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "USER_LABEL_SET",
    "IngestStats",
    "LabelTakenError",
    "PendingImage",
    "Store",
    "_gather_rows",
]


class Store(
    DatasetsMixin,
    EmbeddingsMixin,
    ProjectionsMixin,
    ClustersMixin,
    SnapshotTablesMixin,
    RunsMixin,
    PreferencesMixin,
    JobsMixin,
    StoreConnection,
):
    """A RepLens database. Cheap to construct; the file is opened on first use."""
