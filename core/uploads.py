"""Files a browser uploads, saved safely under RepLens's cache.

Every name comes from an untrusted client: it is made safe with ``core.fsutil.safe_relative_path``
(absolute paths, drive letters, ``..``, hidden files refused; control characters replaced) and
nothing is ever written outside the dataset's upload folder.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from core import images
from core.errors import InvalidInputError
from core.fsutil import atomic_write_bytes, is_within, safe_relative_path
from core.names import check_dataset_name
from core.store import Store

# File types an upload may hold: images, and .txt captions beside them.
UPLOAD_TYPES = sorted({ext.lstrip(".") for ext in images.SUPPORTED_EXTENSIONS} | {"txt"})


def dataset_slug(name: str) -> str:
    """A folder name for a dataset's uploads; the name is checked first (``check_dataset_name``)."""
    slug = _slug(check_dataset_name(name))
    if not slug:
        raise InvalidInputError("Give the dataset a name with at least one letter or digit.")
    return slug


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip(".-")[:80]


def upload_dir(store: Store, dataset: str) -> Path:
    """Where ``dataset``'s uploaded files are kept: ``<cache>/uploads/<slug>``."""
    return store.cache_dir / "uploads" / dataset_slug(dataset)


def uploads_root(store: Store) -> Path:
    return (store.cache_dir / "uploads").resolve()


def existing_upload_dir(store: Store, dataset: str) -> Path | None:
    """``dataset``'s upload folder if it has one (also for a name stored before names were checked)."""
    slug = _slug(dataset)
    folder = uploads_root(store) / slug if slug else None
    return folder if folder is not None and folder.is_dir() else None


def upload_folders_of(store: Store, sources: Iterable[str]) -> set[Path]:
    """The upload folders (``<cache>/uploads/<slug>``) that hold any of ``sources``."""
    root = uploads_root(store)
    folders = set()
    for source in sources:
        path = Path(source)
        if root in path.parents:
            folders.add(root / path.relative_to(root).parts[0])
    return folders


def datasets_using(store: Store, folder: Path, *, besides: str | None = None) -> list[str]:
    """The datasets (other than ``besides``) with a source inside ``folder``."""
    folder = folder.resolve()
    users = []
    for name in store.dataset_names():
        if name != besides and any(folder == Path(s) or folder in Path(s).parents for s in store.dataset_sources(name)):
            users.append(name)
    return users


def claim_upload_dir(store: Store, dataset: str) -> Path:
    """``upload_dir(store, dataset)``, refused when another dataset's files are kept there
    (two names can share a folder name: "my photos" and "my-photos")."""
    dest = upload_dir(store, dataset)
    others = datasets_using(store, dest, besides=dataset)
    if others:
        raise InvalidInputError(
            f"The name {dataset!r} would keep its uploads with those of dataset {others[0]!r}; "
            "pick a name that differs in its letters or digits."
        )
    return dest


def remove_upload_folder(store: Store, folder: Path, *, besides: str | None = None) -> bool:
    """Delete an upload folder (only one under ``<cache>/uploads``, and only when no dataset
    other than ``besides`` reads from it); -> whether it was removed."""
    folder = folder.resolve()
    if folder.parent != uploads_root(store) or not folder.is_dir() or datasets_using(store, folder, besides=besides):
        return False
    shutil.rmtree(folder)
    return True


def strip_common_root(paths: list[str]) -> list[str]:
    """Drop the picked folder's own name ("holiday/cats/a.jpg" -> "cats/a.jpg").

    A directory upload names every file under the folder the user picked; when that folder
    has sub-folders, they are the labels and the picked name would only shadow them. A flat
    folder keeps its name, so uploading "cats" then "dogs" gives two labels.
    """
    split = [PurePosixPath(p).parts for p in paths]
    nested = any(len(s) > 2 for s in split)
    if split and nested and all(len(s) > 1 for s in split) and len({s[0] for s in split}) == 1:
        return ["/".join(s[1:]) for s in split]
    return paths


def save_files(dest: Path, files: Iterable[tuple[str, bytes]]) -> tuple[int, list[str]]:
    """Write (name, bytes) pairs under ``dest`` keeping sub-folders; -> (saved, refused names)."""
    refused: list[str] = []
    kept: list[tuple[str, bytes]] = []
    for name, data in files:
        rel = safe_relative_path(name)
        if rel is None:
            refused.append(name)
        else:
            kept.append((rel, data))
    root = dest.resolve()
    saved = 0
    for rel, (_, data) in zip(strip_common_root([p for p, _ in kept]), kept):
        target = root / rel
        if not is_within(root, target):
            refused.append(rel)  # belt and braces (e.g. a link inside dest): never write outside it
            continue
        atomic_write_bytes(target, data)
        saved += 1
    return saved, refused


def save_upload(store: Store, dataset: str, files: Iterable[tuple[str, bytes]]) -> tuple[Path, list[str]]:
    """Save a folder upload under ``upload_dir(store, dataset)``; -> (that folder, refused names).

    Raises InvalidInputError when not one file could be saved.
    """
    dest = claim_upload_dir(store, dataset)
    saved, refused = save_files(dest, files)
    if saved == 0:
        unsafe = f" Refused {len(refused)} unsafe file name(s): {', '.join(refused[:5])}." if refused else ""
        raise InvalidInputError(f"None of the uploaded files could be saved; upload image files.{unsafe}")
    return dest, refused


def save_archive(dest: Path, name: str, data: bytes) -> Path:
    """Keep an uploaded .zip under ``dest/archives/``; core scans archives without unpacking."""
    safe = safe_relative_path(PurePosixPath(name.replace("\\", "/")).name)
    if safe is None or not safe.lower().endswith(".zip"):
        raise InvalidInputError(f"{name!r} is not a .zip file name; upload a .zip archive.")
    if not data.startswith(b"PK"):
        raise InvalidInputError(f"{name} is not a zip archive (wrong header); re-create it and upload again.")
    target = dest / "archives" / safe
    atomic_write_bytes(target, data)
    return target


def shown_sources(store: Store, sources: str) -> str:
    """Sources ("a; b") as a page visitor should see them: an upload is "uploaded (name)", not a
    path inside the server's cache; a server path the user typed is shown as typed."""
    root = str(uploads_root(store))
    shown = []
    for source in (p.strip() for p in sources.split(";") if p.strip()):
        resolved = str(Path(source).resolve())
        inside = resolved == root or resolved.startswith(root + "/")
        shown.append(f"uploaded ({Path(resolved).name})" if inside else source)
    return "; ".join(shown)
