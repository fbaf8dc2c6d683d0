"""`python -m core …`: everything RepLens does, headless (GPU servers, scripts, CI).

Each command with ``--json`` prints exactly one JSON object (or list) on stdout; progress
bars and messages go to stderr. User errors print one line ``error: …`` and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core import config
from core.errors import EmbeddingsNotFoundError, InvalidInputError, RepLensError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RepLensError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: work committed so far is kept; rerun to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `python -m core encoders --json | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if not _is_environment_error(exc):
            raise  # a bug in RepLens: the traceback is what a bug report needs
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return RepLensError.exit_code


def _one_line(exc: BaseException) -> str:
    """The message on one line (library messages often span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_environment_error(exc: BaseException) -> bool:
    """Failures of the machine, not of RepLens: files that cannot be read or written, a file
    at REPLENS_DB that is not a DuckDB database."""
    if isinstance(exc, OSError):
        return True
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, (duckdb.IOException, duckdb.PermissionException))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="RepLens engine (headless).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encoders", help="list registered encoders")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_encoders)

    p = sub.add_parser("datasets", help="list datasets with counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("ingest", help="scan a folder or .zip of images into a dataset")
    p.add_argument("path")
    p.add_argument("--dataset", required=True)
    p.add_argument("--no-thumbnails", action="store_true", help="skip writing thumbnails during the scan")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("embed", help="embed a dataset's images (only those not cached)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--encoder", required=True, help="encoder id (see `encoders`)")
    p.add_argument("--layer", help="last, or blockN for ViTs")
    p.add_argument("--pool", help="cls/mean (ViT), avg/gem (CNN)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, default=4, help="decode threads")
    p.add_argument("--weights", help="local weights file fed through the encoder's hub loading path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("import-embeddings", help="bring your own vectors (csv, parquet, npy, npz)")
    p.add_argument("file")
    p.add_argument("--dataset", required=True)
    p.add_argument("--encoder-name", required=True)
    p.add_argument("--id-column")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write a dataset's vectors to Parquet")
    p.add_argument("--dataset", required=True)
    p.add_argument("--encoder", required=True, help="encoder id, full cache key, or import:NAME")
    p.add_argument("--layer")
    p.add_argument("--pool")
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bias", help="iEAT association test between four folders of a dataset")
    p.add_argument("--dataset", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--layer")
    p.add_argument("--pool")
    for role, meaning in (("x", "target X"), ("y", "target Y"), ("a", "attribute A"), ("b", "attribute B")):
        p.add_argument(f"--{role}", required=True, metavar="FOLDER", help=f"{meaning}: a sub-folder label")
    p.add_argument("--n-samples", type=int, default=10_000)
    p.add_argument("--seed", type=int)
    p.add_argument("--alternative", default="greater", choices=("greater", "less", "two-sided"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bias)

    p = sub.add_parser("demo-data", help="write a generated demo folder (used when Tux Paint stamps are absent)")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=24)
    p.set_defaults(func=cmd_demo_data)

    # Analysis commands (cluster, labels, …) live beside their engine modules.
    from core import cli_analysis, cli_snapshots

    cli_analysis.add_commands(sub)
    cli_snapshots.add_commands(sub)
    return parser


# ---------------------------------------------------------------------------------------


def _store() -> Any:
    from core.store import Store

    return Store(config.db_path(), config.cache_dir())


def _emit(args: argparse.Namespace, payload: Any, human: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, default=_json_default))
    else:
        human()


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _progress_bar(desc: str, unit: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=None)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def cmd_encoders(args: argparse.Namespace) -> int:
    from core.encoders import list_encoders

    specs = [s.to_dict() for s in list_encoders()]

    def human() -> None:
        for s in specs:
            where = "hub" if s["needs_network"] else "offline"
            text = " +text" if s["has_text_tower"] else ""
            print(f"{s['id']:<22} {s['family']:<34} dim={s['dim']:<5} {where}{text}  {s['name']}")

    _emit(args, specs, human)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    frame = _store().list_datasets()
    records = frame.assign(created_at=frame["created_at"].astype(str), updated_at=frame["updated_at"].astype(str))
    _emit(args, records.to_dict(orient="records"), lambda: print(frame.to_string(index=False)))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from core.datasets import ingest_path

    store = _store()
    update, close = _progress_bar(f"scanning {Path(args.path).name}", "file")
    try:
        scan, stats = ingest_path(store, args.dataset, args.path, progress=update, thumbnails=not args.no_thumbnails)
    finally:
        close()
    payload = {"dataset": args.dataset, "added": stats.added, "duplicates": stats.duplicates,
               "unchanged": stats.unchanged, "updated": stats.updated, "removed": stats.removed,
               "skipped": [{"path": s.rel_path, "reason": s.reason} for s in scan.skipped], "source": scan.root}

    def human() -> None:
        print(f"{args.dataset}: {stats.added} added ({stats.duplicates} duplicates), {stats.unchanged} unchanged, "
              f"{stats.updated} updated, {stats.removed} removed, {len(scan.skipped)} skipped")
        for s in scan.skipped:
            print(f"  skipped {s.rel_path}: {s.reason}")

    _emit(args, payload, human)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from core.encoders import load_encoder
    from core.extract import embed_dataset

    store = _store()
    store.require_dataset(args.dataset)
    encoder = load_encoder(args.encoder, args.device, layer=args.layer, pooling=args.pool, weights=args.weights)
    update, close = _progress_bar(f"embedding with {encoder.spec.id}", "img")
    try:
        report = embed_dataset(store, args.dataset, encoder, batch_size=args.batch_size, workers=args.workers,
                               progress=update)
    finally:
        close()
    payload = report.to_dict()

    def human() -> None:
        print(f"{args.dataset} × {report.encoder}: {report.encoded} encoded, {report.cached} cached, "
              f"{len(report.failed)} failed in {report.seconds:.1f}s ({report.images_per_s:.1f} img/s on {report.device})")
        for f in report.failed:
            print(f"  failed {f['path']}: {f['reason']}")

    _emit(args, payload, human)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from core.importer import import_embeddings

    report = import_embeddings(_store(), args.file, args.dataset, args.encoder_name, args.id_column)
    _emit(args, report.to_dict(), lambda: print(
        f"imported {report.imported} vectors ({report.dim}-d) as {report.encoder}; {len(report.unmatched)} ids unmatched"))
    return 0


def resolve_encoder_key(store: Any, dataset: str, encoder: str, layer: str | None, pool: str | None) -> str:
    """Turn what a user typed (id, full key, import:NAME) into one stored cache key."""
    keys = store.embedded_keys(dataset)
    if encoder in keys:
        return encoder
    candidates = [k for k in keys if k.split("@", 1)[0] == encoder]
    if layer:
        candidates = [k for k in candidates if k.split("/")[-2] == layer]
    if pool:
        candidates = [k for k in candidates if k.split("/")[-1] == pool]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise EmbeddingsNotFoundError(
            f"Dataset {dataset!r} has no embeddings for {encoder!r}"
            f"{f' layer={layer}' if layer else ''}{f' pool={pool}' if pool else ''}. Stored: {', '.join(keys) or 'none'}. "
            f"Run: python -m core embed --dataset {dataset} --encoder {encoder}"
        )
    raise InvalidInputError(f"{encoder!r} matches several stored keys ({', '.join(candidates)}); add --layer/--pool.")


def cmd_export(args: argparse.Namespace) -> int:
    store = _store()
    key = resolve_encoder_key(store, args.dataset, args.encoder, args.layer, args.pool)
    n = store.export_embeddings(args.dataset, key, args.out)
    _emit(args, {"dataset": args.dataset, "encoder": key, "rows": n, "out": str(Path(args.out).resolve())},
          lambda: print(f"wrote {n} rows ({key}) to {args.out}"))
    return 0


def cmd_bias(args: argparse.Namespace) -> int:
    from core.bias_runs import folder_options, folder_test, run_battery

    store = _store()
    key = resolve_encoder_key(store, args.dataset, args.encoder, args.layer, args.pool)
    paths = store.dataset_paths(args.dataset)
    try:
        test = folder_test(paths, f"{args.x} vs {args.y}", args.x, args.y, args.a, args.b)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{exc} Folders: {', '.join(folder_options(paths))}") from exc
    outcome = run_battery(store, args.dataset, [key], [test], n_samples=args.n_samples, seed=args.seed,
                          alternative=args.alternative).outcomes[0]
    result, (low, high) = outcome.result, outcome.ci
    payload = {
        "dataset": args.dataset, "encoder": key, "alternative": result.alternative,
        "sets": {role: {"folder": getattr(args, role), "n": len(hashes)} for role, hashes in test.sets().items()},
        "effect_size": result.effect_size, "ci95": [low, high], "p_value": result.p_value, "exact": result.exact,
        "n_permutations": result.n_permutations, "statistic": result.statistic, "min_p_value": result.min_p_value,
    }
    _emit(args, payload, lambda: print(
        f"d = {result.effect_size:.3f} (95% CI {low:.3f}..{high:.3f}), p = {result.p_value:.4g} "
        f"({'exact' if result.exact else 'sampled'}, {result.n_permutations} partitions, min p {result.min_p_value:.3g})"))
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from core.demo import write_generated_demo

    counts = write_generated_demo(args.out, per_class=args.per_class)
    print(json.dumps({"out": str(Path(args.out).resolve()), "classes": counts}))
    return 0
