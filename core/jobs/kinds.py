"""The kinds of job and how each runs: extraction, layouts, clustering, diagnostics, bias batteries.

A kind turns stored parameters into work on the store and returns a JSON-able result. Each kind
is idempotent over what it commits (vectors are embedded only where missing, layouts and
clusterings are looked up before they are computed), which is what makes resuming a job safe.
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import InvalidInputError
from core.jobs.model import JobCancelled, JobContext
from core.jsonsafe import dumps_canonical, jsonable

if TYPE_CHECKING:
    from core.bias_runs import BatteryTest
    from core.encoders import BaseEncoder
    from core.store import Store

JobFunction = Callable[["Store", "str | None", dict[str, Any], JobContext], dict[str, Any]]


@dataclass(frozen=True)
class JobKind:
    name: str
    unit: str  # what progress counts
    title: Callable[[str | None, dict[str, Any]], str]
    run: JobFunction


JOB_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> JobKind:
    JOB_KINDS[kind.name] = kind
    return kind


def job_kind(name: str) -> JobKind:
    kind = JOB_KINDS.get(name)
    if kind is None:
        raise InvalidInputError(f"Unknown job kind {name!r}; kinds: {', '.join(sorted(JOB_KINDS))}.")
    return kind


def job_identity(kind: str, dataset: str | None, params: dict[str, Any]) -> str:
    """Same kind, dataset and parameters → same identity: starting it again joins the running job."""
    text = dumps_canonical({"kind": kind, "dataset": dataset, "params": params})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- extraction

_ENCODERS: OrderedDict[tuple[Any, ...], BaseEncoder] = OrderedDict()
_ENCODERS_LOCK = threading.Lock()
_MAX_ENCODERS = 3  # models are large; jobs of the same encoder reuse one (forward passes are serialised in it)


def loaded_encoder(params: dict[str, Any]) -> BaseEncoder:
    """The encoder an embed job's parameters describe, loaded once per process."""
    from core.encoders import load_encoder

    options = {k: params[k] for k in ("layer", "pooling", "weights", "precision") if params.get(k) is not None}
    cache_key = (params["encoder_id"], params.get("device") or "auto", *sorted(options.items()))
    with _ENCODERS_LOCK:
        if cache_key in _ENCODERS:
            _ENCODERS.move_to_end(cache_key)
            return _ENCODERS[cache_key]
    encoder = load_encoder(params["encoder_id"], params.get("device") or "auto", **options)
    with _ENCODERS_LOCK:
        _ENCODERS[cache_key] = encoder
        while len(_ENCODERS) > _MAX_ENCODERS:
            _ENCODERS.popitem(last=False)
    return encoder


def _run_embed(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from core.extract import embed_dataset

    dataset = _required_dataset(dataset)
    ctx.progress(0, None, message="Loading the encoder")
    encoder = loaded_encoder(params)
    ctx.check_cancelled()
    report = embed_dataset(
        store,
        dataset,
        encoder,
        batch_size=params.get("batch_size"),
        progress=_counting(ctx),
        should_stop=ctx.should_stop,
        weights=params.get("weights"),
    )
    if report.stopped:
        raise JobCancelled(ctx.job_id)
    store.remember_encoder_key(dataset, report.encoder)
    return report.to_dict()


def _counting(ctx: JobContext) -> Callable[[int, int], None]:
    """``ctx.progress`` that always records the first count (done and total): the context writes at
    most twice a second, and a model loaded from memory reports it right after "Loading the encoder"."""
    first = [True]

    def progress(done: int, total: int) -> None:
        ctx.progress(done, total, message="Embedding" if first[0] else None)
        first[0] = False

    return progress


def _title_embed(dataset: str | None, params: dict[str, Any]) -> str:
    return f"Extract {params.get('encoder_id')} ({params.get('layer') or 'default'}) on {dataset}"


# --------------------------------------------------------------------------- analyses


def _run_layout(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from core.reduce import project

    dataset = _required_dataset(dataset)
    ctx.progress(0, None, message="Loading the vectors")
    images, vectors = store.load_embeddings(dataset, params["encoder_key"])
    ctx.progress(0, None, message=f"Laying out {len(images):,} points")

    def report(done: int, total: int | None, message: str | None) -> None:
        ctx.progress(done, total, message)
        ctx.check_cancelled()

    layout = project(
        store,
        dataset,
        params["encoder_key"],
        params["method"],
        params.get("params") or {},
        images=images,
        vectors=vectors,
        progress=report,
    )
    ctx.progress(len(layout.coords), len(layout.coords), message="Done")
    return {
        "projection_key": layout.key,
        "method": layout.method,
        "n_points": int(len(layout.coords)),
        "cached": layout.cached,
        "seconds": round(layout.seconds, 3),
    }


def _run_index(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Build (or bring up to date) the ANN neighbour index of ``dataset`` × ``encoder_key`` on disk,
    where the Neighbors page opens it in seconds."""
    from core.neighbors import NeighborIndex

    dataset = _required_dataset(dataset)
    ctx.progress(0, None, message="Loading the vectors")
    images, vectors = store.load_embeddings(dataset, params["encoder_key"])
    ctx.progress(0, None, message=f"Indexing {len(images):,} vectors")

    def report(done: int, total: int) -> None:
        ctx.progress(done, total)
        ctx.check_cancelled()

    started = time.perf_counter()
    index = NeighborIndex(
        vectors,
        encoder_key=params["encoder_key"],
        hashes=images["content_hash"].tolist(),
        cache_dir=store.cache_dir,
        scope=dataset,
        progress=report,
    )
    ctx.progress(len(images), len(images), message="Done")
    build = index.build
    return {
        "n_vectors": int(index.n),
        "approximate": bool(index.uses_ann),
        "reason": build.reason if build else "exact search: no index needed",
        "added": build.added if build else 0,
        "reused": build.reused if build else 0,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _run_cluster(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from core.cluster import ClusteringWarning, run_clustering

    dataset = _required_dataset(dataset)
    ctx.progress(0, 1, message="Clustering")
    with _recorded(ClusteringWarning) as said:
        run = run_clustering(
            store,
            dataset,
            params["encoder_key"],
            params["method"],
            params.get("params") or {},
            stability_seeds=tuple(params.get("stability_seeds") or ()),
        )
    ctx.progress(1, 1)
    return {
        "run_id": run.run_id,
        "method": run.method,
        "n_clusters": int(run.n_clusters),
        "reused": bool(run.reused),  # a stored run of the same inputs was reopened, nothing fitted
        "metrics": jsonable(getattr(run, "metrics", {})),
        "warnings": said,  # e.g. "HDBSCAN left 60% noise", for the page to show
    }


def _run_diagnostics(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Per encoder, ``dataset_diagnostics`` with ``params["options"]`` (an encoder whose vectors it
    cannot use gets a row with its ``error``); with ``params["compare"]``, the pairwise comparison too."""
    from core.diagnostics import DiagnosticsWarning, compare_encoders, dataset_diagnostics
    from core.errors import RepLensError

    dataset = _required_dataset(dataset)
    keys = list(params.get("encoder_keys") or store.embedded_keys(dataset))
    compare = bool(params.get("compare")) and len(keys) >= 2
    steps = len(keys) + int(compare)
    rows: list[dict[str, Any]] = []
    comparison: list[dict[str, Any]] | None = None
    comparison_columns: list[str] = []
    messages: list[str] = []
    with _recorded(DiagnosticsWarning) as said:
        for done, key in enumerate(keys):
            ctx.progress(done, steps, message=f"Diagnosing {key}")
            ctx.check_cancelled()
            try:
                table = dataset_diagnostics(store, dataset, keys=[key], **(params.get("options") or {}))
                rows.extend(jsonable(table.to_dict(orient="records")))
            except RepLensError as exc:
                rows.append({"encoder": key, "error": exc.for_page()})
        if compare:
            ctx.progress(len(keys), steps, message="Comparing encoders")
            ctx.check_cancelled()
            try:
                pairs = compare_encoders(store, dataset, keys)
                comparison, comparison_columns = jsonable(pairs.to_dict(orient="records")), list(pairs.columns)
            except RepLensError as exc:
                messages.append(f"Encoder comparison: {exc.for_page()}")
    ctx.progress(steps, steps)
    return {
        "rows": rows,
        "comparison": comparison,
        "comparison_columns": comparison_columns,  # records come back with sorted keys
        "messages": messages + said,
    }


# The permutation null a bias result keeps for its histogram (the p-value used all of it).
NULL_SHOWN = 5000


def _run_bias(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A battery; ``params["tests"]`` holds per test a name and either four folder paths (``x``, ``y``,
    ``a``, ``b``, optional ``subfolders``) or four lists of content hashes (``sets``, with ``roles``
    saying what each set is). The result has the table and, per (test, encoder), what the Bias page
    draws: the observed statistic, a sample of the null and the images that drive the effect."""
    from core.bias import DEFAULT_N_SAMPLES
    from core.bias_runs import run_battery

    dataset = _required_dataset(dataset)
    tests = _battery_tests(store, dataset, params["tests"])

    def progress(done: int, total: int) -> None:
        ctx.progress(done, total)
        ctx.check_cancelled()

    result = run_battery(
        store,
        dataset,
        list(params["encoder_keys"]),
        tests,
        n_samples=int(params.get("n_samples") or DEFAULT_N_SAMPLES),
        seed=params.get("seed", 0),
        alternative=params.get("alternative", "greater"),
        progress=progress,
    )
    return {
        "table": jsonable(result.table.to_dict(orient="records")),
        "columns": [str(c) for c in result.table.columns],  # records come back with sorted keys
        "outcomes": [
            {
                "test": outcome.test,
                "encoder_key": outcome.encoder_key,
                "statistic": jsonable(outcome.result.statistic),
                "exact": bool(outcome.result.exact),
                "n_permutations": int(outcome.result.n_permutations),
                "null": jsonable(_shown_null(outcome.result.null_statistics)),
                "drivers": jsonable(outcome.drivers.to_dict(orient="records")),
            }
            for outcome in result.outcomes
        ],
    }


def _battery_tests(store: Store, dataset: str, specs: list[dict[str, Any]]) -> list[BatteryTest]:
    from core.bias_runs import ROLES, folder_test, make_test

    paths = None
    tests: list[BatteryTest] = []
    for t in specs:
        if "sets" in t:  # as the Bias page builds them: folders, clusters, a map selection, concepts
            tests.append(make_test(t["name"], {r: tuple(t["sets"][r]) for r in ROLES}, t.get("roles") or {}))
            continue
        paths = store.dataset_paths(dataset) if paths is None else paths
        tests.append(
            folder_test(paths, t["name"], t["x"], t["y"], t["a"], t["b"], subfolders=t.get("subfolders", True))
        )
    return tests


def _shown_null(null: Any) -> Any:
    """At most :data:`NULL_SHOWN` statistics of a null distribution, a seeded uniform sample."""
    import numpy as np

    values = np.asarray(null, dtype=float)
    if values.size <= NULL_SHOWN:
        return values
    return values[np.sort(np.random.default_rng(0).choice(values.size, NULL_SHOWN, replace=False))]


@contextmanager
def _recorded(category: type[Warning]) -> Iterator[list[str]]:
    """The messages of the warnings of ``category`` raised in the block (the list fills on exit).

    ``warnings.catch_warnings`` swaps process-wide state: a warning another thread raises meanwhile
    may land here too, and this job's may be missed by it. The pages did the same in their script
    threads; a message shown on the wrong page is the worst outcome.
    """
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        try:
            yield messages
        finally:
            messages.extend(str(w.message) for w in caught if issubclass(w.category, category))


def _required_dataset(dataset: str | None) -> str:
    if not dataset:
        raise InvalidInputError("This kind of job needs a dataset.")
    return dataset


register_job_kind(JobKind("embed", "images", _title_embed, _run_embed))
register_job_kind(
    JobKind("layout", "points", lambda d, p: f"Layout {p.get('method')} of {d} ({p.get('encoder_key')})", _run_layout)
)
register_job_kind(
    JobKind("index", "vectors", lambda d, p: f"Neighbour index of {d} ({p.get('encoder_key')})", _run_index)
)
register_job_kind(
    JobKind(
        "cluster", "steps", lambda d, p: f"Cluster {d} with {p.get('method')} ({p.get('encoder_key')})", _run_cluster
    )
)
register_job_kind(JobKind("diagnostics", "encoders", lambda d, p: f"Diagnostics of {d}", _run_diagnostics))
register_job_kind(JobKind("bias", "tests", lambda d, p: f"Bias battery on {d}", _run_bias))
