"""Local weights files for hub encoders, given through a page (an upload) instead of ``--weights``.

An uploaded file is kept under ``<cache>/weights/<sha256>.<ext>``: named by its content, so the
same file uploaded twice is stored once, and a name (from an untrusted client) never becomes a
path. It is then passed as ``weights=`` to :func:`core.encoders.load_encoder`, whose cache key
takes the file's identity, exactly as the CLI's ``--weights FILE`` does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from core.errors import InvalidInputError
from core.fsutil import atomic_write_bytes, is_within

# Checkpoint formats the hub loaders read: safetensors / torch pickles (loaded weights-only) and ONNX.
WEIGHT_TYPES = ("safetensors", "pth", "pt", "bin", "ckpt", "onnx")


def weights_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "weights"


def save_weights(cache_dir: str | Path, filename: str, data: bytes) -> Path:
    """Keep an uploaded weights file as ``<cache>/weights/<sha256>.<ext>`` (atomic) -> its path."""
    ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower().lstrip(".")
    if ext not in WEIGHT_TYPES:
        raise InvalidInputError(
            f"{PurePosixPath(filename).name!r} is not a weights file RepLens reads; give a "
            f"{', '.join('.' + t for t in WEIGHT_TYPES)} file."
        )
    if not data:
        raise InvalidInputError(f"{PurePosixPath(filename).name!r} is empty; give the checkpoint file itself.")
    target = weights_dir(cache_dir) / f"{hashlib.sha256(data).hexdigest()}.{ext}"
    if not (target.is_file() and target.stat().st_size == len(data)):
        atomic_write_bytes(target, data)
    return target


def saved_weights(cache_dir: str | Path, path: str | Path | None) -> Path | None:
    """``path`` if it is a weights file saved by :func:`save_weights` under this cache, else None
    (a remembered upload that was since removed, or a path from anywhere else)."""
    if not path:
        return None
    candidate = Path(path)
    root = weights_dir(cache_dir)
    return candidate if candidate.is_file() and root.is_dir() and is_within(root, candidate) else None
