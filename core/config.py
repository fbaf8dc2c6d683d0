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
