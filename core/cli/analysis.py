"""Commands for the analyses built on stored embeddings:

    python -m core project --dataset NAME --encoder ID [--method {umap,umap-sampled,pca,tsne}] [--n-neighbors N]
                           [--min-dist D] [--metric M] [--perplexity P] [--seed S]
    python -m core cluster --dataset NAME --encoder ID --method {hdbscan,kmeans,agglomerative,leiden}
                           [--k N] [--seed S]
    python -m core cluster-runs [--dataset NAME]
    python -m core labels --run RUN_ID --method {clip,text,visual} [--keep-shown]
    python -m core label-sets --run RUN_ID [--show SET]
    python -m core diagnostics --dataset NAME [--encoder ID] [--compare]
    python -m core bias --dataset NAME --encoder ID --x FOLDER --y FOLDER --a FOLDER --b FOLDER

Each takes ``--json`` and then prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any

from core.cli.common import (
    SubParsers,
    add_command,
    dataset_option,
    emit,
    encoder_options,
    key_from_args,
    open_store,
    progress_bar,
    seed_option,
)
from core.errors import InvalidInputError

# The built-ins, for help text only: a method is checked by its registry when the command runs,
# so a plug-in's clusterer, reducer or labeller is accepted too (and the parser stays import-light).
PROJECTION_METHODS = ("umap", "umap-sampled", "pca", "tsne")
CLUSTER_METHODS = ("hdbscan", "kmeans", "agglomerative", "leiden")
LABEL_METHODS = ("clip", "text", "visual", "imagenet")


def _methods_help(builtins: tuple[str, ...], extra: str = "") -> str:
    return f"{', '.join(builtins)}, or a plug-in's name{extra}"


BIAS_ROLES = (("x", "target X"), ("y", "target Y"), ("a", "attribute A"), ("b", "attribute B"))


def add_commands(sub: SubParsers) -> None:
    """Add the analysis sub-commands to ``python -m core``."""
    _add_project(sub)
    _add_cluster(sub)
    add_command(sub, "cluster-runs", cmd_cluster_runs, "list stored cluster runs", [dataset_option(required=False)])
    _add_labels(sub)
    _add_label_sets(sub)
    _add_diagnostics(sub)
    _add_bias(sub)


def _add_project(sub: SubParsers) -> None:
    seed = seed_option(help="random_state (default 42 for umap/tsne, 0 for pca, as the Map page)")
    p = add_command(
        sub,
        "project",
        cmd_project,
        "compute and cache a 2-D map layout (the Map page then opens instantly)",
        [dataset_option(), encoder_options(), seed],
    )
    p.add_argument(
        "--method", default="umap", help=_methods_help(PROJECTION_METHODS, " (default umap, as the Map page)")
    )
    p.add_argument("--n-neighbors", type=int, help="umap (default 15, as the Map page)")
    p.add_argument("--min-dist", type=float, help="umap (default 0.1)")
    p.add_argument("--metric", help="umap: cosine (default), euclidean, correlation, manhattan")
    p.add_argument("--perplexity", type=float, help="tsne (default 30)")
    p.add_argument(
        "--sample-size",
        type=int,
        help="umap-sampled: points UMAP is fitted on (default 20000); umap above 100,000 points switches to it",
    )


def _add_cluster(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "cluster",
        cmd_cluster,
        "cluster a dataset's embeddings and store the run",
        [dataset_option(), encoder_options(), seed_option(help="random_state (default 0)")],
    )
    p.add_argument("--method", required=True, help=_methods_help(CLUSTER_METHODS))
    p.add_argument("--k", type=int, help="number of clusters (kmeans, agglomerative); default: chosen automatically")
    p.add_argument("--k-selection", choices=("silhouette", "eigengap"), help="how k is chosen when --k is absent")
    p.add_argument("--min-cluster-size", type=int, help="hdbscan: smallest cluster")
    p.add_argument("--resolution", type=float, help="leiden: higher gives more clusters (default 1.0)")
    p.add_argument("--reduce", choices=("none", "pca", "umap"), help="space to cluster in (default per method)")
    p.add_argument(
        "--stability", type=int, default=0, metavar="N", help="also fit with N seeds and report their pairwise ARI"
    )


def _add_labels(sub: SubParsers) -> None:
    p = add_command(sub, "labels", cmd_labels, "name the clusters of a stored run")
    p.add_argument("--run", required=True, help="cluster run id (see cluster-runs)")
    p.add_argument("--method", required=True, help=_methods_help(LABEL_METHODS))
    p.add_argument("--words", help="clip: extra words, comma-separated, added to the vocabulary")
    p.add_argument("--vocabulary", help="clip: a text file with one word per line instead of core/data/nouns.txt")
    p.add_argument("--clip-encoder", help="clip: stored key of the CLIP embeddings (default: the dataset's)")
    p.add_argument("--weights", help="clip: local weights file for the text tower")
    p.add_argument("--device", default="cpu", help="clip: cpu (default), cuda, mps")
    p.add_argument(
        "--keep-shown",
        action="store_true",
        help="store the labels (in the set named by the method) but keep showing the run's current label set",
    )


def _add_label_sets(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "label-sets",
        cmd_label_sets,
        "list a run's label sets (one per labelling method, plus 'user') and pick the one it shows",
    )
    p.add_argument("--run", required=True, help="cluster run id (see cluster-runs)")
    p.add_argument("--show", metavar="SET", help="show this label set from now on (map, pickers, snapshots)")


def _add_diagnostics(sub: SubParsers) -> None:
    every_encoder = encoder_options(required=False, help="one encoder (id or key); default: every embedded encoder")
    p = add_command(
        sub,
        "diagnostics",
        cmd_diagnostics,
        "representation diagnostics (RankMe, uniformity, LID, hubness, kNN, probe)",
        [dataset_option(), every_encoder],
    )
    p.add_argument("--compare", action="store_true", help="also CKA and mutual-kNN between encoders")


def _add_bias(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "bias",
        cmd_bias,
        "iEAT association test between four folders of a dataset",
        [dataset_option(), encoder_options(), seed_option()],
    )
    for role, meaning in BIAS_ROLES:
        p.add_argument(
            f"--{role}",
            required=True,
            metavar="FOLDER",
            help=f"{meaning}: a folder path from the dataset's top level (e.g. military/vehicles); "
            "its sub-folders count unless --no-subfolders",
        )
    p.add_argument(
        "--no-subfolders", action="store_true", help="only the images directly in each folder, not its sub-folders"
    )
    p.add_argument("--n-samples", type=int, default=10_000)
    p.add_argument("--alternative", default="greater", choices=("greater", "less", "two-sided"))


_UMAPS = ("umap", "umap-sampled")
_PROJECTION_OPTIONS = {
    "n_neighbors": _UMAPS,
    "min_dist": _UMAPS,
    "metric": _UMAPS,
    "perplexity": ("tsne",),
    "sample_size": ("umap-sampled",),
}


def _projection_params(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options given; the reducer's defaults (the Map page's too) fill the rest,
    so a layout made here has the same cache key as the page's default one."""
    params: dict[str, Any] = {}
    for name, methods in _PROJECTION_OPTIONS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if args.method not in methods:
            raise InvalidInputError(f"--{name.replace('_', '-')} applies to {', '.join(methods)}, not {args.method}")
        params[name] = value
    if args.seed is not None:
        params["random_state"] = args.seed
    return params


def cmd_project(args: argparse.Namespace) -> int:
    from core.reduce import layout_for_size, project

    params = _projection_params(args)
    store = open_store()
    key = key_from_args(store, args)
    images, vectors = store.load_embeddings(args.dataset, key)
    # The layout the Map page would pick at this size, so the page finds it cached.
    choice = layout_for_size(args.method, params, len(images))
    if choice.note:
        print(choice.note, file=sys.stderr)
    bars: list[tuple[Callable[[int, int], None], Callable[[], None]]] = []  # made when counting starts

    def progress(done: int, total: int | None, message: str | None) -> None:
        if message:
            print(message, file=sys.stderr)
        if total is not None:
            if not bars:
                bars.append(progress_bar("Placing points", "points"))
            bars[0][0](done, total)

    try:
        proj = project(
            store, args.dataset, key, choice.method, choice.params, images=images, vectors=vectors, progress=progress
        )
    finally:
        for _, close in bars:
            close()
    payload = {
        "projection_key": proj.key,
        "dataset": args.dataset,
        "encoder": key,
        "method": proj.method,
        "params": proj.params,
        "n_points": len(proj.images),
        "cached": proj.cached,
        "seconds": round(proj.seconds, 3),
    }

    def human() -> None:
        origin = "already cached" if proj.cached else f"computed in {proj.seconds:.1f}s and cached"
        print(
            f"{proj.method} layout of {len(proj.images):,} images of {args.dataset} under {key}: {origin} "
            f"({_scalar_params(proj.params)})"
        )

    emit(args, payload, human)
    return 0


def _scalar_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _cluster_params(args: argparse.Namespace) -> dict[str, Any]:
    method = args.method
    params: dict[str, Any] = {}
    if args.k is not None:
        if method not in ("kmeans", "agglomerative"):
            raise InvalidInputError(
                f"--k applies to kmeans and agglomerative, not {method} "
                "(hdbscan: --min-cluster-size; leiden: --resolution)"
            )
        params["n_clusters"] = args.k
    if args.k_selection is not None:
        if method not in ("kmeans", "agglomerative"):
            raise InvalidInputError(f"--k-selection applies to kmeans and agglomerative, not {method}")
        params["k_selection"] = args.k_selection
    if args.min_cluster_size is not None:
        if method not in ("hdbscan", "leiden"):
            raise InvalidInputError(f"--min-cluster-size applies to hdbscan and leiden, not {method}")
        params["min_cluster_size"] = args.min_cluster_size
    if args.resolution is not None:
        if method != "leiden":
            raise InvalidInputError(f"--resolution applies to leiden, not {method}")
        params["resolution"] = args.resolution
    if args.reduce is not None:
        params["reduce"] = None if args.reduce == "none" else args.reduce
    if args.seed is not None:
        params["random_state"] = args.seed
    return params


def cmd_cluster(args: argparse.Namespace) -> int:
    from core.cluster import run_clustering

    params = _cluster_params(args)
    if args.stability == 1 or args.stability < 0:
        raise InvalidInputError(f"--stability {args.stability}: give 2 or more seeds (or 0 for none)")
    seed = args.seed or 0
    store = open_store()
    key = key_from_args(store, args)
    images, vectors = store.load_embeddings(args.dataset, key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = run_clustering(
            store,
            args.dataset,
            key,
            args.method,
            params,
            images=images,
            vectors=vectors,
            stability_seeds=list(range(seed, seed + args.stability)),
        )
    notes = _notes(caught)
    cluster_of = dict(zip(run.hashes, run.labels.tolist()))
    payload = {
        "run_id": run.run_id,
        "reused": run.reused,
        "dataset": args.dataset,
        "encoder": key,
        "method": run.method,
        "params": run.params,
        "n_clusters": run.n_clusters,
        "noise_fraction": run.noise_fraction,
        "metrics": run.metrics,
        "warnings": notes,
        "assignments": [
            {"path": path, "cluster": int(cluster_of[h])} for path, h in zip(images["rel_path"], images["content_hash"])
        ],
    }

    def human() -> None:
        m = run.metrics
        print(
            f"run {run.run_id}: {run.method} on {key}: {run.n_clusters} clusters, "
            f"{run.noise_fraction:.1%} noise, silhouette {_fmt(m.get('silhouette'))}, {m.get('seconds', 0):.2f}s"
            + (" (the same clustering was stored: reused it, nothing recomputed)" if run.reused else "")
        )
        if "ari" in m:
            print(
                f"  vs folders: ARI {m['ari']:.3f}  NMI {m['nmi']:.3f}  Hungarian accuracy "
                f"{m['hungarian_accuracy']:.3f} ({m['n_classes']} folders)"
            )
        if "stability" in m:
            print(f"  seed stability: mean ARI {m['stability']['mean_ari']:.3f} (min {m['stability']['min_ari']:.3f})")
        sizes = ", ".join(f"{c}:{n}" for c, n in m["sizes"].items())
        print(f"  sizes: {sizes}")
        for note in notes:
            print(f"  warning: {note}")

    emit(args, payload, human)
    return 0


def cmd_cluster_runs(args: argparse.Namespace) -> int:

    frame = open_store().list_cluster_runs(args.dataset)
    records = [
        {
            **r,
            "params": json.loads(r["params"]),
            "metrics": json.loads(r["metrics"]),
            "created_at": str(r["created_at"]),
        }
        for r in frame.to_dict("records")
    ]

    def human() -> None:
        if frame.empty:
            print(
                "no cluster runs yet; create one with: "
                "python -m core cluster --dataset NAME --encoder ID --method hdbscan"
            )
            return
        for r in records:
            parent = f" (from {r['parent_run_id']})" if r["parent_run_id"] else ""
            print(
                f"{r['run_id']}  {r['dataset']:<12} {r['method']:<13} {r['n_clusters']:>4} clusters "
                f"{r['noise_fraction']:6.1%} noise  {r['encoder_key']}{parent}  {r['created_at']}"
            )

    emit(args, records, human)
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from core.concepts import label_run, load_vocabulary

    options: dict[str, Any] = {}
    if args.method == "clip":
        if args.words:
            options["extra_words"] = [w.strip() for w in args.words.split(",") if w.strip()]
        if args.vocabulary:
            options["vocabulary"] = load_vocabulary(args.vocabulary)
        options.update(encoder_key=args.clip_encoder, weights=args.weights, device=args.device)
    elif any((args.words, args.vocabulary, args.clip_encoder, args.weights)):
        raise InvalidInputError(
            f"--words/--vocabulary/--clip-encoder/--weights apply to --method clip, not {args.method}"
        )
    store = open_store()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = label_run(store, args.run, args.method, show=not args.keep_shown, **options)
    notes = _notes(caught)
    payload = {
        "run_id": args.run,
        "method": args.method,
        "label_set": args.method,
        "shown_label_set": store.shown_label_set(args.run),
        "warnings": notes,
        "labels": [c.to_dict() for c in labels],
    }

    def human() -> None:
        for c in labels:
            alts = ", ".join(f"{x['word']} {x['score']:.3g}" for x in c.candidates)
            edited = " (edited by a user)" if c.edited else ""
            unique = f" (labeller said {c.computed_label!r})" if c.computed_label and not c.edited else ""
            print(f"cluster {c.cluster:>3}: {c.label}{edited}{unique}    [{alts}]")
        print(f"label set {args.method!r}; the run shows {payload['shown_label_set']!r}")
        for note in notes:
            print(f"warning: {note}")

    emit(args, payload, human)
    return 0


def cmd_label_sets(args: argparse.Namespace) -> int:
    store = open_store()
    if store.load_cluster_run(args.run) is None:
        raise InvalidInputError(f"No cluster run {args.run!r}; list them with `python -m core cluster-runs`.")
    if args.show:
        store.set_shown_label_set(args.run, args.show)
    sets = store.list_label_sets(args.run)
    records = [
        {
            "label_set": str(name),
            "n_labels": int(n_labels),
            "n_edited": int(n_edited),
            "shown": bool(shown),
            "updated_at": str(updated),
        }
        for name, n_labels, n_edited, shown, updated in zip(
            sets["label_set"], sets["n_labels"].tolist(), sets["n_edited"].tolist(), sets["shown"], sets["updated_at"]
        )
    ]
    payload = {"run_id": args.run, "shown_label_set": store.shown_label_set(args.run), "label_sets": records}

    def human() -> None:
        if not records:
            print(f"run {args.run} has no labels yet; compute some with `python -m core labels --run {args.run} …`")
        for r in records:
            mark = "*" if r["shown"] else " "
            print(f"{mark} {r['label_set']:<12} {r['n_labels']:>4} labels, {r['n_edited']} edited by a user")

    emit(args, payload, human)
    return 0


def cmd_diagnostics(args: argparse.Namespace) -> int:
    from core.diagnostics import compare_encoders, dataset_diagnostics

    store = open_store()
    store.require_dataset(args.dataset)
    keys = [key_from_args(store, args)] if args.encoder else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = dataset_diagnostics(store, args.dataset, keys)
        comparison = compare_encoders(store, args.dataset) if args.compare else None
    payload: dict[str, Any] = {
        "dataset": args.dataset,
        "encoders": table.to_dict("records"),
        "warnings": _notes(caught),
    }
    if comparison is not None:
        payload["comparison"] = comparison.to_dict("records")

    def human() -> None:
        print(table.to_string(index=False))
        if comparison is not None:
            print()
            print(comparison.to_string(index=False))

    emit(args, payload, human)
    return 0


def cmd_bias(args: argparse.Namespace) -> int:
    from core.bias_runs import folder_options, folder_test, run_battery

    store = open_store()
    key = key_from_args(store, args)
    paths = store.dataset_paths(args.dataset)
    try:
        test = folder_test(
            paths, f"{args.x} vs {args.y}", args.x, args.y, args.a, args.b, subfolders=not args.no_subfolders
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"{exc} Folders: {', '.join(folder_options(paths))}") from exc
    outcome = run_battery(
        store, args.dataset, [key], [test], n_samples=args.n_samples, seed=args.seed, alternative=args.alternative
    ).outcomes[0]
    result, (low, high) = outcome.result, outcome.ci
    payload = {
        "dataset": args.dataset,
        "encoder": key,
        "alternative": result.alternative,
        "sets": {
            role: {"folder": getattr(args, role), "set": test.roles[role], "n": len(hashes)}
            for role, hashes in test.sets().items()
        },
        "effect_size": result.effect_size,
        "ci95": [low, high],
        "p_value": result.p_value,
        "exact": result.exact,
        "n_permutations": result.n_permutations,
        "statistic": result.statistic,
        "min_p_value": result.min_p_value,
    }
    emit(
        args,
        payload,
        lambda: print(
            f"d = {result.effect_size:.3f} (95% CI {low:.3f}..{high:.3f}), p = {result.p_value:.4g} "
            f"({'exact' if result.exact else 'sampled'}, {result.n_permutations} partitions, "
            f"min p {result.min_p_value:.3g})"
        ),
    )
    return 0


def _notes(caught: list[warnings.WarningMessage]) -> list[str]:
    from core.cluster import ClusteringWarning
    from core.concepts import LabellingWarning
    from core.diagnostics import DiagnosticsWarning

    ours = (ClusteringWarning, LabellingWarning, DiagnosticsWarning)
    return list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ours)))


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"
