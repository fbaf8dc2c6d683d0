"""Batched, resumable embedding extraction.

``embed_dataset`` embeds only what the store lacks for (image hash, encoder key): a rerun,
or a restart after a crash, picks up where the last committed chunk ended. Decoding and
preprocessing run in worker threads (Pillow releases the GIL) and overlap with the model's
forward pass; vectors are written to DuckDB in chunks, each in its own transaction, after
which the store lets go of the database file so another process (the app while a command
embeds, or the reverse) can use it until the next chunk is ready.

Every call is recorded as an ``embed`` run: ``done`` when it embedded everything, ``failed`` with
the error otherwise (an interruption, such as a browser reload stopping the Streamlit script or a
``should_stop`` request, is recorded as ``failed`` with an error starting "Interrupted").
A process that is killed outright leaves its run ``running``. :func:`unfinished_extractions`
tells such a run from one in progress. The store no longer holds the file for a process's
whole life, so another process (a ``python -m core embed`` in a terminal, a second server) can
be extracting at the same time: a ``running`` run is in progress when this process is
executing it (:data:`_LIVE_RUNS`), or when the process its params name (pid, host, and the
process's start time, so a reused pid does not count) is another process on this machine that
is still alive. A ``running`` run recorded on another machine counts as ended (DuckDB's file
lock does not reach across machines, so RepLens does not share a file between them).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from core import images
from core.encoders import BaseEncoder
from core.errors import InvalidInputError, RepLensError
from core.keys import EncoderKey
from core.store import PendingImage, Store

ProgressCallback = Callable[[int, int], None]

DEFAULT_CPU_BATCH = 32
DEFAULT_GPU_BATCH = 256
CHUNK_SIZE = 512  # vectors per transaction: a crash loses at most this much work
CHUNK_SIZE_ENV = "REPLENS_EMBED_CHUNK"  # overrides CHUNK_SIZE (crash tests use small chunks)
INTERRUPTED = "Interrupted"  # how the error of a run cut short (not failed) starts

# The embed runs this process is executing now (see the module docstring).
_LIVE_RUNS: set[str] = set()
_LIVE_LOCK = threading.Lock()


@dataclass
class EmbedReport:
    dataset: str
    encoder: str  # the cache key
    encoded: int = 0
    cached: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0
    device: str = "cpu"
    batch_size: int = 0
    run_id: str = ""
    stopped: bool = False  # should_stop ended it before every image was embedded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Prepared:
    item: PendingImage
    array: np.ndarray | None
    error: str | None


def default_batch_size(device: str) -> int:
    return DEFAULT_GPU_BATCH if device.startswith("cuda") else DEFAULT_CPU_BATCH


def embed_dataset(
    store: Store,
    dataset: str,
    encoder: BaseEncoder,
    *,
    batch_size: int | None = None,
    workers: int = 4,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> EmbedReport:
    """Embed every image of ``dataset`` that has no vector under ``encoder.key`` yet.

    Args:
        batch_size: images per forward pass (default 32 on CPU, 256 on GPU; halved
            automatically on a GPU out-of-memory error).
        workers: decode/preprocess threads.
        progress: called with (done, total) after each batch, counting cached images as done.
        should_stop: polled between batches; returning True ends the run early after
            committing what was computed (used when a browser session goes away); the run is
            then recorded as interrupted.
        weights: the local weights file ``encoder`` was loaded from, if any; recorded in the run
            so that resuming it (:func:`resume_extraction`) loads the same file.
    """
    batch_size = batch_size or default_batch_size(encoder.device)
    if batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size} must be >= 1")
    store.register_encoder(
        encoder.key,
        encoder.spec.id,
        encoder.spec.version,
        encoder.layer,
        encoder.pooling,
        encoder.dim,
        encoder.spec.to_dict(),
    )
    _close_abandoned_runs(store, dataset, encoder.key)
    pending = store.pending_images(dataset, encoder.key)
    total = len(store.dataset_images(dataset))
    report = EmbedReport(
        dataset=dataset, encoder=encoder.key, cached=total - len(pending), device=encoder.device, batch_size=batch_size
    )
    params: dict[str, Any] = {"batch_size": batch_size, "device": encoder.device, **_process_identity()}
    if weights:
        params["weights"] = str(weights)
    report.run_id = store.start_run("embed", dataset, encoder.key, params)
    started = time.perf_counter()
    with _LIVE_LOCK:
        _LIVE_RUNS.add(report.run_id)
    try:
        try:
            _run(store, dataset, encoder, pending, report, batch_size, workers, progress, should_stop, total)
        except Exception as exc:
            store.finish_run(report.run_id, stats=_stats(report, started), error=f"{type(exc).__name__}: {exc}")
            raise
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, Streamlit stopping the script
            error = f"{INTERRUPTED} ({type(exc).__name__}) after {report.cached + report.encoded} of {total} images."
            store.finish_run(report.run_id, stats=_stats(report, started), error=error)
            raise
        if report.stopped:
            error = f"{INTERRUPTED} (stop requested) after {report.cached + report.encoded} of {total} images."
            store.finish_run(report.run_id, stats=_stats(report, started), error=error)
        else:
            store.finish_run(report.run_id, stats=_stats(report, started))
    finally:
        with _LIVE_LOCK:
            _LIVE_RUNS.discard(report.run_id)
    return report


def _process_identity() -> dict[str, Any]:
    """Who runs an extraction, recorded in its run: tells a run in progress in another process
    from one whose process has ended (:func:`_running_elsewhere`)."""
    identity: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    started = _process_start(os.getpid())
    if started is not None:
        identity["proc_start"] = started
    return identity


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, field 22 of Linux's /proc/PID/stat),
    or None when that cannot be read or the process is a zombie (it has ended). With the pid it
    names one process: a pid reused by a later process has another start time."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after "pid (command name)", which may hold spaces
    if len(fields) < 20 or fields[0] in {"Z", "X"} or not fields[19].isdigit():
        return None
    return int(fields[19])


def _running_elsewhere(params: dict[str, Any]) -> bool:
    """Whether the process that recorded ``params`` is another process on this machine that is
    still running (so its ``running`` run is in progress, not abandoned)."""
    pid = params.get("pid")
    if params.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    recorded = params.get("proc_start")
    if not Path("/proc/self/stat").exists():
        return True  # no /proc (not Linux): the pid is all there is to go on
    return _process_start(pid) == recorded if recorded is not None else _process_start(pid) is not None


def _close_abandoned_runs(store: Store, dataset: str, encoder_key: str) -> None:
    """Record as interrupted the runs of (dataset, key) left ``running`` by processes that ended
    (killed, or a machine that went down): this extraction takes over what they left."""
    runs = store.runs("embed")
    mine = runs[(runs["dataset"] == dataset) & (runs["encoder_key"] == encoder_key) & (runs["status"] == "running")]
    for _, run in mine.iterrows():
        if not _in_progress(run):
            store.finish_run(str(run["run_id"]), error=f"{INTERRUPTED}: {_reason(run)}")


def _in_progress(run: Any) -> bool:
    """Whether an ``embed`` run is being executed now, by this process or another one."""
    with _LIVE_LOCK:
        if run["run_id"] in _LIVE_RUNS:
            return True
    return run["status"] == "running" and _running_elsewhere(_params(run["params"]))


@dataclass(frozen=True)
class UnfinishedExtraction:
    """The last extraction of (dataset, encoder key), cut short before every image was embedded."""

    run_id: str
    dataset: str
    encoder_key: str
    encoder_id: str
    layer: str
    pooling: str
    weights: str | None  # the local weights file it was loaded from, if any
    started_at: Any
    reason: str  # what ended it, in words
    n_missing: int  # images still without a vector under encoder_key
    n_images: int


def unfinished_extractions(store: Store, dataset: str) -> list[UnfinishedExtraction]:
    """Extractions of ``dataset`` that were cut short and left images without vectors.

    Per encoder key, the latest ``embed`` run counts: one that is not ``done`` (interrupted,
    failed, or left ``running`` by a process that ended; see the module docstring), that is not
    in progress (in this process or another live one), and after which images of the dataset
    still have no vector under its key. Imported vectors are left out (RepLens cannot embed more of them).
    """
    store.require_dataset(dataset)
    runs = store.runs("embed")
    runs = runs[runs["dataset"] == dataset]
    found: list[UnfinishedExtraction] = []
    n_images = len(store.dataset_images(dataset)) if len(runs) else 0
    for key, group in runs.groupby("encoder_key", sort=True):
        last = group.sort_values("started_at").iloc[-1]
        if last["status"] == "done" or _in_progress(last):
            continue
        parsed = EncoderKey.try_parse(str(key))
        if parsed is None or parsed.is_imported:
            continue
        missing = len(store.pending_images(dataset, str(key)))
        if missing == 0:
            continue
        params = _params(last["params"])
        found.append(
            UnfinishedExtraction(
                run_id=str(last["run_id"]),
                dataset=dataset,
                encoder_key=str(key),
                encoder_id=parsed.encoder_id,
                layer=parsed.layer,
                pooling=parsed.pooling,
                weights=params.get("weights"),
                started_at=last["started_at"],
                reason=_reason(last),
                n_missing=missing,
                n_images=n_images,
            )
        )
    return found


def resume_extraction(
    store: Store,
    unfinished: UnfinishedExtraction,
    encoder: BaseEncoder,
    *,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EmbedReport:
    """Embed what ``unfinished`` left out, with ``encoder`` (loaded as it was: same id, layer,
    pooling and weights file). The cut-short run is closed as interrupted if it was still
    recorded as running; only images without a vector are embedded."""
    if encoder.key != unfinished.encoder_key:
        raise InvalidInputError(
            f"The interrupted extraction wrote {unfinished.encoder_key}, but the encoder loaded now gives "
            f"{encoder.key} (its weights changed); extract again instead of resuming."
        )
    runs = store.runs("embed")
    status = runs.loc[runs["run_id"] == unfinished.run_id, "status"]
    if len(status) and status.iloc[0] == "running":
        store.finish_run(unfinished.run_id, error=f"{INTERRUPTED}: {unfinished.reason}")
    return embed_dataset(
        store,
        unfinished.dataset,
        encoder,
        batch_size=batch_size,
        progress=progress,
        should_stop=should_stop,
        weights=unfinished.weights,
    )


def weights_of_key(store: Store, encoder_key: str) -> str | None:
    """The local weights file the latest extraction under ``encoder_key`` recorded, if it still
    exists (so a query image is embedded with the same checkpoint as the dataset)."""
    runs = store.runs("embed")
    for params in runs.loc[runs["encoder_key"] == encoder_key, "params"]:  # newest first
        weights = _params(params).get("weights")
        if weights and os.path.isfile(weights):
            return str(weights)
    return None


def _params(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _reason(run: Any) -> str:
    """Why the run ended early, in words a page can show (no paths, no CLI)."""
    if run["status"] == "running":
        return "the process running it ended before it finished (the server or command was stopped)"
    error = str(run["error"] or "")
    if error.startswith(INTERRUPTED):
        return "it was stopped before it finished (the page was reloaded or left, or the command interrupted)"
    return f"it stopped with an error ({error.split(':', 1)[0] or 'unknown'})"


def _stats(report: EmbedReport, started: float) -> dict[str, Any]:
    report.seconds = round(time.perf_counter() - started, 3)
    report.images_per_s = round(report.encoded / report.seconds, 2) if report.seconds > 0 else 0.0
    return {
        "encoded": report.encoded,
        "cached": report.cached,
        "failed": len(report.failed),
        "seconds": report.seconds,
        "images_per_s": report.images_per_s,
    }


def _run(
    store: Store,
    dataset: str,
    encoder: BaseEncoder,
    pending: Sequence[PendingImage],
    report: EmbedReport,
    batch_size: int,
    workers: int,
    progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
    total: int,
) -> None:
    if progress:
        progress(report.cached, total)
    if not pending:
        return
    chunk_hashes: list[str] = []
    chunk_vectors: list[np.ndarray] = []
    failures: list[tuple[PendingImage, str]] = []
    done = report.cached
    draft = (encoder.spec.input_size, encoder.spec.input_size)
    chunk_size = _chunk_size()
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="replens-decode") as pool:
            for batch in _prepared_batches(pool, pending, encoder, batch_size, draft):
                good = [(p.item, p.array) for p in batch if p.array is not None]
                failures.extend((p.item, p.error or "unknown error") for p in batch if p.array is None)
                if good:
                    stacked = np.stack([array for _, array in good])
                    vectors, batch_size = _embed_with_backoff(encoder, stacked, batch_size)
                    chunk_hashes.extend(item.content_hash for item, _ in good)
                    chunk_vectors.append(vectors)
                done += len(batch)
                if len(chunk_hashes) >= chunk_size:
                    report.encoded += _flush(store, encoder.key, chunk_hashes, chunk_vectors)
                if progress:
                    progress(done, total)
                if should_stop and should_stop():
                    report.stopped = done < total
                    break
        report.encoded += _flush(store, encoder.key, chunk_hashes, chunk_vectors)
    except BaseException:
        # What was computed before the error is valid: keep it (and the files that failed to
        # decode), so a rerun neither recomputes it nor forgets why those files were skipped.
        with contextlib.suppress(Exception):
            report.encoded += _flush(store, encoder.key, chunk_hashes, chunk_vectors)
        with contextlib.suppress(Exception):
            _record_failures(store, dataset, failures, report)
        raise
    finally:
        report.batch_size = batch_size
    _record_failures(store, dataset, failures, report)


def _record_failures(store: Store, dataset: str, failures: list[tuple[PendingImage, str]], report: EmbedReport) -> None:
    report.failed = [{"path": f"{item.rel_path}", "reason": reason} for item, reason in failures]
    # Replaces the dataset's earlier embed failures: files that embed now stop being reported.
    store.record_embed_failures(dataset, [f[0] for f in failures], [f[1] for f in failures])


def _flush(store: Store, key: str, hashes: list[str], vectors: list[np.ndarray]) -> int:
    if not hashes:
        return 0
    written = store.write_embeddings(key, hashes, np.concatenate(vectors))
    hashes.clear()
    vectors.clear()
    store.release()  # the next chunk takes a while: let another process use the file meanwhile
    return written


def _chunk_size() -> int:
    """Vectors per transaction: :data:`CHUNK_SIZE`, or the ``REPLENS_EMBED_CHUNK`` environment variable."""
    text = os.environ.get(CHUNK_SIZE_ENV, "").strip()
    if not text:
        return CHUNK_SIZE
    if not text.isdigit() or int(text) < 1:
        raise InvalidInputError(f"{CHUNK_SIZE_ENV}={text!r} must be a whole number >= 1 (vectors per transaction).")
    return int(text)


def _prepare(item: PendingImage, encoder: BaseEncoder, draft: tuple[int, int]) -> _Prepared:
    try:
        data = images.read_bytes(item.source, item.rel_path)
        image = images.decode_rgb(data, draft_size=draft)
        return _Prepared(item, encoder.preprocess(image), None)
    except RepLensError as exc:
        return _Prepared(item, None, str(exc))
    except (OSError, ValueError) as exc:  # a file that changed on disk since the scan
        return _Prepared(item, None, f"{type(exc).__name__}: {exc}")


def _prepared_batches(
    pool: ThreadPoolExecutor,
    pending: Sequence[PendingImage],
    encoder: BaseEncoder,
    batch_size: int,
    draft: tuple[int, int],
) -> Iterator[list[_Prepared]]:
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


# torch raises torch.OutOfMemoryError (a RuntimeError); onnxruntime raises its own exception
# types (not RuntimeError) with "Failed to allocate memory" or a CUDA "out of memory" failure.
_OOM_MARKERS = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation")


def _is_out_of_memory(exc: BaseException) -> bool:
    return (
        isinstance(exc, Exception)
        and not isinstance(exc, RepLensError)
        and any(marker in str(exc).lower() for marker in _OOM_MARKERS)
    )


def _embed_with_backoff(encoder: BaseEncoder, batch: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """Run ``batch`` in pieces of at most ``batch_size``; on a GPU out-of-memory error, halve the
    piece size and retry. Returns the vectors and the piece size that fits, which later batches
    start from (so one out-of-memory error does not recur, or shrink the size again, every batch)."""
    out: list[np.ndarray] = []
    start = 0
    while start < len(batch):
        piece = batch[start : start + batch_size]
        try:
            out.append(encoder.embed_batch(piece))
        except Exception as exc:
            if not _is_out_of_memory(exc) or len(piece) == 1:
                raise
            _empty_gpu_cache()
            batch_size = max(1, len(piece) // 2)
            continue
        start += len(piece)
    return (out[0] if len(out) == 1 else np.concatenate(out)), batch_size


def _empty_gpu_cache() -> None:
    try:
        import torch
    except ImportError:  # an onnxruntime-only install
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def embed_images(encoder: BaseEncoder, pil_images: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
    """Embed in-memory images (an uploaded query image, say) without touching the store.

    Items are PIL images or the bytes of image files. Bytes are decoded exactly as
    :func:`embed_dataset` decodes a dataset's files (JPEG draft, EXIF orientation, transparency
    on grey), so the same file gives the same vector either way; PIL images get the same
    orientation and transparency handling.
    """
    if not pil_images:
        return np.zeros((0, encoder.dim), np.float32)
    batch_size = batch_size or default_batch_size(encoder.device)
    if batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size} must be >= 1")
    draft = (encoder.spec.input_size, encoder.spec.input_size)
    arrays = [encoder.preprocess(_as_rgb(img, draft)) for img in pil_images]
    out = [encoder.embed_batch(np.stack(arrays[i : i + batch_size])) for i in range(0, len(arrays), batch_size)]
    return np.concatenate(out)


def _as_rgb(item: Any, draft: tuple[int, int]) -> Image.Image:
    """The RGB image the dataset pipeline would have embedded for ``item`` (bytes or PIL image)."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return images.decode_rgb(bytes(item), draft_size=draft)
    if not isinstance(item, Image.Image):
        raise InvalidInputError(f"embed_images takes PIL images or image file bytes, not {type(item).__name__}")
    oriented = ImageOps.exif_transpose(item) or item
    return images.to_rgb(oriented)
