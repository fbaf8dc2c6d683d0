"""Find, verify, decode and thumbnail the images of a dataset (a folder or a .zip archive).

An image's identity is the hash of its file bytes, so the same picture at two paths is one
embedding but two records (labels and captions come from the path). ``scan`` decodes every
candidate once, so a file that would break extraction later is reported up front as a
``SkippedFile`` instead of failing a long job halfway through.

Modules: ``records`` (ImageRecord, SkippedFile, ScanResult), ``hashing``, ``decode``,
``thumbnails``, ``features``, ``listing`` (what folder and zip sources share), ``folder``,
``archive`` (zip), ``sources`` (open a root, read one image), ``scan``.
"""

from __future__ import annotations

# ``_decode`` and ``_to_rgb`` are private names from when images was one module, kept because
# callers use them; ``scan`` decodes through ``core.images._decode``, so replacing it still works.
from core.images.decode import decode_image as _decode  # noqa: F401
from core.images.decode import decode_rgb, to_rgb
from core.images.decode import to_rgb as _to_rgb  # noqa: F401
from core.images.features import image_features
from core.images.hashing import content_hash
from core.images.records import SUPPORTED_EXTENSIONS, THUMBNAIL_SIZE, ImageRecord, ScanResult, SkippedFile
from core.images.scan import ProgressCallback, scan
from core.images.sources import read_bytes
from core.images.thumbnails import ensure_thumbnail, thumbnail_path

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "THUMBNAIL_SIZE",
    "ImageRecord",
    "SkippedFile",
    "ScanResult",
    "content_hash",
    "scan",
    "read_bytes",
    "decode_rgb",
    "thumbnail_path",
    "ensure_thumbnail",
    "image_features",
    "to_rgb",
    "ProgressCallback",
]
