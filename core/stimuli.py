"""Four stimulus folders (targets X and Y, attributes A and B) made into one dataset for iEAT.

The Bias page's "upload four stimulus folders" and the CLI share this workflow: check the name,
refuse to mix the stimuli into a dataset of other images, save each role's files under one
sub-folder (named after the folder the user picked, made unique), scan them, check that every
role holds a readable image, and embed the dataset with each chosen encoder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.bias_runs import ROLES, folder_hashes
from core.datasets import ingest_path
from core.encoders import BaseEncoder, get_spec, load_encoder
from core.errors import InvalidInputError
from core.extract import embed_dataset
from core.store import Store
from core.uploads import UPLOAD_TYPES, save_upload, upload_dir

ROLE_NAMES = {"x": "Target X", "y": "Target Y", "a": "Attribute A", "b": "Attribute B"}
SCAN_STAGE = "scan"

# A role's files: (browser name, bytes) pairs as uploaded ("flowers/a.jpg"), or a local folder.
StimulusSource = Sequence[tuple[str, bytes]] | str | os.PathLike[str]
# progress(stage, done, total): stage is SCAN_STAGE while scanning, then each encoder's id while embedding.
StimulusProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class StimulusIngest:
    """What ``ingest_stimulus_folders`` stored: the dataset, a sub-folder per role, the embeddings."""

    dataset: str
    folders: dict[str, str]  # role -> its sub-folder in the dataset
    role_counts: dict[str, int]  # role -> distinct images in that sub-folder
    n_paths: int  # image paths in the dataset after the scan
    n_skipped: int  # files the scan could not read as images
    encoder_keys: list[str]  # the keys the stimuli were embedded under
    refused: list[str] = field(default_factory=list)  # unsafe file names that were not saved


def role_folders(picked: Mapping[str, Sequence[str]], fallback: Mapping[str, str]) -> dict[str, str]:
    """A distinct top-level folder name per role for four separately uploaded folders.

    ``picked`` maps a role to the browser's file names ("flowers/a.jpg"); the folder the user
    picked names the role's folder, unless it is missing, unsafe, or already taken by another
    role, in which case ``fallback[role]`` (e.g. "X") is used, suffixed until unique.
    """
    taken: set[str] = set()
    folders: dict[str, str] = {}
    for role, names in picked.items():
        tops = {n.replace("\\", "/").split("/")[0] for n in names if "/" in n.replace("\\", "/")}
        name = tops.pop() if len(tops) == 1 else ""
        name = re.sub(r"[^A-Za-z0-9._ -]+", "-", name).strip(". -")
        if not name or name.lower() in taken:
            name = fallback[role]
        base, n = name, 2
        while name.lower() in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name.lower())
        folders[role] = name
    return folders


def flat_role_path(folder: str, name: str) -> str:
    """``folder/<file>`` for an uploaded file, its own sub-folders folded into the file name.

    One level only: each role's set is exactly its top-level folder, and folding keeps a
    role's own sub-folders from appearing as folders of their own in the dataset."""
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    inner = parts[1:] if len(parts) > 1 else parts
    return f"{folder}/{'__'.join(inner)}"


def folder_files(folder: str | os.PathLike[str]) -> list[tuple[str, bytes]]:
    """A local folder's images and captions as upload pairs ``("<folder name>/<relative path>", bytes)``.

    Hidden files and folders are left out, like a browser's folder upload filtered to image types.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder; give a folder of images for each role.")
    wanted = {f".{ext}" for ext in UPLOAD_TYPES}
    return [
        (f"{root.name}/{rel}", (root / rel).read_bytes())
        for rel in _visible_files(root)
        if Path(rel).suffix.lower() in wanted
    ]


def _visible_files(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield rel.as_posix()


def default_loader(encoder_id: str) -> BaseEncoder:
    """``encoder_id`` on the best device, at its spec's default layer and pooling."""
    spec = get_spec(encoder_id)
    return load_encoder(encoder_id, "auto", layer=spec.default_layer, pooling=spec.default_pooling)


def ingest_stimulus_folders(
    store: Store,
    dataset: str,
    roles: Mapping[str, StimulusSource],
    encoders: Sequence[str | BaseEncoder],
    *,
    progress: StimulusProgress | None = None,
    loader: Callable[[str], BaseEncoder] = default_loader,
) -> StimulusIngest:
    """Store four stimulus folders as dataset ``dataset`` (one sub-folder per role) and embed it.

    Args:
        roles: for each of "x", "y", "a", "b", either the uploaded (name, bytes) pairs of one
            folder (names as a browser sends them: "flowers/a.jpg") or a local folder path.
        encoders: encoder ids (loaded with ``loader``) or loaded encoders; the dataset is
            embedded with each in turn (already-embedded images are not recomputed).
        progress: ``progress(stage, done, total)``; stage is ``SCAN_STAGE``, then each encoder's id.
        loader: how an encoder id is loaded (the page passes its cached loader).

    The files are copied under ``upload_dir(store, dataset)``. Raises InvalidInputError when a
    role is missing or empty, the name has no letter or digit, ``dataset`` already holds other
    images, nothing could be saved, or a role holds no readable image.
    """
    pairs = _role_pairs(roles)
    if not encoders:
        raise InvalidInputError("Pick at least one encoder to embed the stimuli with.")
    dest = upload_dir(store, dataset)
    _refuse_mixing(store, dataset, dest)
    folders = role_folders({r: [n for n, _ in files] for r, files in pairs.items()}, {r: r.upper() for r in pairs})
    dest, refused = save_upload(
        store, dataset, ((flat_role_path(folders[r], n), data) for r, files in pairs.items() for n, data in files)
    )
    scan, _ = ingest_path(store, dataset, dest, progress=_stage(progress, SCAN_STAGE))
    paths = store.dataset_paths(dataset)
    counts = {role: len(folder_hashes(paths, folder)) for role, folder in folders.items()}
    for role, folder in folders.items():
        if not counts[role]:
            raise InvalidInputError(
                f"{ROLE_NAMES[role]} ({folder}): none of its files is a readable image. "
                "Upload image files (jpg, png, webp, …)."
            )
    keys = []
    for item in encoders:
        encoder = loader(item) if isinstance(item, str) else item
        keys.append(embed_dataset(store, dataset, encoder, progress=_stage(progress, encoder.spec.id)).encoder)
    return StimulusIngest(
        dataset=dataset,
        folders=folders,
        role_counts=counts,
        n_paths=len(paths),
        n_skipped=len(scan.skipped),
        encoder_keys=keys,
        refused=refused,
    )


def _role_pairs(roles: Mapping[str, StimulusSource]) -> dict[str, list[tuple[str, bytes]]]:
    """Each role's files as (name, bytes) pairs, in role order; every role present and non-empty."""
    missing = [ROLE_NAMES[r] for r in ROLES if r not in roles]
    unknown = sorted(set(roles) - set(ROLES))
    if missing or unknown:
        raise InvalidInputError(
            f"Give one folder for each of {', '.join(ROLE_NAMES.values())}"
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (unknown roles: {', '.join(unknown)})" if unknown else "")
            + "."
        )
    pairs = {}
    for role in ROLES:
        source = roles[role]
        files = folder_files(source) if isinstance(source, (str, os.PathLike)) else list(source)
        if not files:
            raise InvalidInputError(f"{ROLE_NAMES[role]}: no image files given; give a folder of images.")
        pairs[role] = files
    return pairs


def _refuse_mixing(store: Store, dataset: str, dest: Path) -> None:
    """Stimuli get a dataset of their own: one holding images from elsewhere is refused."""
    if dataset not in store.dataset_names():
        return
    others = set(store.dataset_paths(dataset)["source"]) - {str(dest.resolve())}
    if others:
        raise InvalidInputError(
            f"A dataset named {dataset!r} already holds other images; give the stimuli a "
            "name of their own so they are not mixed into it."
        )


def _stage(progress: StimulusProgress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(stage, done, total)

    return report
