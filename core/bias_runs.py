"""Run iEAT batteries on stored embeddings: the glue between the store and ``core.bias``.

A *battery* is a list of tests, each naming four stimulus sets (X, Y, A, B) by image
content hash. Sets come from dataset folders, clusters, map selections, ImageNet concepts
("images whose top-1 class is under vehicle", :func:`concept_sets`) or uploads; the
runner looks the vectors up per encoder, runs ``bias.association_test`` plus a bootstrap CI,
and Holm-corrects the p-values across every row of the resulting table (the family is all
tests x encoders of the battery).

A folder set is one folder path from the dataset's top level ("military/vehicles"), with or
without its sub-folders: never a folder of the same name elsewhere. The four sets of a test
must not share an image (X = Y included); :class:`BatteryTest` refuses them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core import bias
from core.errors import InvalidInputError
from core.store import Store

if TYPE_CHECKING:
    from core.concepts.imagenet import ConceptTree

ROLES = ("x", "y", "a", "b")
CONCEPT_SET_PREFIX = "top class under "
MIN_CONCEPT_IMAGES = 2  # a one-image set has no spread
TOP_LEVEL = "(top level)"  # the images directly in the dataset's top folder, as the Map names them


@dataclass(frozen=True)
class BatteryTest:
    """One association test: a name and four lists of content hashes."""

    name: str
    x: tuple[str, ...]
    y: tuple[str, ...]
    a: tuple[str, ...]
    b: tuple[str, ...]
    roles: dict[str, str] = field(default_factory=dict)  # role -> what the user picked (folder, cluster…)

    def __post_init__(self) -> None:
        check_disjoint(self.name, self.sets(), self.roles)

    def sets(self) -> dict[str, tuple[str, ...]]:
        return {"x": self.x, "y": self.y, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class BatteryOutcome:
    test: str
    encoder_key: str
    result: bias.AssociationResult
    ci: tuple[float, float]
    drivers: pd.DataFrame  # the target images with the largest |s(w)|


@dataclass(frozen=True)
class BatteryResult:
    table: pd.DataFrame  # one row per (test, encoder), Holm-adjusted p included
    outcomes: list[BatteryOutcome]


def folder_parts(folder: str) -> tuple[str, ...]:
    """A folder path from the dataset's top level as its parts ("military/vehicles" -> two parts);
    :data:`TOP_LEVEL` (or "") is the top level itself."""
    parts = tuple(p for p in folder.replace("\\", "/").strip().strip("/").split("/") if p)
    if parts == (TOP_LEVEL,):
        return ()
    if any(p in (".", "..") for p in parts):
        raise InvalidInputError(f"Folder {folder!r}: give a folder path from the dataset's top level, without . or ...")
    return parts


def folder_hashes(images: pd.DataFrame, folder: str, *, subfolders: bool = True) -> tuple[str, ...]:
    """Hashes of the images in exactly the folder path ``folder`` (from the dataset's top level,
    e.g. "military/vehicles"), and with ``subfolders`` in every folder below it too.

    A folder of the same name elsewhere ("vehicles" vs "military/vehicles") is another set.
    :data:`TOP_LEVEL` selects the images directly at the top level (never its sub-folders:
    that would be the whole dataset). Pass ``store.dataset_paths(dataset)`` so that every path
    of an image counts: an image filed in two folders belongs to both sets, once.
    """
    parts = folder_parts(folder)
    depth = len(parts)
    below = subfolders and depth > 0

    def inside(labels: Sequence[str]) -> bool:
        labels = tuple(labels)
        return labels[:depth] == parts and (len(labels) == depth or (below and len(labels) > depth))

    return tuple(dict.fromkeys(images.loc[images["labels"].map(inside), "content_hash"]))


def folder_counts(images: pd.DataFrame, *, subfolders: bool = True) -> dict[str, int]:
    """Distinct images per folder path of :func:`folder_options`: ``len(folder_hashes(images, f, subfolders=…))``.

    With ``subfolders`` a top-level folder's count is what the Map's legend shows for it
    ("By folder", the outermost folder), unless an image is stored at paths in two folders:
    it counts in both here, under its first path on the Map."""
    members: dict[str, set[str]] = {}
    for labels, content_hash in zip(images["labels"], images["content_hash"]):
        labels = tuple(labels)
        if not labels:
            members.setdefault(TOP_LEVEL, set()).add(content_hash)
            continue
        for depth in range(1 if subfolders else len(labels), len(labels) + 1):
            members.setdefault("/".join(labels[:depth]), set()).add(content_hash)
    return {folder: len(members.get(folder, ())) for folder in folder_options(images)}


def describe_folder(folder: str, subfolders: bool = True) -> str:
    """How a folder set reads in tables and messages: which folder, and whether its sub-folders count."""
    if not folder_parts(folder):
        return f"folder {TOP_LEVEL} (images at the top level only)"
    path = "/".join(folder_parts(folder))
    return f"folder {path} " + ("(with sub-folders)" if subfolders else "(this folder only, no sub-folders)")


def folder_test(
    images: pd.DataFrame,
    name: str,
    x: str,
    y: str,
    a: str,
    b: str,
    *,
    subfolders: bool | Mapping[str, bool] = True,
) -> BatteryTest:
    """A test whose four sets are folder paths of ``images`` (see :func:`folder_hashes`).

    ``subfolders``: one choice for all four sets, or one per role ("x", "y", "a", "b"; a role
    left out includes its sub-folders). Empty or shared sets are refused (:class:`InvalidInputError`)."""
    picked = {"x": x, "y": y, "a": a, "b": b}
    below = {r: subfolders if isinstance(subfolders, bool) else bool(subfolders.get(r, True)) for r in ROLES}
    sets = {role: folder_hashes(images, folder, subfolders=below[role]) for role, folder in picked.items()}
    for role, hashes in sets.items():
        if not hashes:
            raise InvalidInputError(
                f"{name}: set {role.upper()} (folder {picked[role]!r}) has no images."
                + _folder_hint(images, picked[role], below[role])
            )
    roles = {r: describe_folder(f, below[r]) for r, f in picked.items()}
    return make_test(name, sets, roles, images)


def _folder_hint(images: pd.DataFrame, folder: str, subfolders: bool) -> str:
    parts = folder_parts(folder)
    if not parts:
        return ""
    if not subfolders and folder_hashes(images, folder, subfolders=True):
        return " Its images are all in sub-folders: include sub-folders, or pick one of them."
    options = folder_options(images)
    deeper = [f for f in options if f.split("/")[-len(parts) :] == list(parts)]
    if deeper:
        return f" Folder paths start at the dataset's top level: did you mean {', '.join(deeper[:5])}?"
    return ""


def make_test(
    name: str,
    sets: Mapping[str, Sequence[str]],
    roles: Mapping[str, str],
    images: pd.DataFrame | None = None,
) -> BatteryTest:
    """A :class:`BatteryTest` from four hash lists; shared images are refused, named by path
    when ``images`` (with content_hash and rel_path columns) is given."""
    hashes = {role: tuple(dict.fromkeys(sets[role])) for role in ROLES}
    check_disjoint(name, hashes, roles, images)
    return BatteryTest(name, **hashes, roles=dict(roles))


def check_disjoint(
    name: str,
    sets: Mapping[str, Sequence[str]],
    roles: Mapping[str, str] | None = None,
    images: pd.DataFrame | None = None,
) -> None:
    """Refuse a test whose sets share an image (X = Y included): an image in X and Y cancels out
    of S, and one in a target and an attribute set adds cos(w, w) = 1 to its own association."""
    roles = roles or {}
    path_of: dict[str, str] = {}
    if images is not None and "rel_path" in images.columns:
        path_of = dict(zip(images["content_hash"][::-1], images["rel_path"][::-1]))  # first path wins
    for first, second in itertools.combinations(ROLES, 2):
        shared = [h for h in dict.fromkeys(sets[first]) if h in set(sets[second])]
        if not shared:
            continue
        one, two = (f"{r.upper()} ({roles[r]})" if roles.get(r) else r.upper() for r in (first, second))
        same = set(sets[first]) == set(sets[second])
        examples = ", ".join(path_of.get(h, h[:12]) for h in shared[:3])
        what = (
            f"{one} and {two} are the same {len(shared)} image(s)"
            if same
            else f"{one} and {two} share {len(shared)} image(s), e.g. {examples}"
        )
        raise InvalidInputError(
            f"{name}: {what}. Each image may belong to one set only: pick sets that do not overlap "
            "(for nested folders, leave out the sub-folders or pick sibling folders)."
        )


def run_battery(
    store: Store,
    dataset: str,
    encoder_keys: Sequence[str],
    tests: Sequence[BatteryTest],
    *,
    n_samples: int = bias.DEFAULT_N_SAMPLES,
    seed: int | None = 0,
    n_drivers: int = 8,
    alternative: bias.Alternative = "greater",
    progress: Callable[[int, int], None] | None = None,
) -> BatteryResult:
    """Every test on every encoder; p-values Holm-corrected across the whole table."""
    if not tests or not encoder_keys:
        raise InvalidInputError("Pick at least one test and one encoder.")
    outcomes: list[BatteryOutcome] = []
    total, done = len(tests) * len(encoder_keys), 0
    for key in encoder_keys:
        images, vectors = store.load_embeddings(dataset, key)
        row_of = {h: i for i, h in enumerate(images["content_hash"])}
        for test in tests:
            outcomes.append(_run_one(test, key, images, vectors, row_of, n_samples, seed, n_drivers, alternative))
            done += 1
            if progress:
                progress(done, total)
    return BatteryResult(_table(outcomes, tests), outcomes)


def _run_one(
    test: BatteryTest,
    key: str,
    images: pd.DataFrame,
    vectors: np.ndarray,
    row_of: dict[str, int],
    n_samples: int,
    seed: int | None,
    n_drivers: int,
    alternative: bias.Alternative,
) -> BatteryOutcome:
    rows = {role: _rows(test, role, hashes, row_of, key) for role, hashes in test.sets().items()}
    sets = {role: vectors[idx] for role, idx in rows.items()}
    result = bias.association_test(
        sets["x"], sets["y"], sets["a"], sets["b"], n_samples=n_samples, seed=seed, alternative=alternative
    )
    ci = bias.bootstrap_effect_size_ci(sets["x"], sets["y"], sets["a"], sets["b"], seed=seed)
    drivers = _drivers(images, rows, result, n_drivers)
    return BatteryOutcome(test.name, key, result, ci, drivers)


def _rows(test: BatteryTest, role: str, hashes: Sequence[str], row_of: dict[str, int], key: str) -> np.ndarray:
    missing = [h for h in hashes if h not in row_of]
    if missing:
        raise InvalidInputError(
            f"{test.name}: {len(missing)} image(s) of set {role.upper()} have no embedding under {key}. "
            "Extract the dataset with that encoder first (Data page or `python -m core embed`).",
            page_message=f"{test.name}: {len(missing)} image(s) of set {role.upper()} have no embedding under "
            f"{key}. Extract the dataset with that encoder on the Data page first.",
        )
    if not hashes:
        raise InvalidInputError(f"{test.name}: set {role.upper()} is empty.")
    return np.array([row_of[h] for h in hashes], dtype=np.int64)


def _drivers(images: pd.DataFrame, rows: dict[str, np.ndarray], result: bias.AssociationResult, n: int) -> pd.DataFrame:
    """Target images whose association s(w) is largest in magnitude: what drives d."""
    frame = pd.concat(
        [
            images.iloc[rows["x"]][["content_hash", "rel_path", "source"]].assign(set="X", score=result.x_scores),
            images.iloc[rows["y"]][["content_hash", "rel_path", "source"]].assign(set="Y", score=result.y_scores),
        ],
        ignore_index=True,
    )
    order = np.argsort(-np.abs(frame["score"].to_numpy()), kind="stable")
    return frame.iloc[order[:n]].reset_index(drop=True)


def _table(outcomes: Sequence[BatteryOutcome], tests: Sequence[BatteryTest]) -> pd.DataFrame:
    sizes = {t.name: {role: len(h) for role, h in t.sets().items()} for t in tests}
    rows = [
        {
            "test": o.test,
            "encoder": o.encoder_key,
            "effect_size": o.result.effect_size,
            "ci_low": o.ci[0],
            "ci_high": o.ci[1],
            "p_value": o.result.p_value,
            "p_holm": np.nan,
            "exact": o.result.exact,
            "n_permutations": o.result.n_permutations,
            "min_p_value": o.result.min_p_value,
            **{f"n_{role}": sizes[o.test][role] for role in ROLES},
        }
        for o in outcomes
    ]
    table = pd.DataFrame(rows)
    table["p_holm"] = bias.holm_correction(table["p_value"].to_numpy())
    return table


def folder_options(images: pd.DataFrame) -> list[str]:
    """Every folder path that holds images (directly or below it), sorted, as full paths from the
    dataset's top level ("military/vehicles"); :data:`TOP_LEVEL` first when images sit there."""
    paths: set[str] = set()
    top = False
    for labels in images["labels"]:
        labels = tuple(labels)
        top = top or not labels
        paths.update("/".join(labels[:depth]) for depth in range(1, len(labels) + 1))
    return [TOP_LEVEL] * top + sorted(paths)


def cluster_sets(store: Store, run_id: str) -> dict[str, tuple[str, ...]]:
    """The clusters of a stored run as candidate stimulus sets, named "cluster N · label".

    Noise (-1) is left out: it is not a group of similar images.
    """
    stored = store.load_cluster_run(run_id)
    if stored is None:
        raise InvalidInputError(f"No cluster run {run_id!r}; run a clustering on the Clusters page first.")
    _, hashes, labels = stored
    named = store.load_cluster_labels(run_id)
    names = dict(zip(named["cluster"].astype(int), named["label"]))
    sets: dict[str, tuple[str, ...]] = {}
    for cluster in sorted({int(c) for c in labels} - {-1}):
        members = tuple(h for h, c in zip(hashes, labels) if c == cluster)
        sets[f"cluster {cluster} · {names.get(cluster, 'unnamed')}"] = members
    return sets


def concept_sets(
    store: Store,
    dataset: str,
    *,
    classes: pd.DataFrame | None = None,
    tree: ConceptTree | None = None,
    min_images: int = MIN_CONCEPT_IMAGES,
    **kwargs: Any,
) -> dict[str, tuple[str, ...]]:
    """ImageNet concepts as candidate stimulus sets, named "top class under vehicle": the images of
    ``dataset`` whose top-1 ImageNet class (EfficientNet-Lite0's head) is under the WordNet concept.

    Concepts holding fewer than ``min_images`` images are left out, and so are those holding every
    classified image (no other set could be disjoint from them). Most images first, as
    :func:`core.concepts.image_classes.options_from_classes` orders them. ``classes``: the table of
    :func:`core.concepts.image_classes.image_top_classes` when already computed; else it is computed
    with ``kwargs`` (which embed the images that lack a Lite0 vector unless ``embed=False``).
    """
    from core.concepts.image_classes import hashes_under, image_top_classes, options_from_classes
    from core.concepts.imagenet import imagenet_tree

    tree = tree or imagenet_tree()
    if classes is None:
        classes = image_top_classes(store, dataset, tree=tree, **kwargs)
    options = options_from_classes(classes, tree, min_images)
    options = options[options["n_images"] < len(classes)]
    row = {node: i for i, node in enumerate(tree.nodes)}
    return {
        f"{CONCEPT_SET_PREFIX}{name}": hashes_under(classes, tree, row[synset])
        for synset, name in zip(options["synset"], options["concept"])
    }
