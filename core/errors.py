"""Typed errors for everything a user can cause.

Every message says what went wrong *and* what to do about it. Pages show them with
``st.error``; the CLI prints them on one line and exits non-zero.

What to do differs by where the user is: the CLI names commands and flags, a page names what
to click, and a page never shows server paths. An error whose advice is surface-specific
carries both: ``str(err)`` is the CLI's message, ``err.for_page()`` the page's.
"""

from __future__ import annotations

from collections import Counter


class RepLensError(Exception):
    """Base class: an error the user can fix. ``str(err)`` is the whole message (CLI terms)."""

    exit_code: int = 2

    def __init__(self, *args: object, page_message: str | None = None) -> None:
        super().__init__(*args)
        self.page_message = page_message

    def for_page(self) -> str:
        """The message in a page's terms: what to do on the page, no CLI commands or server paths."""
        return self.page_message if self.page_message is not None else str(self)


class InvalidInputError(RepLensError, ValueError):
    """Arguments or data that cannot be used as given (empty set, zero vector, bad option)."""


class ImageDecodeError(RepLensError):
    """A file could not be read as an image."""


class UnsupportedSourceError(RepLensError):
    """A path that is neither a folder nor a .zip archive of images."""


class DatasetNotFoundError(RepLensError, KeyError):
    """A dataset name that the store does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownEncoderError(RepLensError, KeyError):
    """An encoder id that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class EncoderUnavailableError(RepLensError):
    """A registered encoder that cannot be loaded here (offline hub, missing package, bad file)."""


class EmbeddingsNotFoundError(RepLensError):
    """No stored embeddings for a (dataset, encoder key)."""


class DatabaseLockedError(RepLensError):
    """Another process holds the DuckDB file open for writing."""


class DatabaseError(RepLensError):
    """The DuckDB file cannot be used: not a DuckDB file, unreadable, or from a newer RepLens."""


class ImportFormatError(RepLensError):
    """A file of vectors to import that cannot be parsed or matched to images."""


class DatasetExistsError(InvalidInputError):
    """``ingest_path`` was asked to put a new source into a dataset that already has others."""

    def __init__(self, dataset: str, source: str, sources: list[str]) -> None:
        self.dataset, self.source, self.sources = dataset, source, sources
        super().__init__(
            f"A dataset named {dataset!r} already exists with images from {len(sources)} other source(s) "
            f"({'; '.join(sources[:3])}). Adding {source} to it is an explicit choice: ask to add it, "
            "or give these images a name of their own.",
            page_message=f"A dataset named {dataset!r} already holds images from {len(sources)} other source(s). "
            "Tick “Add to the existing dataset” to add these to it, or give them a name of their own.",
        )


class NoImagesFoundError(UnsupportedSourceError):
    """A folder or archive holding no readable image: no dataset is created or changed."""

    def __init__(self, message: str, n_files: int, extensions: Counter[str]) -> None:
        self.n_files, self.extensions = n_files, extensions
        super().__init__(message)


ROOTS_HOW_TO = (
    "Whoever runs RepLens can allow it by listing the folders the page may read in the "
    "REPLENS_DATA_ROOTS environment variable (separated by ':') before starting the app, e.g. "
    "REPLENS_DATA_ROOTS=/data/images make demo."
)


class DataRootsNotConfiguredError(InvalidInputError):
    """A server path typed on a page while no data root is configured: the page reads no server folder."""

    def __init__(self) -> None:
        super().__init__(
            f"Reading folders on the server from the page is off. {ROOTS_HOW_TO}",
            page_message="Reading folders on the server is off on this instance: upload a folder or a .zip instead. "
            + ROOTS_HOW_TO,
        )


class OutsideDataRootsError(InvalidInputError):
    """A server path outside every configured data root (also through ``..`` or a symlink)."""

    def __init__(self, path: str, roots: list[str]) -> None:
        self.path, self.roots = path, roots
        super().__init__(
            f"{path} is outside the folders RepLens may read from the page ({'; '.join(roots)}). "
            "Give a folder or .zip inside one of them, or add its folder to REPLENS_DATA_ROOTS.",
            page_message="That path is outside the folders this server lets the page read (links and '..' "
            "count where they lead). Give a folder or .zip inside one of the folders listed above, or upload "
            "the images instead.",
        )


class UploadTooLargeError(InvalidInputError):
    """An uploaded file, or one upload's files together, larger than this server takes
    (``REPLENS_MAX_FILE_MB`` / ``REPLENS_MAX_UPLOAD_MB``); nothing of the upload is kept."""

    def __init__(self, message: str, *, page_message: str, name: str, size: int, limit: int) -> None:
        self.name, self.size, self.limit = name, size, limit
        super().__init__(message, page_message=page_message)


class StorageError(RepLensError):
    """RepLens could not write to its cache or database folder; what failed was left as it was."""


class StorageFullError(StorageError):
    """No room left on the disk (or quota) of the cache or database folder, found before or while writing."""


class StorageNotWritableError(StorageError):
    """The cache or database folder is read-only (a read-only mount) or not writable by RepLens."""


class UnsafeCheckpointError(InvalidInputError):
    """A checkpoint holding pickled Python objects beyond plain tensors: loading it could run code."""


class WeightsPathRefusedError(InvalidInputError):
    """A page asked to load a weights file that was neither uploaded here nor lies inside a data root."""


class EngineUnavailableError(RepLensError):
    """An extraction engine whose optional packages are not installed here."""


class RayJobError(RepLensError):
    """The Ray job stopped (a worker's error, actors that could not start, the cluster went away);
    the vectors that reached the store before are kept."""
