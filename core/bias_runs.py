"""Run iEAT batteries on stored embeddings: the glue between the store and ``core.bias``.

A *battery* is a list of tests, each naming four stimulus sets (X, Y, A, B) by image
content hash. Sets come from dataset folders, clusters, map selections or uploads; the
runner looks the vectors up per encoder, runs ``bias.association_test`` plus a bootstrap CI,
and Holm-corrects the p-values across every row of the resulting table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core import bias
from core.errors import InvalidInputError
from core.store import Store

ROLES = ("x", "y", "a", "b")


@dataclass(frozen=True)
class BatteryTest:
    """One association test: a name and four lists of content hashes."""

    name: str
    x: tuple[str, ...]
    y: tuple[str, ...]
    a: tuple[str, ...]
    b: tuple[str, ...]
    roles: dict[str, str] = field(default_factory=dict)  # role -> what the user picked (folder, cluster…)

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


def folder_hashes(images: pd.DataFrame, folder: str) -> tuple[str, ...]:
    """Hashes of the images whose folder labels contain ``folder`` (any level, or a/b).

    Pass ``store.dataset_paths(dataset)`` so that every path of an image counts."""
    parts = tuple(p for p in folder.strip("/").split("/") if p)
    if not parts:
        raise InvalidInputError("An empty folder name selects nothing; pick a sub-folder of the dataset.")

    def inside(labels: Sequence[str]) -> bool:
        labels = tuple(labels)
        return any(labels[i : i + len(parts)] == parts for i in range(len(labels) - len(parts) + 1))

    # ``images`` may list every path: an image filed in two folders belongs to both sets, once.
    return tuple(dict.fromkeys(images.loc[images["labels"].map(inside), "content_hash"]))


def folder_test(images: pd.DataFrame, name: str, x: str, y: str, a: str, b: str) -> BatteryTest:
    picked = {"x": x, "y": y, "a": a, "b": b}
    sets = {role: folder_hashes(images, folder) for role, folder in picked.items()}
    for role, hashes in sets.items():
        if not hashes:
            raise InvalidInputError(f"{name}: set {role.upper()} (folder {picked[role]!r}) has no images.")
    return BatteryTest(name, **sets, roles={r: f"folder {f}" for r, f in picked.items()})


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
            "Extract the dataset with that encoder first (Data page or `python -m core embed`)."
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
    """Every folder (and nested folder path) that holds images, with its image count, sorted."""
    counts: dict[str, int] = {}
    for labels in images["labels"]:
        labels = tuple(labels)
        for depth in range(1, len(labels) + 1):
            path = "/".join(labels[:depth])
            counts[path] = counts.get(path, 0) + 1
    return sorted(counts)


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
