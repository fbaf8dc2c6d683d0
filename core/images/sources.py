"""Open a dataset root (a folder or a .zip archive) and read one image from it."""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import ImageDecodeError, UnsupportedSourceError
from core.images.archive import ZipSource, zip_index
from core.images.folder import FolderSource
from core.images.listing import READ_ERRORS, ImageSource, read_reason


def open_source(source: str | os.PathLike[str]) -> ImageSource:
    root = Path(source).expanduser()
    if not root.exists():
        raise UnsupportedSourceError(f"{root} does not exist. Pass an existing folder of images or a .zip archive.")
    root = root.resolve()
    if root.is_dir():
        return FolderSource(root)
    if root.is_file() and root.suffix.lower() == ".zip":
        return ZipSource(root, zip_index(root))
    raise UnsupportedSourceError(
        f"{root} is not a folder or a .zip archive. Pass the folder that contains the images, or a .zip of it."
    )


def read_bytes(root: str | os.PathLike[str], rel_path: str) -> bytes:
    """Bytes of one image under a folder or zip root, as named by ``ImageRecord.rel_path``."""
    source = open_source(root)
    try:
        data, _ = source.read(rel_path)
    except READ_ERRORS as exc:
        raise ImageDecodeError(
            f"Cannot read {rel_path!r} from {source.root}: {read_reason(exc)}. "
            "The dataset changed since it was scanned; re-scan it."
        ) from exc
    return data
