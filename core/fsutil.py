"""File-system habits written once: atomic writes and safe relative paths from untrusted names."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f<>:\"|?*\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one step.

    Readers see the old file or the new one, never half of one; on an error the temporary
    file is removed and ``target`` is untouched.
    """
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def has_unsafe_parts(name: str) -> bool:
    """True for a name that could leave the folder it is joined under: absolute, drive, ``..``."""
    unified = name.replace("\\", "/")
    return unified.startswith("/") or bool(_DRIVE.match(unified)) or ".." in unified.split("/")


def safe_relative_path(name: str) -> str | None:
    """An untrusted path made safe to join under a folder, or None to refuse it.

    Refused: absolute paths, drive letters, ``..`` parts, hidden files and ``__MACOSX``; control
    and reserved characters become ``_`` and each part is cut to 200 characters.
    """
    unified = name.replace("\\", "/")
    if has_unsafe_parts(unified):
        return None
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return "/".join(_UNSAFE_CHARS.sub("_", p)[:200] for p in parts)


def is_within(root: Path, target: Path) -> bool:
    """True when ``target`` resolves to a path strictly inside ``root`` (links followed)."""
    return root.resolve() in target.resolve().parents
