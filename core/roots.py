"""Which server paths a page may read: only inside the configured data roots.

The Data page's server-path box goes through :func:`check_server_path`; the CLI does not (it is
the operator's own shell, which can read those files anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.config import data_roots
from core.errors import DataRootsNotConfiguredError, InvalidInputError, OutsideDataRootsError


def inside(path: Path, root: Path) -> bool:
    """Whether the resolved ``path`` is ``root`` or below it (both already resolved)."""
    return path == root or path.is_relative_to(root)


def check_server_path(path: str | Path, roots: Sequence[Path] | None = None) -> Path:
    """``path`` resolved (``~``, ``..`` and every symlink followed) when it lies inside one of
    ``roots`` (default: ``core.config.data_roots()``), else a typed error and nothing is read.

    Resolving before comparing is what stops ``root/../etc`` and ``root/link -> /etc``; the
    resolved path is what the caller should scan, so the answer does not change in between.
    """
    allowed = [Path(r).resolve() for r in (data_roots() if roots is None else roots)]
    if not allowed:
        raise DataRootsNotConfiguredError()
    text = str(path).strip()
    if not text or "\x00" in text:
        raise InvalidInputError("Give the full path of a folder or .zip on the server.")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        raise InvalidInputError(
            f"{text!r} is not a full path: give the whole path, starting with '/'.",
            page_message="Give the full path, starting with '/' (a folder or .zip inside one of the folders listed "
            "above).",
        )
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise InvalidInputError(
            f"{text!r} cannot be followed to a folder: {exc}.",
            page_message="That path cannot be followed to a folder (a link that loops, or a name too long).",
        ) from exc
    if not any(inside(resolved, root) for root in allowed):
        raise OutsideDataRootsError(text, [str(r) for r in allowed])
    return resolved
