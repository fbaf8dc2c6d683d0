"""Batched, resumable embedding extraction.

``embed_dataset`` embeds only what the store lacks for (image hash, encoder key): a rerun,
or a restart after a crash, picks up where the last committed chunk ended. Decoding and
preprocessing run in worker threads (Pillow releases the GIL) and overlap with the model's
forward pass; vectors are written to DuckDB in chunks, each in its own transaction.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core import images
from core.encoders import BaseEncoder
from core.errors import InvalidInputError, RepLensError
from core.store import PendingImage, Store

ProgressCallback = Callable[[int, int], None]

DEFAULT_CPU_BATCH = 32
DEFAULT_GPU_BATCH = 256
CHUNK_SIZE = 512  # vectors per transaction: a crash loses at most this much work


@dataclass
class EmbedReport:
    dataset: str
    encoder: str                # the cache key
    encoded: int = 0
    cached: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0
    device: str = "cpu"
    batch_size: int = 0
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Prepared:
    item: PendingImage
    array: np.ndarray | None
    error: str | None


def default_batch_size(device: str) -> int:
    return DEFAULT_GPU_BATCH if device.startswith("cuda") else DEFAULT_CPU_BATCH


def embed_dataset(store: Store, dataset: str, encoder: BaseEncoder, *, batch_size: int | None = None,
                  workers: int = 4, progress: ProgressCallback | None = None,
                  should_stop: Callable[[], bool] | None = None) -> EmbedReport:
    """Embed every image of ``dataset`` that has no vector under ``encoder.key`` yet.

    Args:
        batch_size: images per forward pass (default 32 on CPU, 256 on GPU; halved
            automatically on a GPU out-of-memory error).
        workers: decode/preprocess threads.
        progress: called with (done, total) after each batch, counting cached images as done.
        should_stop: polled between batches; returning True ends the run early after
            committing what was computed (used when a browser session goes away).
    """
    batch_size = batch_size or default_batch_size(encoder.device)
    if batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size} must be >= 1")
    store.register_encoder(encoder.key, encoder.spec.id, encoder.spec.version, encoder.layer, encoder.pooling,
                           encoder.dim, encoder.spec.to_dict())
    pending = store.pending_images(dataset, encoder.key)
    total = len(store.dataset_images(dataset))
    report = EmbedReport(dataset=dataset, encoder=encoder.key, cached=total - len(pending), device=encoder.device,
                         batch_size=batch_size)
    report.run_id = store.start_run("embed", dataset, encoder.key, {"batch_size": batch_size, "device": encoder.device})
    started = time.perf_counter()
    try:
        _run(store, dataset, encoder, pending, report, batch_size, workers, progress, should_stop, total)
    except BaseException as exc:
        store.finish_run(report.run_id, stats=_stats(report, started), error=f"{type(exc).__name__}: {exc}")
        raise
    store.finish_run(report.run_id, stats=_stats(report, started))
    return report


def _stats(report: EmbedReport, started: float) -> dict[str, Any]:
    report.seconds = round(time.perf_counter() - started, 3)
    report.images_per_s = round(report.encoded / report.seconds, 2) if report.seconds > 0 else 0.0
    return {"encoded": report.encoded, "cached": report.cached, "failed": len(report.failed),
            "seconds": report.seconds, "images_per_s": report.images_per_s}


def _run(store: Store, dataset: str, encoder: BaseEncoder, pending: Sequence[PendingImage], report: EmbedReport,
         batch_size: int, workers: int, progress: ProgressCallback | None,
         should_stop: Callable[[], bool] | None, total: int) -> None:
    if progress:
        progress(report.cached, total)
    if not pending:
        return
    chunk_hashes: list[str] = []
    chunk_vectors: list[np.ndarray] = []
    failures: list[tuple[PendingImage, str]] = []
    done = report.cached
    draft = (encoder.spec.input_size, encoder.spec.input_size)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="replens-decode") as pool:
        for batch in _prepared_batches(pool, pending, encoder, batch_size, draft):
            good = [p for p in batch if p.array is not None]
            failures.extend((p.item, p.error or "unknown error") for p in batch if p.array is None)
            if good:
                vectors, batch_size = _embed_with_backoff(encoder, np.stack([p.array for p in good]), batch_size)
                chunk_hashes.extend(p.item.content_hash for p in good)
                chunk_vectors.append(vectors)
            done += len(batch)
            if len(chunk_hashes) >= CHUNK_SIZE:
                report.encoded += _flush(store, encoder.key, chunk_hashes, chunk_vectors)
            if progress:
                progress(done, total)
            if should_stop and should_stop():
                break
    report.encoded += _flush(store, encoder.key, chunk_hashes, chunk_vectors)
    report.batch_size = batch_size
    if failures:
        store.record_embed_failures(dataset, [f[0] for f in failures], [f[1] for f in failures])
        report.failed = [{"path": f"{item.rel_path}", "reason": reason} for item, reason in failures]


def _flush(store: Store, key: str, hashes: list[str], vectors: list[np.ndarray]) -> int:
    if not hashes:
        return 0
    written = store.write_embeddings(key, hashes, np.concatenate(vectors))
    hashes.clear()
    vectors.clear()
    return written


def _prepare(item: PendingImage, encoder: BaseEncoder, draft: tuple[int, int]) -> _Prepared:
    try:
        data = images.read_bytes(item.source, item.rel_path)
        image = images.decode_rgb(data, draft_size=draft)
        return _Prepared(item, encoder.preprocess(image), None)
    except RepLensError as exc:
        return _Prepared(item, None, str(exc))
    except (OSError, ValueError) as exc:  # a file that changed on disk since the scan
        return _Prepared(item, None, f"{type(exc).__name__}: {exc}")


def _prepared_batches(pool: ThreadPoolExecutor, pending: Sequence[PendingImage], encoder: BaseEncoder,
                      batch_size: int, draft: tuple[int, int]) -> Iterator[list[_Prepared]]:
    """Yield batches in order while the pool decodes up to two batches ahead."""
    window: list[Future[_Prepared]] = []
    ahead = 2 * batch_size
    for item in pending:
        window.append(pool.submit(_prepare, item, encoder, draft))
        if len(window) >= batch_size + ahead:
            yield [f.result() for f in window[:batch_size]]
            window = window[batch_size:]
    while window:
        yield [f.result() for f in window[:batch_size]]
        window = window[batch_size:]


def _embed_with_backoff(encoder: BaseEncoder, batch: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """Run the batch; on a GPU out-of-memory error, halve the batch size and retry in pieces."""
    try:
        return encoder.embed_batch(batch), batch_size
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower() or len(batch) == 1:
            raise
        _empty_gpu_cache()
        smaller = max(1, min(batch_size, len(batch)) // 2)
        parts = [_embed_with_backoff(encoder, batch[i:i + smaller], smaller) for i in range(0, len(batch), smaller)]
        return np.concatenate([p[0] for p in parts]), min(p[1] for p in parts)


def _empty_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def embed_images(encoder: BaseEncoder, pil_images: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
    """Embed in-memory PIL images (an uploaded query image, say) without touching the store."""
    if not pil_images:
        return np.zeros((0, encoder.dim), np.float32)
    batch_size = batch_size or default_batch_size(encoder.device)
    arrays = [encoder.preprocess(img) for img in pil_images]
    out = [encoder.embed_batch(np.stack(arrays[i:i + batch_size])) for i in range(0, len(arrays), batch_size)]
    return np.concatenate(out)
