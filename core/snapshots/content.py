"""A snapshot's canonical content: the two Arrow tables, the manifest and the content id.

Everything here is pure (no store, no files), so saving, exporting and importing all build
and hash a snapshot the same way: the same content always gets the same id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.jsonsafe import jsonable

FORMAT = "replens-snapshot"
FORMAT_VERSION = 1  # of the snapshot content and the .replens layout; not the DB schema

MANIFEST, POINTS, CLUSTERS = "manifest.json", "points.parquet", "clusters.parquet"  # .replens members

POINTS_SCHEMA = pa.schema(
    [
        ("content_hash", pa.string()),
        ("rel_path", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("cluster", pa.int32()),
    ]
)
CLUSTERS_SCHEMA = pa.schema(
    [
        ("cluster", pa.int32()),
        ("label", pa.string()),
        ("method", pa.string()),
        ("candidates", pa.string()),
        ("edited", pa.bool_()),
        ("size", pa.int32()),
    ]
)


def canonical_json(value: Any) -> bytes:
    """The bytes hashed into a content id.

    Not ``core.jsonsafe.dumps_canonical``: that one escapes non-ASCII text, and changing the
    bytes would change the id of every snapshot already saved or shared.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def points_table(
    hashes: list[str], rel_paths: list[str], labels: list[list[str]], x: Any, y: Any, clusters: Any
) -> pa.Table:
    """Points in canonical form: typed columns, ordered by content hash."""
    table = pa.table(
        {
            "content_hash": pa.array(hashes, pa.string()),
            "rel_path": pa.array(rel_paths, pa.string()),
            "labels": pa.array([list(v) for v in labels], pa.list_(pa.string())),
            "x": pa.array(np.asarray(x, dtype=np.float32)),
            "y": pa.array(np.asarray(y, dtype=np.float32)),
            "cluster": pa.array(np.asarray(clusters, dtype=np.int32)),
        },
        schema=POINTS_SCHEMA,
    )
    return table.take(pc.sort_indices(table, [("content_hash", "ascending")]))


def clusters_table(frame: pd.DataFrame) -> pa.Table:
    """Clusters in canonical form: by number, candidates as canonical JSON text."""
    frame = frame.sort_values("cluster")
    return pa.table(
        {
            "cluster": pa.array(frame["cluster"].to_numpy().astype(np.int32)),
            "label": pa.array([str(v) for v in frame["label"]], pa.string()),
            "method": pa.array([str(v) for v in frame["method"]], pa.string()),
            "candidates": pa.array([canonical_json(jsonable(v)).decode() for v in frame["candidates"]], pa.string()),
            "edited": pa.array([bool(v) for v in frame["edited"]], pa.bool_()),
            "size": pa.array(frame["size"].to_numpy().astype(np.int32)),
        },
        schema=CLUSTERS_SCHEMA,
    )


def build_manifest(
    snapshot_id: str, created: str, replens_version: str, header: Mapping[str, Any], n_points: int, n_clusters: int
) -> dict[str, Any]:
    """The JSON description of a snapshot (no tables): a fresh deep copy, so callers may add to it."""
    out = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "replens_version": replens_version,
        "id": snapshot_id,
        "created": created,
    }
    out.update({k: v for k, v in header.items() if k not in ("format", "format_version")})
    out["counts"] = {"points": int(n_points), "clusters": int(n_clusters)}
    copied: dict[str, Any] = json.loads(json.dumps(out))
    return copied


def header_from_manifest(m: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed header (title, notes, dataset, encoder, projection, clustering) of a manifest."""
    c = m["clustering"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "title": m["title"],
        "notes": m["notes"],
        "dataset": {"name": m["dataset"]["name"]},
        "encoder": {"key": m["encoder"]["key"], "spec": m["encoder"]["spec"]},
        "projection": {
            "key": m["projection"]["key"],
            "method": m["projection"]["method"],
            "params": m["projection"]["params"],
        },
        "clustering": {
            "run_id": c["run_id"],
            "method": c["method"],
            "params": c["params"],
            "metrics": c["metrics"],
            "n_clusters": c["n_clusters"],
            "noise_fraction": c["noise_fraction"],
        },
    }


def content_id(header: Mapping[str, Any], points: pa.Table, clusters: pa.Table) -> str:
    """sha256 over the canonical content: header JSON (minus the source run id), points, clusters.

    Points are hashed in content-hash order: strings as canonical JSON, coordinates as
    little-endian float32 and clusters as int32 bytes; each part is length-prefixed.
    """
    h = hashlib.sha256(b"replens-snapshot/1\n")

    def part(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    content = dict(header)
    content["clustering"] = {k: v for k, v in header["clustering"].items() if k != "run_id"}
    part(canonical_json(content))
    part(
        canonical_json(
            [
                points.column("content_hash").to_pylist(),
                points.column("rel_path").to_pylist(),
                points.column("labels").to_pylist(),
            ]
        )
    )
    part(points.column("x").to_numpy().astype("<f4").tobytes())
    part(points.column("y").to_numpy().astype("<f4").tobytes())
    part(points.column("cluster").to_numpy().astype("<i4").tobytes())
    columns = (clusters.column(n).to_pylist() for n in ("cluster", "label", "method", "candidates", "edited", "size"))
    part(
        canonical_json(
            [
                [int(c), label, method, json.loads(cand), bool(edited), int(size)]
                for c, label, method, cand, edited, size in zip(*columns)
            ]
        )
    )
    return h.hexdigest()
