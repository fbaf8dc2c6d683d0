"""Pipelined extraction: a folder of images to vectors committed in DuckDB, with every stage busy.

``embed_dataset_pipelined`` takes what ``core.extract.embed_dataset`` takes and records its run
the same way; reading, decoding (nvjpeg for JPEGs on CUDA, Pillow for the rest), preprocessing,
the forward pass and the DuckDB writes run as overlapping stages joined by bounded queues. The
same code runs on ``device="cpu"`` (libjpeg-turbo through torchvision instead of nvjpeg).

Its vectors agree with the local engine's (same cache key, see ``tests/test_gpu_pipeline.py``
for the tolerance): the preprocessing reproduces Pillow's resize as matrix products, and a JPEG
is drafted and oriented as ``core.images.decode_rgb`` does. On CPU the pixels are the local
engine's exactly (libjpeg-turbo both, float64 resize sums, Pillow for JPEGs it drafts); on CUDA
nvjpeg decodes, float32 sums resize and a box average stands in for the draft's DCT scaling.

Modules: ``jpeg`` (which JPEGs the fast decoder takes), ``geometry`` (Pillow-exact resize, crop,
letterbox and normalisation on the device), ``decode`` (reading and decoding), ``engine`` (the
stages, queues and run recording).
"""

from __future__ import annotations

from core.gpupipe.engine import DEFAULT_QUEUE_DEPTH, ENGINE, PipelinedReport, PipelineStats, embed_dataset_pipelined
from core.gpupipe.geometry import Preprocessor
from core.gpupipe.jpeg import JpegHeader, fast_jpeg_header

__all__ = [
    "DEFAULT_QUEUE_DEPTH",
    "ENGINE",
    "JpegHeader",
    "PipelineStats",
    "PipelinedReport",
    "Preprocessor",
    "embed_dataset_pipelined",
    "fast_jpeg_header",
]
