"""The pipelined extraction engine: five stages joined by bounded queues.

1. *read* (a thread feeding a pool): file bytes; on CPU the pool also decodes, and anything the
   fast decoder does not take is decoded by Pillow there.
2. *decode* (one thread): JPEGs decoded as a batch on the device (nvjpeg on CUDA).
3. *preprocess* (same thread, on its own CUDA stream): resize, crop and normalise as batched
   tensor ops (:class:`core.gpupipe.geometry.Preprocessor`).
4. *forward* (the calling thread): the model at the encoder's precision; progress and should_stop
   are called from here, so a Streamlit script may pass them.
5. *write* (one thread): device-to-host copies on a side stream into pinned memory, then
   vectors committed to DuckDB in chunks (``Store.write_embeddings``).

Each queue holds at most ``queue_depth`` batches and a stage blocks when the next one is full,
so at most ``(2 * queue_depth + 3) * batch_size`` images are held at once, read or decoded
(:class:`PipelineStats` counts them). Runs, failures and interruptions are recorded exactly as
``core.extract.embed_dataset`` records them: a run is an ``embed`` run with ``engine:
"pipelined"`` in its params, resumable by either engine.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from core import extract
from core.encoders import BaseEncoder, TorchEncoder
from core.encoders.deps import import_torch
from core.errors import EncoderUnavailableError, InvalidInputError
from core.extract import INTERRUPTED, EmbedReport, ProgressCallback
from core.gpupipe.decode import Loaded, Loader, SourceReader, decode_on_device, default_workers, jpeg_decoder
from core.gpupipe.geometry import Preprocessor
from core.store import PendingImage, Store

DEFAULT_QUEUE_DEPTH = 2
ENGINE = "pipelined"
_POLL_S = 0.05  # how often a blocked stage looks at the stop flag

T = TypeVar("T")


@dataclass
class PipelinedReport(EmbedReport):
    """``EmbedReport`` plus where the images went and how busy each stage was."""

    engine: str = ENGINE
    decoded_fast: int = 0  # decoded by torchvision (nvjpeg on CUDA, libjpeg-turbo on CPU)
    decoded_pil: int = 0  # decoded by Pillow: other formats, and JPEGs the fast path leaves
    stage_seconds: dict[str, float] = field(default_factory=dict)
    max_in_flight: int = 0
    in_flight_bound: int = 0


class PipelineStats:
    """Thread-safe counters of one run: images held between read and forward, busy seconds per
    stage, and how often a stage found the next queue full. Pass one in to watch a run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_bound = 0
        self.blocked_puts: dict[str, int] = {}
        self.max_depth: dict[str, int] = {}
        self.busy_s: dict[str, float] = {}
        self.decoded = {"torchvision": 0, "pil": 0}
        self.queue_full = threading.Event()  # set the first time any stage blocks on a full queue

    def admit(self, n: int) -> None:
        with self._lock:
            self.in_flight += n
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def release(self, n: int) -> None:
        with self._lock:
            self.in_flight -= n

    def add_busy(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.busy_s[stage] = self.busy_s.get(stage, 0.0) + seconds

    def count_decoded(self, counts: dict[str, int]) -> None:
        with self._lock:
            for decoder, n in counts.items():
                self.decoded[decoder] = self.decoded.get(decoder, 0) + n

    def saw_put(self, channel: str, depth: int) -> None:
        with self._lock:
            self.max_depth[channel] = max(self.max_depth.get(channel, 0), depth)

    def saw_full(self, channel: str) -> None:
        """A stage found ``channel`` full and now waits for the next stage (counted once per put)."""
        with self._lock:
            self.blocked_puts[channel] = self.blocked_puts.get(channel, 0) + 1
        self.queue_full.set()

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add_busy(stage, time.perf_counter() - started)


_CLOSED = object()


class _Channel(Generic[T]):
    """A bounded queue between two stages. ``put`` blocks while it is full and gives up (False)
    once ``abort`` is set; ``get`` returns None once the producer closed it, or on ``abort``."""

    def __init__(self, name: str, capacity: int, abort: threading.Event, stats: PipelineStats) -> None:
        self.name, self.capacity, self.abort, self.stats = name, capacity, abort, stats
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)

    def put(self, item: T) -> bool:
        return self._put(item)

    def close(self) -> bool:
        return self._put(_CLOSED)

    def _put(self, item: object) -> bool:
        blocked = False
        while not self.abort.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
            except queue.Full:
                if not blocked and item is not _CLOSED:
                    self.stats.saw_full(self.name)
                blocked = True
                continue
            if item is not _CLOSED:
                self.stats.saw_put(self.name, self._queue.qsize())
            return True
        return False

    def empty(self) -> bool:
        return self._queue.empty()

    def get(self, honour_abort: bool = True) -> T | None:
        while True:
            if honour_abort and self.abort.is_set():
                return None
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            return None if item is _CLOSED else item  # type: ignore[return-value]


@dataclass
class _Prepared:
    """A batch after stage 3: the device tensor of the decoded images, their items, and how many
    items the batch had in all (failed ones included, for progress)."""

    items: list[PendingImage]
    pixels: Any  # float32 (n, 3, S, S) on the device, or None when nothing decoded
    ready: Any  # CUDA event recorded after preprocessing, or None
    n_items: int
    failures: list[tuple[PendingImage, str]]


@dataclass
class _Computed:
    hashes: list[str]
    vectors: Any  # float32 (n, dim) CPU tensor (pinned on CUDA)
    ready: Any  # CUDA event recorded after the device-to-host copy, or None


@dataclass
class _Workers:
    """The stage threads of one run and the first error any of them hit."""

    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def start(self, name: str, target: Callable[[], None], on_error: threading.Event) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # handed to the calling thread, which re-raises it
                self.errors.append(exc)
                on_error.set()

        thread = threading.Thread(target=run, name=f"replens-{name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def raise_first(self) -> None:
        if self.errors:
            raise self.errors[0]


def embed_dataset_pipelined(
    store: Store,
    dataset: str,
    encoder: BaseEncoder,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    weights: str | os.PathLike[str] | None = None,
    queue_depth: int = DEFAULT_QUEUE_DEPTH,
    chunk_size: int | None = None,
    compile_model: bool = False,
    cuda_route: bool | None = None,
    stats: PipelineStats | None = None,
) -> PipelinedReport:
    """Embed every image of ``dataset`` without a vector under ``encoder.key``, pipelined.

    Takes the arguments of :func:`core.extract.embed_dataset` (and records the run the same way)
    plus:

    Args:
        workers: reader/Pillow threads (default: one per core, at most 32).
        queue_depth: batches each queue between two stages holds.
        chunk_size: vectors per DuckDB transaction (default: four batches, at least the local
            engine's chunk; ``REPLENS_EMBED_CHUNK`` sets it as it does for the local engine).
        compile_model: run the forward pass through ``torch.compile`` (torch encoders only;
            batches are padded to ``batch_size`` so it compiles once).
        cuda_route: decode and preprocess as on CUDA (JPEGs decoded in batches by the stage
            after the readers, a draft box-reduced, float32 resize sums) whatever the device;
            default: on CUDA only. On CPU it measures what that arithmetic changes.
        stats: a :class:`PipelineStats` to fill (instrumentation for tests and benches).

    Vectors match the local engine's to the tolerance in ``tests/test_gpu_pipeline.py``: the
    geometry is Pillow's, the JPEG decoder on CUDA is nvjpeg (not libjpeg-turbo).
    """
    batch_size = batch_size or extract.default_batch_size(encoder.device)
    if batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size} must be >= 1")
    if queue_depth < 1:
        raise InvalidInputError(f"queue_depth={queue_depth} must be >= 1")
    stats = stats or PipelineStats()
    stats.in_flight_bound = (2 * queue_depth + 3) * batch_size
    store.register_encoder(
        encoder.key,
        encoder.spec.id,
        encoder.spec.version,
        encoder.layer,
        encoder.pooling,
        encoder.dim,
        encoder.spec.to_dict(),
    )
    extract._close_abandoned_runs(store, dataset, encoder.key)
    pending = store.pending_images(dataset, encoder.key)
    total = len(store.dataset_images(dataset))
    report = PipelinedReport(
        dataset=dataset,
        encoder=encoder.key,
        cached=total - len(pending),
        device=encoder.device,
        batch_size=batch_size,
        in_flight_bound=stats.in_flight_bound,
    )
    params: dict[str, Any] = {
        "batch_size": batch_size,
        "device": encoder.device,
        "engine": ENGINE,
        "jpeg_decoder": _jpeg_decoder_name(encoder.device),
        "cuda_route": encoder.device.startswith("cuda") if cuda_route is None else cuda_route,
        **extract._process_identity(),
    }
    if weights:
        params["weights"] = str(weights)
    report.run_id = store.start_run("embed", dataset, encoder.key, params)
    started = time.perf_counter()
    with extract._LIVE_LOCK:
        extract._LIVE_RUNS.add(report.run_id)
    route = encoder.device.startswith("cuda") if cuda_route is None else cuda_route
    run = _Run(store, dataset, encoder, report, stats, batch_size, queue_depth, chunk_size, compile_model, route)
    try:
        try:
            run.execute(pending, workers or default_workers(), progress, should_stop, total)
        except Exception as exc:
            store.finish_run(report.run_id, stats=_stats(report, started, stats), error=f"{type(exc).__name__}: {exc}")
            raise
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, Streamlit stopping the script
            error = f"{INTERRUPTED} ({type(exc).__name__}) after {report.cached + report.encoded} of {total} images."
            store.finish_run(report.run_id, stats=_stats(report, started, stats), error=error)
            raise
        if report.stopped:
            error = f"{INTERRUPTED} (stop requested) after {report.cached + report.encoded} of {total} images."
            store.finish_run(report.run_id, stats=_stats(report, started, stats), error=error)
        else:
            store.finish_run(report.run_id, stats=_stats(report, started, stats))
    finally:
        with extract._LIVE_LOCK:
            extract._LIVE_RUNS.discard(report.run_id)
    return report


def _jpeg_decoder_name(device: str) -> str:
    if jpeg_decoder() is None:
        return "pillow"
    return "nvjpeg" if device.startswith("cuda") else "libjpeg-turbo (torchvision)"


def _stats(report: PipelinedReport, started: float, stats: PipelineStats) -> dict[str, Any]:
    report.stage_seconds = {stage: round(s, 3) for stage, s in sorted(stats.busy_s.items())}
    report.max_in_flight = stats.max_in_flight
    report.decoded_fast = stats.decoded.get("torchvision", 0)
    report.decoded_pil = stats.decoded.get("pil", 0)
    recorded = extract._stats(report, started)
    recorded.update(engine=ENGINE, decoded_fast=report.decoded_fast, decoded_pil=report.decoded_pil)
    return recorded


class _Run:
    """One pipelined extraction: the stages, their queues and what they have done."""

    def __init__(
        self,
        store: Store,
        dataset: str,
        encoder: BaseEncoder,
        report: PipelinedReport,
        stats: PipelineStats,
        batch_size: int,
        queue_depth: int,
        chunk_size: int | None,
        compile_model: bool,
        cuda_route: bool,
    ) -> None:
        self.store, self.dataset, self.encoder, self.report, self.stats = store, dataset, encoder, report, stats
        self.batch_size, self.queue_depth = batch_size, queue_depth
        self.chunk_size = chunk_size or _default_chunk_size(batch_size)
        self.device = encoder.device
        self.cuda = self.device.startswith("cuda")
        self.cuda_route = cuda_route
        self.side = encoder.spec.input_size
        self.forward = _Forward(encoder, compile_model, batch_size)
        self.failures: list[tuple[PendingImage, str]] = []

    def execute(
        self,
        pending: Sequence[PendingImage],
        workers: int,
        progress: ProgressCallback | None,
        should_stop: Callable[[], bool] | None,
        total: int,
    ) -> None:
        done = self.report.cached
        if progress:
            progress(done, total)
        if not pending:
            return
        stop, writer_failed = threading.Event(), threading.Event()
        read_ch: _Channel[list[Loaded]] = _Channel("read", self.queue_depth, stop, self.stats)
        prep_ch: _Channel[_Prepared] = _Channel("preprocessed", self.queue_depth, stop, self.stats)
        write_ch: _Channel[_Computed] = _Channel("computed", self.queue_depth, writer_failed, self.stats)
        upstream, downstream = _Workers(), _Workers()
        workers = max(1, workers)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replens-read")
        loader = Loader(SourceReader(), self.side, device_decodes_jpeg=self.cuda_route)

        wound_down = threading.Event()

        def wind_down() -> None:
            """Stop the stages before the model; the writer commits what was computed, then ends."""
            if wound_down.is_set():
                return
            wound_down.set()
            stop.set()
            write_ch.close()
            downstream.join()
            upstream.join()
            pool.shutdown(wait=True)

        try:
            upstream.start("reader", lambda: self._read_stage(pending, pool, workers, loader, read_ch), stop)
            upstream.start("decoder", lambda: self._decode_stage(read_ch, prep_ch, pool), stop)
            downstream.start("writer", lambda: self._write_stage(write_ch), writer_failed)
            with self._compute_stream():
                while (prepared := prep_ch.get()) is not None:
                    self.failures.extend(prepared.failures)
                    if prepared.items:
                        computed = self._forward_stage(prepared)
                        if not write_ch.put(computed):
                            break  # the writer failed; its error is raised below
                    self.stats.release(len(prepared.items))
                    done += prepared.n_items
                    if progress:
                        progress(done, total)
                    if should_stop and should_stop():
                        self.report.stopped = done < total
                        break
            upstream.raise_first()
            wind_down()
            downstream.raise_first()
        except BaseException:
            wind_down()  # when the model or a stage failed
            # Keep why files were skipped even though the run failed, as the local engine does.
            with contextlib.suppress(Exception):
                extract._record_failures(self.store, self.dataset, self.failures, self.report)
            raise
        extract._record_failures(self.store, self.dataset, self.failures, self.report)

    def _compute_stream(self) -> contextlib.AbstractContextManager[Any]:
        """The model runs on a stream of its own, not the legacy default stream: torchvision's
        nvjpeg decoder orders its output before that one, and the preprocessing stream waits on
        it, which would otherwise also make preprocessing wait for the model."""
        if not self.cuda:
            return contextlib.nullcontext()
        torch = import_torch()
        return torch.cuda.stream(torch.cuda.Stream(self.device))

    # --------------------------------------------------------------- stages

    def _read_stage(
        self,
        pending: Sequence[PendingImage],
        pool: ThreadPoolExecutor,
        slices: int,
        loader: Loader,
        out: _Channel[list[Loaded]],
    ) -> None:
        for start in range(0, len(pending), self.batch_size):
            if out.abort.is_set():
                return
            chunk = pending[start : start + self.batch_size]
            self.stats.admit(len(chunk))
            with self.stats.timed("read"):
                # One task per thread, not per image: a future per image costs the GIL more than
                # reading the image does at GPU rates.
                step = -(-len(chunk) // slices)
                parts = pool.map(lambda part: [loader(item) for item in part], _slices(chunk, step))
                batch = [loaded for part in parts for loaded in part]
            if not out.put(batch):
                return
        out.close()

    def _decode_stage(self, source: _Channel[list[Loaded]], out: _Channel[_Prepared], pool: ThreadPoolExecutor) -> None:
        torch = import_torch()
        # float64 (exact) sums where they are cheap: the CPU; float32 on the CUDA route and on
        # devices without float64 (mps).
        preprocess = Preprocessor(self.encoder.spec, self.device, exact=self.device == "cpu" and not self.cuda_route)
        # Preprocessing runs on a stream of its own, so it overlaps the model's forward pass; the
        # decoder's output is allocated on another (see decode._order_after_nvjpeg).
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        decode_stream = torch.cuda.Stream(self.device) if self.cuda else None
        with torch.inference_mode(), torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            while (batch := source.get()) is not None:
                with self.stats.timed("decode+preprocess"):
                    items, images, failures, counts = decode_on_device(
                        batch, self.device, pool, self.side, decode_stream
                    )
                    self.stats.count_decoded(counts)
                    self.stats.release(len(failures))
                    pixels = preprocess(images) if images else None
                    ready = None
                    if stream is not None:
                        ready = torch.cuda.Event()
                        ready.record(stream)
                del images
                if not out.put(_Prepared(items, pixels, ready, len(batch), failures)):
                    return
        out.close()

    def _forward_stage(self, prepared: _Prepared) -> _Computed:
        torch = import_torch()
        with self.stats.timed("forward"):
            pixels = prepared.pixels
            if prepared.ready is not None:
                current = torch.cuda.current_stream()
                current.wait_event(prepared.ready)
                pixels.record_stream(current)  # allocated on the preprocessing stream
            vectors = self._forward_with_backoff(pixels)
            host, ready = _to_host(vectors)
        return _Computed([item.content_hash for item in prepared.items], host, ready)

    def _forward_with_backoff(self, pixels: Any) -> Any:
        """The forward pass in pieces of the current batch size, halved on out-of-memory, as
        ``core.extract`` does; the size that fits is kept for later batches."""
        torch = import_torch()
        out: list[Any] = []
        start = 0
        while start < len(pixels):
            piece = pixels[start : start + self.report.batch_size]
            try:
                out.append(self.forward(piece))
            except Exception as exc:
                if not extract._is_out_of_memory(exc) or len(piece) == 1:
                    raise
                extract._empty_gpu_cache()
                self.report.batch_size = max(1, len(piece) // 2)
                continue
            start += len(piece)
        return out[0] if len(out) == 1 else torch.cat(out)

    def _write_stage(self, source: _Channel[_Computed]) -> None:
        hashes: list[str] = []
        vectors: list[np.ndarray] = []
        try:
            self._write_loop(source, hashes, vectors)
        except BaseException:
            # Whatever reached the writer was computed and is valid: commit it even though the
            # run failed, as the local engine does (unless committing is what failed).
            with contextlib.suppress(Exception), self.stats.timed("write"):
                self._commit(hashes, vectors)
            raise
        with self.stats.timed("write"):
            self._commit(hashes, vectors)

    def _write_loop(self, source: _Channel[_Computed], hashes: list[str], vectors: list[np.ndarray]) -> None:
        while (computed := source.get(honour_abort=False)) is not None:
            with self.stats.timed("write"):
                if computed.ready is not None:
                    computed.ready.synchronize()
                hashes.extend(computed.hashes)
                vectors.append(computed.vectors.numpy())
                if len(hashes) >= self.chunk_size:
                    self._commit(hashes, vectors)
                    if source.empty():
                        # Nothing to write yet: let another process use the file meanwhile, as the
                        # local engine does between chunks (not while vectors are queued, which
                        # on a GPU is every tenth of a second).
                        self.store.release()

    def _commit(self, hashes: list[str], vectors: list[np.ndarray]) -> None:
        if hashes:
            self.report.encoded += self.store.write_embeddings(self.encoder.key, hashes, np.concatenate(vectors))
            hashes.clear()
            vectors.clear()


def _default_chunk_size(batch_size: int) -> int:
    """Four batches per transaction, at least the local engine's chunk: at GPU rates a
    transaction per 512 vectors would make DuckDB the slowest stage. ``REPLENS_EMBED_CHUNK``
    overrides it, as it does for the local engine."""
    if os.environ.get(extract.CHUNK_SIZE_ENV, "").strip():
        return extract._chunk_size()
    return max(extract.CHUNK_SIZE, 4 * batch_size)


def _slices(items: Sequence[T], step: int) -> list[Sequence[T]]:
    return [items[i : i + step] for i in range(0, len(items), step)]


def _to_host(vectors: Any) -> tuple[Any, Any]:
    """Start the device-to-host copy on a side stream into pinned memory; the writer waits for
    the returned event, so the forward pass of the next batch overlaps the copy."""
    torch = import_torch()
    if vectors.device.type != "cuda":  # a CPU model, or an encoder that returns NumPy (ONNX)
        return vectors.float().cpu().contiguous(), None
    copy_stream = _copy_stream(vectors.device)
    copy_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(copy_stream):
        host = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(vectors, non_blocking=True)
        vectors.record_stream(copy_stream)
        ready = torch.cuda.Event()
        ready.record(copy_stream)
    return host, ready


_COPY_STREAMS: dict[Any, Any] = {}
_COPY_LOCK = threading.Lock()


def _copy_stream(device: Any) -> Any:
    torch = import_torch()
    with _COPY_LOCK:
        if device not in _COPY_STREAMS:
            _COPY_STREAMS[device] = torch.cuda.Stream(device)
        return _COPY_STREAMS[device]


class _Forward:
    """The encoder's forward pass on a device tensor: a torch encoder's ``features`` at its
    precision (``TorchEncoder.autocast``; channels-last input, as ``TorchEncoder`` feeds it),
    optionally compiled; any other encoder through ``embed_batch`` on a NumPy copy."""

    def __init__(self, encoder: BaseEncoder, compile_model: bool, batch_size: int) -> None:
        self.encoder, self.batch_size = encoder, batch_size
        self.is_torch = isinstance(encoder, TorchEncoder)
        if compile_model and not self.is_torch:
            raise InvalidInputError(f"compile_model needs a torch encoder; {encoder.spec.id} is not one.")
        self.compiled = compile_model
        self._features: Callable[[Any], Any] | None = None

    def __call__(self, pixels: Any) -> Any:
        torch = import_torch()
        n = len(pixels)
        if not self.is_torch:
            return torch.from_numpy(self.encoder.embed_batch(pixels.cpu().numpy()))
        assert isinstance(self.encoder, TorchEncoder)
        features = self._features_fn()
        if self.compiled and n < self.batch_size:
            # One static shape: a smaller last batch would trigger a second compilation.
            pixels = torch.cat([pixels, pixels.new_zeros((self.batch_size - n, *pixels.shape[1:]))])
        x = pixels.contiguous(memory_format=torch.channels_last)
        # TorchEncoder's lock: a model serves one forward pass at a time (see adapters.py).
        with self.encoder._lock, torch.inference_mode(), self.encoder.autocast():
            out = features(x)[:n].float()
        if tuple(out.shape) != (n, self.encoder.dim):
            shape, expected = tuple(out.shape), (n, self.encoder.dim)
            raise EncoderUnavailableError(
                f"encoder {self.encoder.spec.id} returned shape {shape}, expected {expected}; "
                "the weights file does not match the architecture."
            )
        return out

    def _features_fn(self) -> Callable[[Any], Any]:
        if self._features is None:
            assert isinstance(self.encoder, TorchEncoder)
            features: Callable[[Any], Any] = self.encoder.features
            if self.compiled:
                features = import_torch().compile(features, dynamic=False)
            self._features = features
        return self._features
