"""The `snapshot` command group: ``python -m core snapshot save|list|show|delete|export|import|html|diff``.

Ids may be given as a unique prefix (at least 4 hex characters).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core.cli.common import SubParsers, add_command, emit, open_store


def add_commands(sub: SubParsers) -> None:
    """Add the `snapshot` command group to ``python -m core``."""
    group = sub.add_parser("snapshot", help="save, share and compare frozen cluster runs")
    ssub = group.add_subparsers(dest="snapshot_command", required=True)

    p = add_command(ssub, "save", cmd_save, "freeze a cluster run as an immutable snapshot")
    p.add_argument("--run", required=True, help="cluster run id")
    p.add_argument("--title", required=True)
    p.add_argument("--notes", default="")
    p.add_argument("--projection", help="projection key for the map (default: newest for the run, else PCA)")

    p = add_command(ssub, "list", cmd_list, "stored snapshots, newest first")
    p.add_argument("--query", help="keep those whose title, notes or dataset contain this text")

    add_command(ssub, "show", cmd_show, "one snapshot's manifest and clusters").add_argument("id")
    add_command(ssub, "delete", cmd_delete, "remove a stored snapshot").add_argument("id")

    p = add_command(ssub, "export", cmd_export, "write a .replens file to share")
    p.add_argument("id")
    p.add_argument("--out", required=True, help="FILE.replens")

    add_command(
        ssub, "import", cmd_import, "import a .replens file (validated; the database is unchanged on failure)"
    ).add_argument("file")

    p = add_command(ssub, "html", cmd_html, "write one self-contained HTML page (opens offline)")
    p.add_argument("id")
    p.add_argument("--out", required=True, help="FILE.html")

    p = add_command(ssub, "diff", cmd_diff, "compare two snapshots of the same images (ARI, NMI, moved images)")
    p.add_argument("a")
    p.add_argument("b")


def cmd_save(args: argparse.Namespace) -> int:
    from core import snapshots

    store = open_store()
    snapshot_id = snapshots.save_snapshot(
        store, args.run, title=args.title, notes=args.notes, projection_key=args.projection
    )
    snap = snapshots.load_snapshot(store, snapshot_id)
    payload = {
        "snapshot_id": snapshot_id,
        "title": snap.title,
        "n_points": snap.n_points,
        "n_clusters": len(snap.clusters),
        "projection": snap.projection,
    }
    emit(
        args,
        payload,
        lambda: print(
            f"saved snapshot {snapshot_id} ({snap.n_points} images, {len(snap.clusters)} clusters, "
            f"map: {snap.projection['method']})"
        ),
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from core import snapshots

    frame = snapshots.list_snapshots(open_store(), args.query)
    records = frame.assign(created_at=frame["created_at"].astype(str)).to_dict(orient="records")

    def human() -> None:
        if not records:
            print("no snapshots yet: python -m core snapshot save --run RUN_ID --title TITLE")
        for r in records:
            print(
                f"{r['snapshot_id'][:12]}  {r['created_at'][:19]}  {r['dataset']:<16} {r['n_points']:>6} img "
                f"{r['n_clusters']:>4} cl  {r['origin']:<8} {r['title']}"
            )

    emit(args, records, human)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from core import snapshots

    snap = snapshots.load_snapshot(open_store(), args.id)
    payload: dict[str, Any] = snap.manifest()
    payload["origin"] = snap.origin
    payload["clusters"] = snap.clusters.to_dict(orient="records")

    def human() -> None:
        print(f"{snap.id}\n{snap.title}  ({snap.dataset['name']}, {snap.encoder['key']}, {snap.clustering['method']})")
        if snap.notes:
            print(snap.notes)
        for row in snap.clusters.itertuples(index=False):
            print(f"  {row.cluster:>4}  {row.size:>6}  {row.label}  [{row.method}{', edited' if row.edited else ''}]")

    emit(args, payload, human)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from core import snapshots

    store = open_store()
    snapshot_id = snapshots.resolve_snapshot_id(store, args.id)
    snapshots.delete_snapshot(store, snapshot_id)
    emit(args, {"deleted": snapshot_id}, lambda: print(f"deleted snapshot {snapshot_id}"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core import snapshots

    result = snapshots.export_snapshot(open_store(), args.id, args.out)

    def human() -> None:
        print(f"wrote {result.path} ({result.n_points} images, {result.n_thumbnails} thumbnails)")
        if result.missing_thumbnails:
            print(
                f"  {result.missing_thumbnails} images had no cached thumbnail; their tiles will be blank "
                "(ingest with thumbnails to include them)"
            )

    emit(args, result.to_dict(), human)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from core import snapshots

    store = open_store()
    snapshot_id = snapshots.import_snapshot(store, args.file)
    snap = snapshots.load_snapshot(store, snapshot_id)
    payload = {
        "snapshot_id": snapshot_id,
        "title": snap.title,
        "origin": snap.origin,
        "n_points": snap.n_points,
        "n_clusters": len(snap.clusters),
    }
    emit(
        args,
        payload,
        lambda: print(
            f"imported snapshot {snapshot_id} ({snap.title!r}, {snap.n_points} images, {len(snap.clusters)} clusters)"
        ),
    )
    return 0


def cmd_html(args: argparse.Namespace) -> int:
    from core import snapshots

    out = snapshots.snapshot_html(open_store(), args.id, args.out)
    emit(args, {"path": str(Path(out).resolve())}, lambda: print(f"wrote {out}"))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from core import snapshots

    diff = snapshots.diff_snapshots(open_store(), args.a, args.b)

    def human() -> None:
        print(
            f"{diff.id_a[:12]} vs {diff.id_b[:12]}: {diff.n_shared} shared images "
            f"({diff.only_a} only in A, {diff.only_b} only in B)"
        )
        print(f"ARI {diff.ari:.3f}  NMI {diff.nmi:.3f}  moved {diff.n_moved}")
        print(diff.confusion.to_string())

    emit(args, diff.to_dict(), human)
    return 0
