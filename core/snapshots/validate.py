"""Checks on the untrusted content of a ``.replens`` file: the manifest, both tables, each thumbnail.

Written by hand (required keys, types, sizes, depths) rather than with a schema library, so
every refusal says which field is wrong and the caps come from one ``ArchiveLimits``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import core
from core.snapshots.content import (
    CLUSTERS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    POINTS,
    canonical_json,
    clusters_table,
    points_table,
)
from core.snapshots.model import (
    EXPORT_THUMB_SIZE,
    MAX_IMPORTED_THUMB_SIDE,
    MAX_NOTES_CHARS,
    MAX_TITLE_CHARS,
    ArchiveLimits,
    SnapshotFormatError,
)

HASH_RE = re.compile(r"^[0-9A-Za-z]{2,128}$")  # what core.images.thumbnail_path accepts
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_DEPTH = 32  # of free-form JSON (params, metrics, candidates)

_POINT_TYPES = {
    "content_hash": "string",
    "rel_path": "string",
    "labels": "list<string>",
    "x": "float32",
    "y": "float32",
    "cluster": "integer",
}
_CLUSTER_TYPES = {
    "cluster": "integer",
    "label": "string",
    "method": "string",
    "candidates": "string",
    "edited": "bool",
    "size": "integer",
}


# -- manifest ---------------------------------------------------------------------------


def parse_manifest(data: bytes, limits: ArchiveLimits) -> dict[str, Any]:
    """The manifest as a dict, after checking its format version and every field it must hold."""
    manifest = _strict_json_object(data)
    if manifest.get("format") != FORMAT:
        raise SnapshotFormatError(
            "manifest.json does not describe a RepLens snapshot (format is not "
            f"{FORMAT!r}); export one with `python -m core snapshot export`."
        )
    _check_version(manifest)
    v = _Validator(limits)
    v.string(manifest, "id", "manifest", pattern=SHA256_RE)
    v.string(manifest, "replens_version", "manifest", max_len=64)
    v.string(manifest, "title", "manifest", max_len=MAX_TITLE_CHARS)
    v.string(manifest, "notes", "manifest", max_len=MAX_NOTES_CHARS)
    created = v.string(manifest, "created", "manifest", max_len=64)
    try:
        datetime.fromisoformat(created)
    except ValueError as exc:
        raise SnapshotFormatError(f"manifest.created {created!r} is not an ISO date-time.") from exc
    dataset = v.obj(manifest, "dataset", "manifest")
    v.string(dataset, "name", "manifest.dataset", max_len=200)
    encoder = v.obj(manifest, "encoder", "manifest")
    v.string(encoder, "key", "manifest.encoder", max_len=1_000)
    v.free_dict(encoder, "spec", "manifest.encoder", nullable=True)
    projection = v.obj(manifest, "projection", "manifest")
    v.string(projection, "key", "manifest.projection", max_len=1_000, nullable=True)
    v.string(projection, "method", "manifest.projection", max_len=64)
    v.free_dict(projection, "params", "manifest.projection")
    clustering = v.obj(manifest, "clustering", "manifest")
    v.string(clustering, "run_id", "manifest.clustering", max_len=200, nullable=True)
    v.string(clustering, "method", "manifest.clustering", max_len=64)
    v.free_dict(clustering, "params", "manifest.clustering")
    v.free_dict(clustering, "metrics", "manifest.clustering")
    v.integer(clustering, "n_clusters", "manifest.clustering", 0, limits.max_clusters)
    v.number(clustering, "noise_fraction", "manifest.clustering", 0.0, 1.0, nullable=True)
    counts = v.obj(manifest, "counts", "manifest")
    v.integer(counts, "points", "manifest.counts", 1, limits.max_points)
    v.integer(counts, "clusters", "manifest.counts", 1, limits.max_clusters)
    _check_files_entries(v, v.obj(manifest, "files", "manifest"), limits)
    return manifest


def _strict_json_object(data: bytes) -> dict[str, Any]:
    """A JSON object with no duplicate keys and no NaN/Infinity (both are ambiguous to hash)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key in a JSON object")
        return dict(pairs)

    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SnapshotFormatError(f"manifest.json is not valid JSON ({str(exc)[:200]}); the file is damaged.") from exc
    if not isinstance(manifest, dict):
        raise SnapshotFormatError("manifest.json should hold a JSON object; the file is not a RepLens snapshot.")
    return manifest


def _check_version(manifest: Mapping[str, Any]) -> None:
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SnapshotFormatError("manifest.json has no integer format_version; the file is damaged.")
    if version != FORMAT_VERSION:
        by = manifest.get("replens_version")
        by_text = f" by RepLens {by}" if isinstance(by, str) and len(by) <= 64 else ""
        advice = (
            "upgrade RepLens to import it"
            if version > FORMAT_VERSION
            else "no RepLens release wrote that version; the file is damaged"
        )
        raise SnapshotFormatError(
            f"This snapshot uses format version {version}{by_text}; RepLens {core.__version__} reads version "
            f"{FORMAT_VERSION}: {advice}."
        )


def _check_files_entries(v: _Validator, files: Mapping[str, Any], limits: ArchiveLimits) -> None:
    if len(files) > limits.max_members:
        raise SnapshotFormatError(f"manifest.files lists {len(files)} files, over the cap of {limits.max_members}.")
    for name, entry in files.items():
        if not isinstance(entry, dict):
            raise SnapshotFormatError(f"manifest.files[{name[:80]!r}] should be an object.")
        v.string(entry, "sha256", "manifest.files entry", pattern=SHA256_RE)
        v.integer(entry, "bytes", "manifest.files entry", 0, limits.max_total_bytes)


class _Validator:
    """Typed field access on untrusted JSON objects: each method returns the value or refuses."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits

    @staticmethod
    def _get(obj: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            raise SnapshotFormatError(f"{where}.{key} is missing; the file is damaged or not a snapshot export.")
        return obj[key]

    def string(
        self,
        obj: Mapping[str, Any],
        key: str,
        where: str,
        *,
        max_len: int | None = None,
        pattern: re.Pattern[str] | None = None,
        nullable: bool = False,
    ) -> Any:
        value = self._get(obj, key, where)
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise SnapshotFormatError(f"{where}.{key} should be a string, got {type(value).__name__}.")
        if max_len is not None and len(value) > max_len:
            raise SnapshotFormatError(f"{where}.{key} has {len(value)} characters, over the cap of {max_len}.")
        if pattern is not None and not pattern.match(value):
            raise SnapshotFormatError(f"{where}.{key} {value[:80]!r} is not in the expected form.")
        return value

    def integer(self, obj: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int:
        value = self._get(obj, key, where)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise SnapshotFormatError(f"{where}.{key} should be an integer in {lo}..{hi}, got {str(value)[:40]}.")
        return value

    def number(
        self, obj: Mapping[str, Any], key: str, where: str, lo: float, hi: float, nullable: bool = False
    ) -> float | None:
        value = self._get(obj, key, where)
        if value is None and nullable:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
            raise SnapshotFormatError(f"{where}.{key} should be a number in {lo}..{hi}, got {str(value)[:40]}.")
        return float(value)

    def obj(self, obj: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
        value = self._get(obj, key, where)
        if not isinstance(value, dict):
            raise SnapshotFormatError(f"{where}.{key} should be an object, got {type(value).__name__}.")
        return value

    def free_dict(self, obj: Mapping[str, Any], key: str, where: str, nullable: bool = False) -> dict[str, Any] | None:
        value = self._get(obj, key, where)
        if value is None and nullable:
            return None
        if not isinstance(value, dict):
            raise SnapshotFormatError(f"{where}.{key} should be an object, got {type(value).__name__}.")
        size = len(canonical_json(value))
        if size > self.limits.max_json_field_bytes:
            raise SnapshotFormatError(
                f"{where}.{key} is {size} bytes of JSON, over the cap of {self.limits.max_json_field_bytes}."
            )
        if _depth(value) > MAX_DEPTH:
            raise SnapshotFormatError(f"{where}.{key} is nested more than {MAX_DEPTH} levels deep.")
        return value


def _depth(value: Any, level: int = 0) -> int:
    """How deeply ``value`` nests, counted only up to just past ``MAX_DEPTH``."""
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def check_file_list(manifest: Mapping[str, Any], infos: Mapping[str, zipfile.ZipInfo]) -> None:
    """The archive holds exactly the members manifest.files lists, and the thumbnails it counts."""
    listed = set(manifest["files"])
    present = set(infos) - {MANIFEST}
    if listed != present:
        extra, missing = sorted(present - listed)[:3], sorted(listed - present)[:3]
        raise SnapshotFormatError(
            "The archive's members do not match manifest.files"
            f"{f' (not listed: {extra})' if extra else ''}{f' (missing: {missing})' if missing else ''}; "
            "the file was altered or damaged."
        )
    if manifest["counts"].get("thumbnails", len(present) - 2) != len(present) - 2:
        raise SnapshotFormatError("manifest.counts.thumbnails does not match the thumbnails in the archive.")


# -- tables -----------------------------------------------------------------------------


def parse_points(data: bytes, manifest: Mapping[str, Any], limits: ArchiveLimits) -> pa.Table:
    """points.parquet as a canonical points table, after checking every column's values."""
    t = _read_parquet(data, POINTS, _POINT_TYPES, limits.max_points)
    n = manifest["counts"]["points"]
    if t.num_rows != n:
        raise SnapshotFormatError(f"{POINTS} has {t.num_rows} rows but manifest.counts.points says {n}.")
    hashes = t.column("content_hash").cast(pa.string())
    if pc.any(pc.invert(pc.match_substring_regex(hashes, HASH_RE.pattern))).as_py():
        raise SnapshotFormatError(f"{POINTS} has content hashes that are not 2-128 letters/digits.")
    if pc.count_distinct(hashes).as_py() != n:
        raise SnapshotFormatError(f"{POINTS} lists an image hash twice.")
    paths = t.column("rel_path").cast(pa.string())
    if pc.max(pc.utf8_length(paths)).as_py() > limits.max_path_chars:
        raise SnapshotFormatError(f"{POINTS} has a rel_path over {limits.max_path_chars} characters.")
    labels = t.column("labels").cast(pa.list_(pa.string()))
    _check_folder_labels(labels, limits)
    x, y = t.column("x").to_numpy(), t.column("y").to_numpy()
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SnapshotFormatError(f"{POINTS} has coordinates that are not finite numbers.")
    clusters = t.column("cluster").to_numpy()
    if clusters.min() < -1 or clusters.max() >= limits.max_clusters:
        raise SnapshotFormatError(f"{POINTS} has cluster numbers outside -1..{limits.max_clusters - 1}.")
    return points_table(hashes.to_pylist(), paths.to_pylist(), labels.to_pylist(), x, y, clusters)


def _check_folder_labels(labels: pa.ChunkedArray, limits: ArchiveLimits) -> None:
    if pc.max(pc.list_value_length(labels)).as_py() > limits.max_folder_labels:
        raise SnapshotFormatError(f"{POINTS} has an image with over {limits.max_folder_labels} folder labels.")
    flat = pc.list_flatten(labels)
    if len(flat) and (flat.null_count or pc.max(pc.utf8_length(flat)).as_py() > limits.max_label_chars):
        raise SnapshotFormatError(
            f"{POINTS} has a missing folder label or one over {limits.max_label_chars} characters."
        )


def parse_clusters(data: bytes, manifest: Mapping[str, Any], points: pa.Table, limits: ArchiveLimits) -> pa.Table:
    """clusters.parquet as a canonical clusters table, consistent with the points' assignments."""
    t = _read_parquet(data, CLUSTERS, _CLUSTER_TYPES, limits.max_clusters)
    n = manifest["counts"]["clusters"]
    if t.num_rows != n:
        raise SnapshotFormatError(f"{CLUSTERS} has {t.num_rows} rows but manifest.counts.clusters says {n}.")
    numbers = t.column("cluster").to_numpy().astype(np.int64)
    sizes = t.column("size").to_numpy().astype(np.int64)
    assigned, counts = np.unique(points.column("cluster").to_numpy(), return_counts=True)
    if len(set(numbers.tolist())) != len(numbers) or sorted(numbers.tolist()) != assigned.tolist():
        raise SnapshotFormatError(f"{CLUSTERS} does not list exactly the clusters the points are assigned to.")
    expected = dict(zip(assigned.tolist(), counts.tolist()))
    if any(expected[c] != s for c, s in zip(numbers.tolist(), sizes.tolist())):
        raise SnapshotFormatError(f"{CLUSTERS} gives cluster sizes that do not match the points.")
    labels = t.column("label").cast(pa.string()).to_pylist()
    methods = t.column("method").cast(pa.string()).to_pylist()
    texts = t.column("candidates").cast(pa.string()).to_pylist()
    candidates = [
        _cluster_candidates(c, label, method, text, limits)
        for c, label, method, text in zip(numbers.tolist(), labels, methods, texts)
    ]
    frame = pd.DataFrame(
        {
            "cluster": numbers,
            "label": labels,
            "method": methods,
            "candidates": candidates,
            "edited": t.column("edited").to_numpy(zero_copy_only=False).astype(bool),
            "size": sizes,
        }
    )
    return clusters_table(frame)


def _cluster_candidates(cluster: int, label: str, method: str, text: str, limits: ArchiveLimits) -> Any:
    """One cluster's candidate labels parsed, after checking the lengths of its texts."""
    if len(label) > limits.max_label_chars or len(method) > 64:
        raise SnapshotFormatError(f"{CLUSTERS}: the label or method of cluster {cluster} is too long.")
    if len(text.encode()) > limits.max_candidates_bytes:
        raise SnapshotFormatError(
            f"{CLUSTERS}: the candidates of cluster {cluster} exceed {limits.max_candidates_bytes} bytes."
        )
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise SnapshotFormatError(f"{CLUSTERS}: the candidates of cluster {cluster} are not valid JSON.") from exc
    if _depth(parsed) > MAX_DEPTH:
        raise SnapshotFormatError(f"{CLUSTERS}: the candidates of cluster {cluster} are nested too deeply.")
    return parsed


def _read_parquet(data: bytes, name: str, types: Mapping[str, str], max_rows: int) -> pa.Table:
    """The columns ``types`` names, refused unless each has that type and no missing values."""
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        schema = pf.schema_arrow
        if pf.metadata.num_rows > max_rows:
            raise SnapshotFormatError(f"{name} has {pf.metadata.num_rows} rows, over the cap of {max_rows}.")
        for column, kind in types.items():
            if schema.get_field_index(column) < 0:
                raise SnapshotFormatError(f"{name} has no column {column!r}; the file is damaged.")
            if not _type_ok(schema.field(column).type, kind):
                raise SnapshotFormatError(
                    f"{name} column {column!r} has type {schema.field(column).type}, expected {kind}."
                )
        table = pf.read(columns=list(types))
    except SnapshotFormatError:
        raise
    except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
        raise SnapshotFormatError(f"{name} is not a readable Parquet table: {str(exc)[:200]}") from exc
    for column in types:
        if table.column(column).null_count:
            raise SnapshotFormatError(f"{name} column {column!r} has missing values.")
    return table


def _type_ok(t: pa.DataType, kind: str) -> bool:
    is_str = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    if kind == "string":
        return is_str
    if kind == "list<string>":
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _type_ok(t.value_type, "string")
    if kind == "float32":
        return pa.types.is_float32(t)
    if kind == "integer":
        return pa.types.is_integer(t)
    return pa.types.is_boolean(t)


# -- thumbnails -------------------------------------------------------------------------


def reencode_thumbnail(data: bytes, name: str) -> bytes:
    """Decode an untrusted WebP (<= 512 px a side), and write it afresh; any oddity is refused."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["WEBP"]) as img:
            width, height = img.size
            if not (0 < width <= MAX_IMPORTED_THUMB_SIDE and 0 < height <= MAX_IMPORTED_THUMB_SIDE):
                raise SnapshotFormatError(
                    f"{name} is {width}x{height} px; thumbnails may be at most {MAX_IMPORTED_THUMB_SIDE} px a side."
                )
            img.load()
            rgb = img.convert("RGB")
    except SnapshotFormatError:
        raise
    except Exception as exc:  # Pillow raises many types on bad input; all mean "not a thumbnail"
        raise SnapshotFormatError(f"{name} is not a valid WebP image ({type(exc).__name__}); not imported.") from exc
    if max(rgb.size) > EXPORT_THUMB_SIZE:
        rgb.thumbnail((EXPORT_THUMB_SIZE, EXPORT_THUMB_SIZE))
    buf = io.BytesIO()
    rgb.save(buf, format="WEBP", quality=80)
    return buf.getvalue()
