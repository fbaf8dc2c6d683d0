"""The kinds of job and how each runs: extraction, layouts, clustering, diagnostics, bias batteries.

A kind turns stored parameters into work on the store and returns a JSON-able result. Each kind
is idempotent over what it commits (vectors are embedded only where missing, layouts and
clusterings are looked up before they are computed), which is what makes resuming a job safe.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import InvalidInputError
from core.jobs.model import JobCancelled, JobContext
from core.jsonsafe import dumps_canonical, jsonable

if TYPE_CHECKING:
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
        progress=ctx.progress,
        should_stop=ctx.should_stop,
        weights=params.get("weights"),
    )
    if report.stopped:
        raise JobCancelled(ctx.job_id)
    store.remember_encoder_key(dataset, report.encoder)
    return report.to_dict()


def _title_embed(dataset: str | None, params: dict[str, Any]) -> str:
    return f"Extract {params.get('encoder_id')} ({params.get('layer') or 'default'}) on {dataset}"


# --------------------------------------------------------------------------- analyses


def _run_layout(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from core.reduce import project

    dataset = _required_dataset(dataset)
    ctx.progress(0, 1, message="Computing the layout")
    layout = project(store, dataset, params["encoder_key"], params["method"], params.get("params") or {})
    ctx.progress(1, 1)
    return {
        "projection_key": layout.key,
        "method": layout.method,
        "n_points": int(len(layout.coords)),
        "cached": layout.cached,
        "seconds": round(layout.seconds, 3),
    }


def _run_cluster(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from core.cluster import run_clustering

    dataset = _required_dataset(dataset)
    ctx.progress(0, 1, message="Clustering")
    run = run_clustering(
        store,
        dataset,
        params["encoder_key"],
        params["method"],
        params.get("params") or {},
        stability_seeds=tuple(params.get("stability_seeds") or ()),
    )
    ctx.progress(1, 1)
    return {"run_id": run.run_id, "method": run.method, "metrics": jsonable(getattr(run, "metrics", {}))}


def _run_diagnostics(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from core.diagnostics import dataset_diagnostics

    dataset = _required_dataset(dataset)
    keys = list(params.get("encoder_keys") or store.embedded_keys(dataset))
    rows: list[dict[str, Any]] = []
    for done, key in enumerate(keys):
        ctx.progress(done, len(keys), message=f"Diagnosing {key}")
        ctx.check_cancelled()
        table = dataset_diagnostics(store, dataset, [key], **(params.get("options") or {}))
        rows.extend(jsonable(table.to_dict(orient="records")))
    ctx.progress(len(keys), len(keys))
    return {"rows": rows}


def _run_bias(store: Store, dataset: str | None, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from core.bias import DEFAULT_N_SAMPLES
    from core.bias_runs import folder_test, run_battery

    dataset = _required_dataset(dataset)
    paths = store.dataset_paths(dataset)
    tests = [
        folder_test(paths, t["name"], t["x"], t["y"], t["a"], t["b"], subfolders=t.get("subfolders", True))
        for t in params["tests"]
    ]

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
    return {"table": jsonable(result.table.to_dict(orient="records"))}


def _required_dataset(dataset: str | None) -> str:
    if not dataset:
        raise InvalidInputError("This kind of job needs a dataset.")
    return dataset


register_job_kind(JobKind("embed", "images", _title_embed, _run_embed))
register_job_kind(
    JobKind("layout", "steps", lambda d, p: f"Layout {p.get('method')} of {d} ({p.get('encoder_key')})", _run_layout)
)
register_job_kind(
    JobKind(
        "cluster", "steps", lambda d, p: f"Cluster {d} with {p.get('method')} ({p.get('encoder_key')})", _run_cluster
    )
)
register_job_kind(JobKind("diagnostics", "encoders", lambda d, p: f"Diagnostics of {d}", _run_diagnostics))
register_job_kind(JobKind("bias", "tests", lambda d, p: f"Bias battery on {d}", _run_bias))
