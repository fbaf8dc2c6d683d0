"""Local weights files for hub encoders, given through a page (an upload) instead of ``--weights``.

An uploaded file is kept under ``<cache>/weights/<sha256>.<ext>``: named by its content, so the
same file uploaded twice is stored once, and a name (from an untrusted client) never becomes a
path. It is then passed as ``weights=`` to :func:`core.encoders.load_encoder`, whose cache key
takes the file's identity, exactly as the CLI's ``--weights FILE`` does.

A file is checked before it is kept: a torch pickle must load with ``weights_only=True`` (a
checkpoint whose unpickling would call anything but tensor constructors is refused, and nothing of
it runs), a safetensors file must have a readable header, an ONNX model must not point at external
data files. A page loads weights only from such an upload or from inside a data root
(:func:`check_page_weights`); the CLI, the operator's own shell, loads any file it is given.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import InvalidInputError, UnsafeCheckpointError, WeightsPathRefusedError
from core.fsutil import atomic_path, check_free_space, is_within
from core.roots import inside
from core.uploads import UploadLimits, check_single_upload

# Checkpoint formats the hub loaders read: safetensors / torch pickles (loaded weights-only) and ONNX.
WEIGHT_TYPES = ("safetensors", "pth", "pt", "bin", "ckpt", "onnx")
TORCH_PICKLE_TYPES = ("pth", "pt", "bin", "ckpt")
# The ids of encoders built from a file (core.encoders.files): timm-file:ARCH:PATH, onnx-file:PATH#OUTPUT.
_FILE_ENCODER = re.compile(r"timm-file:[^:]+:(?P<timm>.+)|onnx-file:(?P<onnx>.+)#[^#]+")


def weights_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "weights"


def save_weights(cache_dir: str | Path, filename: str, data: bytes, limits: UploadLimits | None = None) -> Path:
    """Keep an uploaded weights file as ``<cache>/weights/<sha256>.<ext>`` (atomic) -> its path.

    Refused before it is kept (nothing stays in the cache): a type RepLens does not read, an empty
    file, one over the per-upload limit (``limits``, default from ``core.config``), one the disk
    has no room for, and one that fails :func:`check_weights_file`.
    """
    shown = PurePosixPath(filename.replace("\\", "/")).name
    ext = PurePosixPath(shown).suffix.lower().lstrip(".")
    if ext not in WEIGHT_TYPES:
        raise InvalidInputError(
            f"{shown!r} is not a weights file RepLens reads; give a {', '.join('.' + t for t in WEIGHT_TYPES)} file."
        )
    if not data:
        raise InvalidInputError(f"{shown!r} is empty; give the checkpoint file itself.")
    check_single_upload(shown, len(data), limits)
    target = weights_dir(cache_dir) / f"{hashlib.sha256(data).hexdigest()}.{ext}"
    if not (target.is_file() and target.stat().st_size == len(data)):
        check_free_space(cache_dir, len(data), "the weights file")
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
            check_weights_file(tmp, shown)  # before it takes its place: a refused file is removed
    return target


def check_weights_file(path: Path, shown_name: str) -> None:
    """Refuse a weights file RepLens should not load: a torch pickle that ``weights_only=True``
    refuses (UnsafeCheckpointError), or a file that is not the checkpoint its type says
    (InvalidInputError). ``shown_name`` is the name the user knows it by."""
    ext = PurePosixPath(shown_name).suffix.lower().lstrip(".")
    if ext in TORCH_PICKLE_TYPES:
        _check_torch_pickle(path, shown_name)
    elif ext == "safetensors":
        _check_safetensors(path, shown_name)
    elif ext == "onnx":
        _check_onnx(path, shown_name)


def _check_torch_pickle(path: Path, shown_name: str) -> None:
    import torch

    try:
        # The loader RepLens itself uses: unpickling may only rebuild tensors and plain containers.
        # mmap: the tensors are not read into memory, only the pickle is checked.
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise unsafe_checkpoint_error(shown_name, exc) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, … for a file that is no checkpoint
        raise InvalidInputError(
            f"{shown_name!r} is not a PyTorch checkpoint torch can read ({type(exc).__name__}); "
            "give the checkpoint file itself."
        ) from exc


def unsafe_checkpoint_error(shown_name: str, exc: BaseException) -> UnsafeCheckpointError:
    refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f" ({refused.group(1)})" if refused else ""
    return UnsafeCheckpointError(
        f"{shown_name!r} holds pickled Python objects beyond plain tensors{what}: loading it could run "
        "code, so RepLens refuses it and ran none of it. Save only the model's state_dict "
        "(torch.save(model.state_dict(), …)) or convert it to .safetensors.",
        page_message=f"{shown_name!r} holds pickled Python objects beyond plain tensors{what}: loading it "
        "could run code, so RepLens refused it and ran none of it. Upload a .safetensors file, or a "
        "checkpoint that holds only the model's tensors.",
    )


def _check_safetensors(path: Path, shown_name: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):  # reads and checks the header only
            pass
    except Exception as exc:  # SafetensorError and friends: all mean "not a safetensors file"
        raise InvalidInputError(
            f"{shown_name!r} is not a safetensors file ({exc}); give the checkpoint file itself."
        ) from exc


def _check_onnx(path: Path, shown_name: str) -> None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidInputError(f"{shown_name!r} is not an ONNX model ({type(exc).__name__}).") from exc
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _onnx_tensors(model.graph)):
        # Its tensors would be read from files named inside it, beside wherever it is kept.
        raise InvalidInputError(
            f"{shown_name!r} keeps its weights in external data files; upload an ONNX model saved as one "
            "file (onnx.save(model, path, save_as_external_data=False))."
        )


def _onnx_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of an ONNX graph: initializers and tensor attributes, sub-graphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _onnx_tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _onnx_tensors(sub)


def saved_weights(cache_dir: str | Path, path: str | Path | None) -> Path | None:
    """``path`` if it is a weights file saved by :func:`save_weights` under this cache, else None
    (a remembered upload that was since removed, or a path from anywhere else)."""
    if not path:
        return None
    candidate = Path(path)
    root = weights_dir(cache_dir)
    return candidate if candidate.is_file() and root.is_dir() and is_within(root, candidate) else None


def file_encoder_path(encoder_id: str) -> Path | None:
    """The file named inside a ``timm-file:`` / ``onnx-file:`` encoder id, else None."""
    match = _FILE_ENCODER.fullmatch(encoder_id)
    if match is None:
        return None
    return Path(match.group("timm") or match.group("onnx")).expanduser()


def check_page_weights(
    encoder_id: str, weights: str | Path | None, cache_dir: str | Path, roots: Sequence[Path]
) -> None:
    """Refuse, before anything is read, a page's request to load a weights file (``weights``, or the
    file inside a file-encoder id) that is neither an upload kept under this cache nor inside one of
    the data roots (links and ``..`` followed). A page never loads a file from an arbitrary server path."""
    for path in (Path(weights) if weights else None, file_encoder_path(encoder_id)):
        if path is None or saved_weights(cache_dir, path) is not None:
            continue
        resolved = path.resolve()
        if not any(inside(resolved, Path(root).resolve()) for root in roots):
            raise WeightsPathRefusedError(
                f"{path} is neither a weights file uploaded to this server nor inside a data root "
                f"({'; '.join(str(r) for r in roots) or 'none configured'}); a page loads no other file. Use the "
                "CLI for it, or put it inside a folder listed in REPLENS_DATA_ROOTS.",
                page_message="These embeddings were made with a weights file this page may not load: it was "
                "neither uploaded here nor lies inside the folders this server lets pages read. Upload the "
                "weights file on the Data page, or ask whoever runs RepLens to use the command line.",
            )
