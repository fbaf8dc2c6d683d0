"""Where RepLens keeps its files. Environment variables win over the defaults."""

from __future__ import annotations

import os
from pathlib import Path

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


def env_password() -> str | None:
    """The password a served instance asks for (`REPLENS_PASSWORD`), or None."""
    return os.environ.get("REPLENS_PASSWORD") or None


def env_password_hash() -> str | None:
    """A salted hash of that password (`REPLENS_PASSWORD_HASH`, from ``python -m core.access``), or None."""
    return os.environ.get("REPLENS_PASSWORD_HASH") or None


def allow_open() -> bool:
    """`REPLENS_ALLOW_OPEN=1`: serve on a network address without access control, on purpose."""
    return os.environ.get("REPLENS_ALLOW_OPEN", "").strip().lower() in {"1", "true", "yes"}
