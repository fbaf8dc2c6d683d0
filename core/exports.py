"""Exports of a set of images (a Map selection): their paths as CSV, their files as a zip."""

from __future__ import annotations

import io
import zipfile

import pandas as pd

from core import images
from core.errors import RepLensError

_CSV_COLUMNS = ("source", "rel_path", "label", "caption", "content_hash")


def paths_csv(rows: pd.DataFrame) -> bytes:
    """The identifying columns of ``rows`` (those present) as CSV bytes."""
    cols = [c for c in _CSV_COLUMNS if c in rows.columns]
    return rows[cols].to_csv(index=False).encode()


def files_zip(rows: pd.DataFrame) -> bytes:
    """The original files of ``rows`` in a zip, under their dataset-relative paths."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:  # images are compressed already
        for _, row in rows.iterrows():
            try:
                archive.writestr(row["rel_path"], images.read_bytes(row["source"], row["rel_path"]))
            except RepLensError:
                continue  # a file deleted since the scan: export the rest
    return buf.getvalue()
