"""Extraction as a Ray Data job: one encoder per actor, across every GPU (or CPU) of a cluster.

The driver (this process, which holds the store) asks the store which images still lack a vector
under the encoder's key, hands their (hash, source, rel_path) to Ray Data, and streams the vectors
back. Each actor loads the encoder once and runs, per batch, exactly what the local engine runs
(``core.extract``: read the bytes, decode with the JPEG draft, ``encoder.preprocess``, forward pass
with out-of-memory back-off), so both engines store the same vectors. The driver loads the encoder
too (on its CPU) to check the options and learn the key; every actor must produce that key, at one
precision chosen for the whole cluster (``auto`` is resolved once, by a task on an actor's kind of
device), else the run stops.

Vectors reach the store through Parquet shards (``core.engines.shards``): the driver writes each
chunk it receives as a shard, ingests it with ``Store.write_embeddings`` (which never rewrites a
stored (key, hash) row) and deletes it. A run that dies is resumed by running again: shards left
on disk are ingested first, then only images still without a vector go to the cluster. Ray Data
itself restarts an actor whose process or node died and retries its batch.

Images are read by the actors, from the path the dataset was scanned from: on a cluster of
several machines every node must see the dataset's folders and archives at the same path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from core.encoders import BaseEncoder, load_encoder
from core.encoders.precision import AUTO, resolve_precision
from core.engines import SCALE_EXTRA_HINT, EngineUnavailableError, RayJobError
from core.engines.shards import (
    ingest_leftovers,
    ingest_shard,
    remove_if_empty,
    shards_root,
    write_manifest,
    write_shard,
)
from core.errors import EncoderUnavailableError, InvalidInputError
from core.extract import (
    CHUNK_SIZE,
    INTERRUPTED,
    EmbedReport,
    ProgressCallback,
    _embed_with_backoff,
    _prepare,
    _process_identity,
    default_batch_size,
)
from core.keys import BF16, FP32, format_key
from core.store import PendingImage, Store

CPUS_PER_CPU_ACTOR = 4  # default CPU actors: one per this many cluster CPUs (torch uses them as threads)
_CLUSTER_KEYS = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, what each reserves, and the device each loads its encoder on."""

    actors: int
    num_cpus: float
    num_gpus: float
    device: str


@dataclass
class RayEmbedReport(EmbedReport):
    engine: str = "ray"
    address: str = ""
    actors: int = 0
    cluster: dict[str, float] = field(default_factory=dict)
    recovered: int = 0  # vectors ingested from shards an earlier run left on disk
    shards: int = 0  # shards this run wrote and ingested


@dataclass(frozen=True)
class ActorFault:
    """Fault injection for tests: the actor that runs its ``after_batches``-th batch ends its
    process mid-batch, as a lost node would, once per ``marker`` file (created when it fires)."""

    marker: str
    after_batches: int


def import_ray() -> ModuleType:
    """The ``ray`` package with Ray Data, or a typed error saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Data ships in the ray[data] extra, not with every ray install
    except ImportError as exc:
        raise EngineUnavailableError(
            f"The ray engine needs Ray Data, which is not installed here ({exc}). "
            f"Install it with: {SCALE_EXTRA_HINT} (or run without --engine ray)."
        ) from exc
    return ray


def plan_actors(resources: Mapping[str, float], device: str, actors: int | None) -> ActorPlan:
    """One GPU per actor when ``device`` allows GPUs and the cluster has some, else CPU actors.

    ``device``: ``auto`` (GPUs if the cluster has any), ``cpu``, or ``cuda`` (GPUs required; Ray
    picks which, so an index such as ``cuda:1`` means only "a GPU").
    """
    if actors is not None and actors < 1:
        raise InvalidInputError(f"--ray-actors={actors} must be >= 1")
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise InvalidInputError(f"--device {device} cannot be used with --engine ray; use auto, cpu or cuda.")
    if device.startswith("cuda") or (device == "auto" and gpus > 0):
        if gpus < 1:
            raise InvalidInputError(
                f"--device {device} asks for GPU actors, but the Ray cluster has no GPU ({_describe(resources)}); "
                "use --device cpu, or add GPU nodes to the cluster."
            )
        n = actors or gpus
        if n > gpus:
            raise InvalidInputError(f"--ray-actors={n} needs {n} GPUs, but the Ray cluster has {gpus}.")
        return ActorPlan(n, num_cpus=1.0, num_gpus=1.0, device="cuda")
    if cpus < 1:
        raise InvalidInputError(f"The Ray cluster has no CPU to run actors on ({_describe(resources)}).")
    n = actors or max(1, cpus // CPUS_PER_CPU_ACTOR)
    if n > cpus:
        raise InvalidInputError(f"--ray-actors={n} needs a CPU each, but the Ray cluster has {cpus}.")
    return ActorPlan(n, num_cpus=float(cpus // n), num_gpus=0.0, device="cpu")


def _describe(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={resources[k]:g}" for k in ("CPU", "GPU") if k in resources) or "no resources"


class EmbedActor:
    """The work of one Ray actor: the encoder, loaded once, and a pool of decode threads."""

    def __init__(
        self, options: Mapping[str, Any], batch_size: int, workers: int, fault: ActorFault | None = None
    ) -> None:
        self._encoder = load_encoder(**options)
        self._draft = (self._encoder.spec.input_size, self._encoder.spec.input_size)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="replens-decode")
        # Ray Data may hand over more rows than batch_size at once; forward passes stay at most this
        # big (halved after a GPU out-of-memory error, as in the local engine).
        self._batch_size = batch_size
        self._fault = fault
        self._calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._calls += 1
        self._maybe_fail()
        items = [PendingImage(str(h), str(s), str(r)) for h, s, r in zip(*_columns(batch))]
        prepared = list(self._pool.map(lambda item: _prepare(item, self._encoder, self._draft), items))
        vectors = np.zeros((len(items), self._encoder.dim), np.float32)
        good = [i for i, p in enumerate(prepared) if p.array is not None]
        arrays = [p.array for p in prepared if p.array is not None]
        if arrays:
            embedded, self._batch_size = _embed_with_backoff(self._encoder, np.stack(arrays), self._batch_size)
            vectors[good] = embedded
        return {
            "content_hash": np.asarray([item.content_hash for item in items], dtype=object),
            "vector": vectors,
            "error": np.asarray([p.error or "" for p in prepared], dtype=object),
            # Checked by the driver: every node must produce the key the store files vectors under.
            "encoder_key": np.asarray([self._encoder.key] * len(items), dtype=object),
        }

    def _maybe_fail(self) -> None:
        fault = self._fault
        if fault is None or self._calls != fault.after_batches or os.path.exists(fault.marker):
            return
        Path(fault.marker).touch()
        os._exit(1)  # no cleanup, no exception: the process is simply gone


def _columns(batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return batch["content_hash"], batch["source"], batch["rel_path"]


def embed_dataset_ray(
    store: Store,
    dataset: str,
    encoder_options: Mapping[str, Any],
    *,
    address: str | None = None,
    actors: int | None = None,
    batch_size: int | None = None,
    workers: int = 4,
    chunk_size: int = CHUNK_SIZE,
    progress: ProgressCallback | None = None,
    fault: ActorFault | None = None,
) -> RayEmbedReport:
    """Embed every image of ``dataset`` without a vector under the encoder's key, on Ray.

    Args:
        encoder_options: keyword arguments of :func:`core.encoders.load_encoder` (``encoder_id``,
            ``device``, ``layer``, ``pooling``, ``weights`` and any other it takes), passed to every
            actor as they are, except ``device``, which the cluster decides (see :func:`plan_actors`).
        address: the Ray cluster (``auto``, ``ray://host:10001``, ``local`` for a new local
            instance); None follows Ray's own lookup (``RAY_ADDRESS``, a cluster started on this
            machine, else a new local instance). Ignored when this process is already connected.
        actors: how many encoder actors (default: one per GPU, or one per 4 CPUs on CPU clusters).
        batch_size: images per forward pass (default 256 on GPU actors, 32 on CPU ones).
        workers: decode threads in each actor.
        chunk_size: vectors per shard (and per store transaction).
        progress: called with (done, total) as vectors arrive, counting cached images as done.
        fault: fault injection for tests (:class:`ActorFault`).
    """
    if batch_size is not None and batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size} must be >= 1")
    ray = import_ray()
    store.require_dataset(dataset)
    options = dict(encoder_options)
    driver = load_encoder(**{**options, "device": "cpu"})  # checks the options before any cluster work
    report = RayEmbedReport(dataset=dataset, encoder="", address=address or os.environ.get("RAY_ADDRESS") or "default")
    with _connected(ray, address), _quiet_ray_data(ray):
        report.cluster = _cluster(ray)
        plan = plan_actors(report.cluster, str(options.get("device") or "auto"), actors)
        # Every actor computes at one precision, chosen once for the cluster: "auto" left to each
        # node could pick bf16 on one GPU and fp32 on another, two keys for one run.
        precision = _cluster_precision(ray, plan, options, driver.spec.precisions, driver.spec.id)
        actor_options = {**options, "device": plan.device, **({"precision": precision} if precision else {})}
        report.encoder = _register(store, driver, precision)
        del driver  # only its spec and key were needed here
        pending, total = _what_is_missing(store, report)
        report.batch_size = batch_size or default_batch_size(plan.device)
        # No more actors than batches: an actor with nothing to do would load the encoder for nothing.
        plan = dataclasses.replace(plan, actors=max(1, min(plan.actors, math.ceil(len(pending) / report.batch_size))))
        report.actors, report.device = plan.actors, plan.device
        params = _params(report, plan, actor_options, options.get("precision"), workers)
        report.run_id = store.start_run("embed", dataset, report.encoder, params)
        job = _Job(plan, actor_options, report.batch_size, workers, chunk_size, fault)
        with _recorded(store, report, total):
            try:
                _stream(ray, store, pending, job, report, progress, total)
            except ray.exceptions.RayError as exc:
                raise RayJobError(
                    f"The Ray job stopped: {_cause(exc)}. The {report.encoded} vectors stored before are kept; "
                    "run the same command again to embed the rest."
                ) from exc
    return report


def _what_is_missing(store: Store, report: RayEmbedReport) -> tuple[list[PendingImage], int]:
    """(images without a vector, images in the dataset), once shards earlier runs left are in."""
    report.recovered = ingest_leftovers(store, report.encoder)
    pending = store.pending_images(report.dataset, report.encoder)
    total = len(store.dataset_images(report.dataset))
    report.cached = total - len(pending)
    return pending, total


def _cluster_precision(
    ray: ModuleType, plan: ActorPlan, options: Mapping[str, Any], offered: Sequence[str], encoder_id: str
) -> str | None:
    """The precision every actor loads the encoder at (None: load_encoder's default).

    ``auto`` is resolved where the actors run: by a task holding what one actor holds (a GPU, or
    CPUs), since the driver's machine may have other hardware or none of the cluster's GPUs.
    """
    requested = options.get("precision")
    if requested != AUTO:
        return None if requested is None else str(requested)
    if BF16 not in offered:
        return FP32  # nothing to choose between
    probe = ray.remote(_precision_here).options(num_cpus=1, num_gpus=plan.num_gpus or 0)
    return str(ray.get(probe.remote(plan.device, tuple(offered), encoder_id)))


def _precision_here(device: str, offered: tuple[str, ...], encoder_id: str) -> str:
    """Runs on a Ray worker: what ``auto`` resolves to on its device."""
    return resolve_precision(AUTO, device, offered, encoder_id).precision


@contextmanager
def _recorded(store: Store, report: RayEmbedReport, total: int) -> Iterator[None]:
    """Close the run as the local engine does: done, failed with the error, or interrupted."""
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        store.finish_run(report.run_id, stats=_stats(report, started), error=f"{type(exc).__name__}: {exc}")
        raise
    except BaseException as exc:  # KeyboardInterrupt, SystemExit
        done = report.cached + report.encoded + len(report.failed)
        error = f"{INTERRUPTED} ({type(exc).__name__}) after {done} of {total} images."
        store.finish_run(report.run_id, stats=_stats(report, started), error=error)
        raise
    store.finish_run(report.run_id, stats=_stats(report, started))


def _cause(exc: BaseException) -> str:
    """What went wrong in the cluster, on one line: a worker's own exception when Ray carries it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip() if lines else ''}"


def _register(store: Store, driver: BaseEncoder, precision: str | None) -> str:
    """Register the key every actor must reproduce: the driver's encoder at the cluster's precision."""
    key = format_key(driver.spec.id, driver.spec.version, driver.layer, driver.pooling, precision or driver.precision)
    store.register_encoder(
        key, driver.spec.id, driver.spec.version, driver.layer, driver.pooling, driver.dim, driver.spec.to_dict()
    )
    return key


@contextmanager
def _connected(ray: ModuleType, address: str | None) -> Iterator[None]:
    """Connected to a Ray cluster for the block; disconnects only if it connected."""
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "logging_level": logging.WARNING}
    if address in (None, "local"):
        kwargs["include_dashboard"] = False  # a local instance needs no web server
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise InvalidInputError(
            f"Cannot connect to a Ray cluster at {address!r}: {exc}. Start one with `ray start --head`, "
            "or pass --address ray://HOST:10001 (or local, for a Ray instance of this machine only)."
        ) from exc
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _quiet_ray_data(ray: ModuleType) -> Iterator[None]:
    """No Ray Data progress bars or plan printouts: the caller draws its own progress."""
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, context.print_on_execution_start)
    context.enable_progress_bars, context.print_on_execution_start = False, False
    # Ray Data logs its progress at INFO, and warns once that its bars are off (as asked here).
    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    loggers = {name: logging.getLogger(name) for name in levels}
    before = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(levels[name])
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
        for name, logger in loggers.items():
            logger.setLevel(before[name])


def _cluster(ray: ModuleType) -> dict[str, float]:
    resources = ray.cluster_resources()
    out = {k: float(resources[k]) for k in _CLUSTER_KEYS if k in resources}
    out["nodes"] = float(sum(1 for node in ray.nodes() if node.get("Alive")))
    return out


def _params(
    report: RayEmbedReport, plan: ActorPlan, actor_options: Mapping[str, Any], requested: Any, workers: int
) -> dict[str, Any]:
    """What the run records: the cluster, the actors, and the options every actor loaded its
    encoder with (``weights`` also on its own, where the local engine records it: resuming and
    query embedding read it there)."""
    options = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in actor_options.items() if v is not None}
    return {
        "engine": "ray",
        "address": report.address,
        "cluster": report.cluster,
        "actors": plan.actors,
        "num_gpus_per_actor": plan.num_gpus,
        "num_cpus_per_actor": plan.num_cpus,
        "device": plan.device,
        "batch_size": report.batch_size,
        "workers": workers,
        **_process_identity(),  # pid, host, start time: a live run is told from an abandoned one
        "encoder_options": options,
        **({"precision_requested": requested} if requested is not None else {}),
        **({"weights": options["weights"]} if "weights" in options else {}),
    }


def _stats(report: RayEmbedReport, started: float) -> dict[str, Any]:
    report.seconds = round(time.perf_counter() - started, 3)
    report.images_per_s = round(report.encoded / report.seconds, 2) if report.seconds > 0 else 0.0
    return {
        "encoded": report.encoded,
        "cached": report.cached,
        "failed": len(report.failed),
        "recovered": report.recovered,
        "shards": report.shards,
        "seconds": report.seconds,
        "images_per_s": report.images_per_s,
    }


@dataclass(frozen=True)
class _Job:
    """What the Ray Data job runs with: the actors, their encoder options, batch and shard sizes."""

    plan: ActorPlan
    actor_options: dict[str, Any]
    batch_size: int
    workers: int
    chunk_size: int
    fault: ActorFault | None


def _stream(
    ray: ModuleType,
    store: Store,
    pending: Sequence[PendingImage],
    job: _Job,
    report: RayEmbedReport,
    progress: ProgressCallback | None,
    total: int,
) -> None:
    """Run the Ray Data job and pour its vectors into the store, shard by shard."""
    if not pending:  # no job to run; earlier failures of files that are gone or fixed are cleared
        _record_failures(store, report, [])
        if progress:
            progress(total, total)
        return
    by_hash = {item.content_hash: item for item in pending}
    folder = shards_root(store.cache_dir) / report.run_id
    write_manifest(folder, {"run_id": report.run_id, "dataset": report.dataset, "encoder_key": report.encoder})
    sink = _ShardSink(store, folder, report, job.chunk_size)
    failures: list[tuple[PendingImage, str]] = []
    done = report.cached
    if progress:
        progress(done, total)
    batches = iter(_dataset(ray, pending, job).iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for batch in batches:
            _check_key(batch, report.encoder)
            errors = batch["error"]
            ok = errors == ""
            failures.extend((by_hash[str(h)], str(e)) for h, e in zip(batch["content_hash"][~ok], errors[~ok]))
            sink.add([str(h) for h in batch["content_hash"][ok]], np.asarray(batch["vector"][ok], np.float32))
            done += len(errors)
            if progress:
                progress(done, total)
        sink.flush()
    except BaseException:
        # What arrived before the error is valid: store it (a shard left on disk is ingested by
        # the next run), and keep the decode failures seen so far.
        with contextlib.suppress(Exception):
            sink.flush()
        with contextlib.suppress(Exception):
            _record_failures(store, report, failures)
        raise
    finally:
        # Left early (an error, an interrupt): stop the job now, so that its actors free their
        # CPUs and GPUs instead of holding them until the iterator is garbage-collected.
        with contextlib.suppress(Exception):
            batches.close()
        remove_if_empty(folder)
    _record_failures(store, report, failures)


def _dataset(ray: ModuleType, pending: Sequence[PendingImage], job: _Job) -> Any:
    """The Ray Data pipeline: pending items in blocks of one batch, mapped by the actor pool."""
    items = [asdict(item) for item in pending]
    blocks = math.ceil(len(items) / job.batch_size)
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        EmbedActor,
        fn_constructor_kwargs={
            "options": job.actor_options,
            "batch_size": job.batch_size,
            "workers": job.workers,
            "fault": job.fault,
        },
        batch_size=job.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=job.plan.actors),
        num_cpus=job.plan.num_cpus,
        num_gpus=job.plan.num_gpus or None,
    )


def _check_key(batch: Mapping[str, np.ndarray], expected: str) -> None:
    keys = set(batch["encoder_key"].tolist())
    if keys - {expected}:
        raise EncoderUnavailableError(
            f"A Ray worker produced vectors under {sorted(keys - {expected})}, but this machine loads the encoder "
            f"as {expected!r}: the nodes run another version of RepLens, of the encoder or of its weights file. "
            "Install the same versions (and put the same weights file at the same path) on every node."
        )


def _record_failures(store: Store, report: RayEmbedReport, failures: list[tuple[PendingImage, str]]) -> None:
    failures = sorted(failures, key=lambda f: (f[0].rel_path, f[0].source))
    report.failed = [{"path": item.rel_path, "reason": reason} for item, reason in failures]
    # Replaces the dataset's earlier embed failures, exactly as the local engine does.
    store.record_embed_failures(report.dataset, [f[0] for f in failures], [f[1] for f in failures])


class _ShardSink:
    """Vectors in, shards out: every ``chunk_size`` vectors become a shard, ingested at once."""

    def __init__(self, store: Store, folder: Path, report: RayEmbedReport, chunk_size: int) -> None:
        self._store, self._folder, self._report, self._chunk_size = store, folder, report, chunk_size
        self._hashes: list[str] = []
        self._vectors: list[np.ndarray] = []

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        if hashes:
            self._hashes.extend(hashes)
            self._vectors.append(vectors)
        if len(self._hashes) >= self._chunk_size:
            self.flush()

    def flush(self) -> None:
        if not self._hashes:
            return
        shard = write_shard(
            self._folder, self._report.shards, self._report.encoder, self._hashes, np.concatenate(self._vectors)
        )
        self._hashes, self._vectors = [], []
        self._report.shards += 1
        self._report.encoded += ingest_shard(self._store, shard.path)
        self._store.release()  # let the app (or the CLI) have the database file between shards
