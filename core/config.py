"""Where RepLens keeps its files. Environment variables win over the defaults."""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import InvalidInputError

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Thumbnails, uploads and (by default) the DuckDB file live here (`REPLENS_CACHE`)."""
    return Path(os.environ.get("REPLENS_CACHE") or REPO_ROOT / "cache").resolve()


def db_path() -> Path:
    """The DuckDB file (`REPLENS_DB`, default `<cache>/replens.duckdb`)."""
    env = os.environ.get("REPLENS_DB")
    return Path(env).resolve() if env else cache_dir() / "replens.duckdb"


def data_roots() -> list[Path]:
    """The folders the Data page's server-path box may read (`REPLENS_DATA_ROOTS`, separated by
    ``os.pathsep``), each resolved (symlinks followed). None set: the box is off.

    Only the page is limited: the CLI (``replens ingest PATH``) runs in the operator's own shell
    and reads any path that shell can.
    """
    text = os.environ.get("REPLENS_DATA_ROOTS") or ""
    roots: list[Path] = []
    for part in text.split(os.pathsep):
        if part.strip():
            root = Path(part.strip()).expanduser().resolve()
            if root not in roots:
                roots.append(root)
    return roots


# Upload limits, in MB of 1024 * 1024 bytes as Streamlit counts them. A folder's files are each held
# to the per-file limit; a single-file upload (a .zip, a weights file, a .replens) is a whole upload
# on its own and held to the per-upload limit, since checkpoints of ViT-B models are 350-600 MB.
# Streamlit's own cap (server.maxUploadSize in .streamlit/config.toml) equals the per-upload default.
MAX_FILE_MB_DEFAULT = 200
MAX_UPLOAD_MB_DEFAULT = 2048
MB = 1024 * 1024


def max_file_mb() -> int:
    """The largest file a folder upload may hold (`REPLENS_MAX_FILE_MB`, default 200)."""
    return _positive_mb("REPLENS_MAX_FILE_MB", MAX_FILE_MB_DEFAULT)


def max_upload_mb() -> int:
    """The most one upload may bring in all (`REPLENS_MAX_UPLOAD_MB`, default 2048): a folder's files
    together, or one .zip, weights or .replens file."""
    return _positive_mb("REPLENS_MAX_UPLOAD_MB", MAX_UPLOAD_MB_DEFAULT)


def _positive_mb(name: str, default: int) -> int:
    text = (os.environ.get(name) or "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidInputError(
            f"{name}={text!r} is not a size in MB; set it to a whole number of megabytes such as {default}, "
            "or unset it for the default.",
            page_message="This server's upload limit is misconfigured; ask whoever runs RepLens to fix "
            f"{name} (a whole number of megabytes).",
        )
    return value


def env_password() -> str | None:
    """The password a served instance asks for (`REPLENS_PASSWORD`), or None."""
    return os.environ.get("REPLENS_PASSWORD") or None


def env_password_hash() -> str | None:
    """A salted hash of that password (`REPLENS_PASSWORD_HASH`, from ``python -m core.access``), or None."""
    return os.environ.get("REPLENS_PASSWORD_HASH") or None


def allow_open() -> bool:
    """`REPLENS_ALLOW_OPEN=1`: serve on a network address without access control, on purpose."""
    return os.environ.get("REPLENS_ALLOW_OPEN", "").strip().lower() in {"1", "true", "yes"}
