"""Commands that bring images and vectors in and out: encoders, datasets, dataset rename|delete,
ingest, gc, embed, import-embeddings, export, demo-data."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.cli.common import (
    SubParsers,
    add_command,
    dataset_option,
    emit,
    encoder_options,
    key_from_args,
    open_store,
    progress_bar,
)
from core.engines import ENGINES, SCALE_EXTRA_HINT
from core.errors import InvalidInputError

if TYPE_CHECKING:
    from core.store import Store


def add_commands(sub: SubParsers) -> None:
    """Add the data sub-commands to ``python -m core``."""
    add_command(sub, "encoders", cmd_encoders, "list registered encoders")
    add_command(sub, "datasets", cmd_datasets, "list datasets with counts")

    p = add_command(sub, "ingest", cmd_ingest, "scan a folder or .zip of images into a dataset", [dataset_option()])
    p.add_argument("path")
    p.add_argument("--no-thumbnails", action="store_true", help="skip writing thumbnails during the scan")
    p.add_argument(
        "--add",
        action="store_true",
        help="add PATH to an existing dataset that holds other sources (rescanning one of its sources needs no flag)",
    )

    group = sub.add_parser("dataset", help="rename or delete a dataset")
    dsub = group.add_subparsers(dest="dataset_command", required=True)
    p = add_command(dsub, "rename", cmd_dataset_rename, "rename a dataset (runs, projections and uploads follow)")
    p.add_argument("old")
    p.add_argument("new")
    add_command(
        dsub,
        "delete",
        cmd_dataset_delete,
        "delete a dataset with its uploads, cluster runs and projections (snapshots stay; then run gc)",
    ).add_argument("name")

    p = add_command(sub, "gc", cmd_gc, "reclaim embeddings and thumbnails of images no dataset holds any more")
    p.add_argument("--dry-run", action="store_true", help="report what would be freed, delete nothing")

    p = add_command(
        sub,
        "embed",
        cmd_embed,
        "embed a dataset's images (only those not cached)",
        [dataset_option(), encoder_options(help="encoder id (see `encoders`)")],
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, default=4, help="decode threads")
    p.add_argument("--weights", help="local weights file fed through the encoder's hub loading path")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local (default): this process; pipelined: this process, with reading, decoding (nvjpeg on CUDA), "
        "preprocessing, the model and DuckDB writes overlapping; "
        f"ray: a Ray cluster's GPUs or CPUs ({SCALE_EXTRA_HINT})",
    )
    p.add_argument(
        "--address",
        help="with --engine ray: the cluster (auto, ray://HOST:10001, or local for a new instance on this machine); "
        "default: RAY_ADDRESS, else a cluster started here with `ray start`, else a new local instance",
    )
    p.add_argument(
        "--ray-actors",
        type=int,
        help="with --engine ray: encoder actors (default: one per GPU; one per 4 CPUs on a cluster without GPUs)",
    )

    p = add_command(
        sub, "import-embeddings", cmd_import, "bring your own vectors (csv, parquet, npy, npz)", [dataset_option()]
    )
    p.add_argument("file")
    p.add_argument("--encoder-name", required=True)
    p.add_argument("--id-column")

    p = add_command(
        sub, "export", cmd_export, "write a dataset's vectors to Parquet", [dataset_option(), encoder_options()]
    )
    p.add_argument("--out", required=True)

    p = add_command(
        sub,
        "stimuli",
        cmd_stimuli,
        "store four stimulus folders (targets X, Y; attributes A, B) as one dataset for iEAT and embed it",
        [dataset_option()],
    )
    for role, meaning in (("x", "target X"), ("y", "target Y"), ("a", "attribute A"), ("b", "attribute B")):
        p.add_argument(f"--{role}", required=True, metavar="DIR", help=f"{meaning}: a local folder of images")
    p.add_argument(
        "--encoder", required=True, action="append", metavar="ID", help="encoder id to embed with (repeat for several)"
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")

    p = add_command(
        sub,
        "demo-data",
        cmd_demo_data,
        "write a generated demo folder (used when Tux Paint stamps are absent)",
        with_json=False,
    )
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=24)


def cmd_encoders(args: argparse.Namespace) -> int:
    from core.encoders import list_encoders

    specs = [s.to_dict() for s in list_encoders()]

    def human() -> None:
        for s in specs:
            where = "hub" if s["needs_network"] else "offline"
            text = " +text" if s["has_text_tower"] else ""
            print(f"{s['id']:<22} {s['family']:<34} dim={s['dim']:<5} {where}{text}  {s['name']}")

    emit(args, specs, human)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    frame = open_store().list_datasets()
    records = frame.assign(created_at=frame["created_at"].astype(str), updated_at=frame["updated_at"].astype(str))
    emit(args, records.to_dict(orient="records"), lambda: print(frame.to_string(index=False)))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from core.datasets import DatasetExistsError, ingest_path

    store = open_store()
    update, close = progress_bar(f"scanning {Path(args.path).name}", "file")
    try:
        scan, stats = ingest_path(
            store, args.dataset, args.path, progress=update, thumbnails=not args.no_thumbnails, add=args.add
        )
    except DatasetExistsError as exc:
        raise InvalidInputError(
            f"Dataset {exc.dataset!r} already holds images from {'; '.join(exc.sources[:3])}. "
            f"Pass --add to add {exc.source} to it, or give another --dataset name."
        ) from exc
    finally:
        close()
    payload = {
        "dataset": stats.dataset,
        "added": stats.added,
        "duplicates": stats.duplicates,
        "unchanged": stats.unchanged,
        "updated": stats.updated,
        "removed": stats.removed,
        "skipped": [{"path": s.rel_path, "reason": s.reason} for s in scan.skipped],
        "source": scan.root,
    }

    def human() -> None:
        print(
            f"{stats.dataset}: {stats.added} added ({stats.duplicates} duplicates), {stats.unchanged} unchanged, "
            f"{stats.updated} updated, {stats.removed} removed, {len(scan.skipped)} skipped"
        )
        for s in scan.skipped:
            print(f"  skipped {s.rel_path}: {s.reason}")

    emit(args, payload, human)
    return 0


def cmd_dataset_rename(args: argparse.Namespace) -> int:
    from core.datasets import rename_dataset

    new = rename_dataset(open_store(), args.old, args.new)
    emit(args, {"old": args.old, "new": new}, lambda: print(f"renamed {args.old} to {new}"))
    return 0


def cmd_dataset_delete(args: argparse.Namespace) -> int:
    from core.datasets import delete_dataset

    counts = delete_dataset(open_store(), args.name)

    def human() -> None:
        print(
            f"deleted {args.name}: {counts['paths']} paths, {counts['cluster_runs']} cluster runs, "
            f"{counts['projections']} projections, {counts['upload_folders']} upload folder(s); "
            "snapshots kept. Run gc to reclaim embeddings no dataset uses."
        )

    emit(args, {"dataset": args.name, "removed": counts}, human)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from core.datasets import collect_garbage

    report = collect_garbage(open_store(), dry_run=args.dry_run)

    def human() -> None:
        verb = "would free" if report.dry_run else "freed"
        print(
            f"{verb} {report.n_vectors} embeddings ({report.vector_bytes / 1e6:.2f} MB of vectors), "
            f"{report.image_records} image records, {report.thumbnails} thumbnails "
            f"({report.thumbnail_bytes / 1e6:.2f} MB)"
        )
        for key, n in report.vectors.items():
            print(f"  {key}: {n} embeddings")

    emit(args, report.to_dict(), human)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    if args.engine != "ray" and (args.address is not None or args.ray_actors is not None):
        raise InvalidInputError("--address and --ray-actors apply to --engine ray only; add --engine ray.")
    store = open_store()
    store.require_dataset(args.dataset)
    options = _encoder_options(args)
    on = " on ray" if args.engine == "ray" else ""
    update, close = progress_bar(f"embedding with {args.encoder}{on}", "img")
    try:
        payload = (_embed_on_ray if args.engine == "ray" else _embed_here)(store, args, options, update)
    finally:
        close()

    def human() -> None:
        where = payload["device"]
        if payload.get("engine") == "ray":
            cluster = payload["cluster"] or {}
            where = f"{payload['actors']} ray {where} actor(s); cluster: " + (
                ", ".join(f"{k}={cluster[k]:g}" for k in ("nodes", "CPU", "GPU") if k in cluster) or "not contacted"
            )
        print(
            f"{args.dataset} × {payload['encoder']}: {payload['encoded']} encoded, {payload['cached']} cached, "
            f"{len(payload['failed'])} failed in {payload['seconds']:.1f}s "
            f"({payload['images_per_s']:.1f} img/s on {where})"
        )
        for f in payload["failed"]:
            print(f"  failed {f['path']}: {f['reason']}")

    emit(args, payload, human)
    return 0


def _encoder_options(args: argparse.Namespace) -> dict[str, Any]:
    """``load_encoder``'s keyword arguments, as given: both engines load the encoder from them
    (the ray engine in every actor), so an option added there reaches every worker unchanged."""
    options: dict[str, Any] = {
        "encoder_id": args.encoder,
        "device": args.device,
        "layer": args.layer,
        "pooling": args.pool,
        "weights": args.weights,
    }
    # Encoder options other commands' parsers may add (e.g. --precision) travel the same way.
    options.update({name: getattr(args, name) for name in _EXTRA_ENCODER_OPTIONS if getattr(args, name, None)})
    return options


_EXTRA_ENCODER_OPTIONS = ("precision",)


def _embed_here(
    store: Store, args: argparse.Namespace, options: dict[str, Any], update: Callable[[int, int], None]
) -> dict[str, Any]:
    from core.encoders import load_encoder
    from core.extract import embed_dataset

    encoder = load_encoder(**options)
    run = embed_dataset
    if args.engine == "pipelined":
        from core.gpupipe import embed_dataset_pipelined

        run = embed_dataset_pipelined
    report = run(
        store,
        args.dataset,
        encoder,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=update,
        weights=args.weights,
    )
    return report.to_dict()


def _embed_on_ray(
    store: Store, args: argparse.Namespace, options: dict[str, Any], update: Callable[[int, int], None]
) -> dict[str, Any]:
    from core.engines.ray_engine import embed_dataset_ray

    report = embed_dataset_ray(
        store,
        args.dataset,
        options,
        address=args.address,
        actors=args.ray_actors,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=update,
    )
    return report.to_dict()


def cmd_import(args: argparse.Namespace) -> int:
    from core.importer import import_embeddings

    report = import_embeddings(open_store(), args.file, args.dataset, args.encoder_name, args.id_column)
    emit(
        args,
        report.to_dict(),
        lambda: print(
            f"imported {report.imported} vectors ({report.dim}-d) as {report.encoder}; "
            f"{len(report.unmatched)} ids unmatched"
        ),
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = open_store()
    key = key_from_args(store, args)
    n = store.export_embeddings(args.dataset, key, args.out)
    emit(
        args,
        {"dataset": args.dataset, "encoder": key, "rows": n, "out": str(Path(args.out).resolve())},
        lambda: print(f"wrote {n} rows ({key}) to {args.out}"),
    )
    return 0


def cmd_stimuli(args: argparse.Namespace) -> int:
    from core.encoders import load_encoder
    from core.stimuli import ROLE_NAMES, ingest_stimulus_folders

    store = open_store()
    progress, close = _stage_bars()
    try:
        result = ingest_stimulus_folders(
            store,
            args.dataset,
            {role: getattr(args, role) for role in ROLE_NAMES},
            args.encoder,
            progress=progress,
            loader=lambda encoder_id: load_encoder(encoder_id, args.device),
        )
    finally:
        close()
    payload = {
        "dataset": result.dataset,
        "folders": result.folders,
        "role_counts": result.role_counts,
        "paths": result.n_paths,
        "skipped": result.n_skipped,
        "encoders": result.encoder_keys,
        "refused": result.refused,
    }

    def human() -> None:
        sets = ", ".join(f"{ROLE_NAMES[r]} = {result.folders[r]} ({result.role_counts[r]})" for r in ROLE_NAMES)
        print(f"{result.dataset}: {sets}; embedded with {', '.join(result.encoder_keys)}")
        print(
            f"test it: replens bias --dataset {result.dataset} --encoder {args.encoder[0]} "
            + " ".join(f"--{r} {result.folders[r]}" for r in ROLE_NAMES)
        )

    emit(args, payload, human)
    return 0


def _stage_bars() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """``progress(stage, done, total)`` drawn as one tqdm bar per stage (scan, then each encoder)."""
    from core.stimuli import SCAN_STAGE

    bars: dict[str, tuple[Callable[[int, int], None], Callable[[], None]]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for _, close in bars.values():
                close()
            bars[stage] = progress_bar("scanning" if stage == SCAN_STAGE else f"embedding with {stage}", "img")
        bars[stage][0](done, total)

    def close_all() -> None:
        for _, close in bars.values():
            close()

    return progress, close_all


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Prints its JSON summary always (the command has no human form)."""
    from core.demo import write_generated_demo

    counts = write_generated_demo(args.out, per_class=args.per_class)
    print(json.dumps({"out": str(Path(args.out).resolve()), "classes": counts}))
    return 0
