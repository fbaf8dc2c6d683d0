"""Bring your own vectors: import embeddings computed elsewhere (csv, parquet, npy, npz).

Rows are matched to the dataset's images by an id column holding, in order of preference,
the relative path, the file name or stem (when unique in the dataset), or the content hash.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from core.errors import ImportFormatError
from core.keys import IMPORT_PREFIX as IMPORT_PREFIX  # re-exported: it used to be defined here
from core.keys import EncoderKey
from core.store import Store


@dataclass(frozen=True)
class ImportReport:
    dataset: str
    encoder: str
    imported: int
    unmatched: list[str]
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "encoder": self.encoder,
            "imported": self.imported,
            "unmatched": self.unmatched,
            "dim": self.dim,
        }


def import_embeddings(
    store: Store, path: str | Path, dataset: str, encoder_name: str, id_column: str | None = None
) -> ImportReport:
    """Read vectors from ``path`` and store them under the key ``import:<encoder_name>``."""
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path} does not exist.")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,80}", encoder_name):
        raise ImportFormatError(f"--encoder-name {encoder_name!r}: use letters, digits, '.', '_' or '-' (max 80).")
    store.require_dataset(dataset)
    ids, vectors = _read_vectors(path, store, dataset, id_column)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise ImportFormatError(f"{path.name}: expected a non-empty 2-D table of vectors, got shape {vectors.shape}.")
    if len(ids) != len(vectors):
        raise ImportFormatError(f"{path.name}: {len(ids)} ids but {len(vectors)} vectors; give one id per vector.")
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise ImportFormatError(f"{path.name}: row {bad} ({ids[bad]!r}) has NaN or infinite values; fix or drop it.")
    hashes, unmatched = _match_ids(store, dataset, ids)
    keep = [i for i, h in enumerate(hashes) if h is not None]
    if not keep:
        raise ImportFormatError(
            f"None of the {len(ids)} ids in {path.name} matched an image of {dataset!r} "
            f"(first id: {ids[0]!r}). Ids must be relative paths, file names or content hashes."
        )
    keep = _drop_repeated_images(path.name, ids, hashes, vectors, keep)
    key = EncoderKey.imported(encoder_name).format()
    dim = int(vectors.shape[1])
    spec = {
        "id": key,
        "version": "imported",
        "name": encoder_name,
        "family": "imported",
        "source": str(path),
        "dim": dim,
        "needs_network": False,
        "has_text_tower": False,
    }
    existing = store.encoder_spec(key)
    if existing is not None and int(existing["dim"]) != dim:
        raise ImportFormatError(
            f"{key} already holds {existing['dim']}-d vectors; these are {dim}-d. Pick another name."
        )
    store.register_encoder(key, key, "imported", "imported", "imported", dim, spec)
    # Importing under the same name again means "these are my vectors now": overwrite.
    kept_hashes = [h for i in keep if (h := hashes[i]) is not None]  # all of them: keep holds matched rows only
    written = store.write_embeddings(key, kept_hashes, vectors[keep], replace=True)
    return ImportReport(dataset, key, written, unmatched, dim)


def _read_vectors(path: Path, store: Store, dataset: str, id_column: str | None) -> tuple[list[str], np.ndarray]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".npy", ".npz"):
            _check_declared_sizes(path, suffix)
        if suffix == ".npy":
            vectors = np.load(path, allow_pickle=False)
            paths = store.dataset_paths(dataset)["rel_path"].tolist()
            if len(vectors) != len(paths):
                raise ImportFormatError(
                    f"{path.name} has {len(vectors)} rows but {dataset!r} has {len(paths)} paths. A .npy must list "
                    "every path in sorted order; use .npz (arrays 'ids' and 'vectors') or csv/parquet with an id "
                    "column."
                )
            return paths, np.asarray(vectors, np.float32)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if "ids" not in npz or "vectors" not in npz:
                    raise ImportFormatError(f"{path.name}: a .npz needs arrays 'ids' and 'vectors'; has {list(npz)}.")
                return [str(i) for i in npz["ids"]], np.asarray(npz["vectors"], np.float32)
        if suffix in (".csv", ".tsv"):
            # Ids stay text: "0001" (a file stem) must not become the number 1.
            text_columns = {c: str for c in (id_column, *_ID_COLUMNS) if c}
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=text_columns)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            raise ImportFormatError(f"{path.name}: unsupported format; use .csv, .tsv, .parquet, .npy or .npz.")
    except ImportFormatError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ImportFormatError(f"Could not read {path.name}: {exc}") from exc
    return _frame_vectors(frame, path.name, id_column)


def _check_declared_sizes(path: Path, suffix: str) -> None:
    """Refuse arrays whose .npy header declares more data than the file holds, before numpy
    allocates that much (a 100-byte file can declare terabytes)."""
    if suffix == ".npy":
        with path.open("rb") as fh:
            _check_array_header(fh, path.stat().st_size, path.name, "the array")
        return
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".npy"):
                with zf.open(info) as fh:
                    _check_array_header(fh, info.file_size, path.name, f"array {info.filename[:-4]!r}")


def _check_array_header(fh: IO[bytes], n_bytes: int, name: str, what: str) -> None:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ImportFormatError(f"{name}: {what} uses .npy format version {version}; save it with numpy.save.")
    held = n_bytes - fh.tell()
    declared = math.prod(shape) * dtype.itemsize
    if declared > held:
        raise ImportFormatError(
            f"{name}: {what} declares shape {shape} ({declared} bytes) but holds only {held} bytes of data; "
            "the file is damaged or not a vectors file. Save the vectors again with numpy."
        )


_ID_COLUMNS = ("rel_path", "path", "id", "filename", "content_hash")
# pandas' name for a header-less column, e.g. the row index that DataFrame.to_csv writes by default.
_UNNAMED_COLUMN = re.compile(r"Unnamed: \d+")


def _frame_vectors(frame: pd.DataFrame, name: str, id_column: str | None) -> tuple[list[str], np.ndarray]:
    id_column = id_column or next((c for c in _ID_COLUMNS if c in frame), None)
    if id_column is None or id_column not in frame:
        raise ImportFormatError(f"{name}: name the id column with --id-column (columns: {list(frame.columns)[:10]}).")
    ids = frame[id_column].astype(str).tolist()
    rest = frame.drop(columns=[id_column])
    rest = rest.drop(columns=[c for c in rest if _UNNAMED_COLUMN.fullmatch(str(c))])
    list_cols = [
        c
        for c in rest
        if rest[c].map(lambda v: isinstance(v, (list, np.ndarray, str))).all()
        and c in ("vector", "embedding", "embeddings")
    ]
    if list_cols:
        column = rest[list_cols[0]]
        try:
            rows = [np.asarray(json.loads(v) if isinstance(v, str) else v, np.float32) for v in column]
        except (ValueError, TypeError) as exc:
            raise ImportFormatError(
                f"{name}: column {list_cols[0]!r} holds something that is not a list of numbers ({exc})."
            ) from exc
        lengths = sorted({len(r) if r.ndim == 1 else -1 for r in rows})
        if len(lengths) != 1 or lengths[0] < 1:
            raise ImportFormatError(
                f"{name}: the vectors in column {list_cols[0]!r} have different lengths "
                f"({', '.join(map(str, lengths[:5]))}); every vector needs the same dimension."
            )
        return ids, np.stack(rows)
    numeric = rest.select_dtypes(include="number")
    if numeric.shape[1] == 0:
        raise ImportFormatError(f"{name}: no numeric columns and no 'vector'/'embedding' list column found.")
    return ids, numeric.to_numpy(np.float32)


def _match_ids(store: Store, dataset: str, ids: list[str]) -> tuple[list[str | None], list[str]]:
    paths = store.dataset_paths(dataset)
    by_path = dict(zip(paths["rel_path"], paths["content_hash"]))
    names = paths["rel_path"].map(lambda p: p.rsplit("/", 1)[-1])
    stems = names.map(lambda n: n.rsplit(".", 1)[0])
    by_name = _unique_map(names, paths["content_hash"])
    by_stem = _unique_map(stems, paths["content_hash"])
    hashes = set(paths["content_hash"])
    matched: list[str | None] = []
    for raw in ids:
        key = raw.replace("\\", "/").removeprefix("./")
        found = by_path.get(key) or by_name.get(key) or by_stem.get(key) or (key if key in hashes else None)
        matched.append(found)
    unmatched = [i for i, h in zip(ids, matched) if h is None]
    return matched, unmatched


def _unique_map(keys: pd.Series, values: pd.Series) -> dict[str, str]:
    """key -> hash for keys that name one image (two paths with the same bytes are one image)."""
    images_per_key = pd.DataFrame({"key": keys, "value": values}).groupby("key")["value"].nunique()
    return {k: v for k, v in zip(keys, values) if images_per_key[k] == 1}


def _drop_repeated_images(
    name: str, ids: list[str], hashes: list[str | None], vectors: np.ndarray, keep: list[int]
) -> list[int]:
    """One row per image: rows naming the same image must agree, or which one wins is arbitrary."""
    first: dict[str, int] = {}
    unique: list[int] = []
    for i in keep:
        h = hashes[i]
        assert h is not None
        if h not in first:
            first[h] = i
            unique.append(i)
        elif not np.array_equal(vectors[first[h]], vectors[i]):
            raise ImportFormatError(
                f"{name}: rows {first[h]} ({ids[first[h]]!r}) and {i} ({ids[i]!r}) are the same image "
                "with different vectors; keep one of them."
            )
    return unique
