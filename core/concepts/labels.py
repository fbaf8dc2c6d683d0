"""Cluster labels, the labeller registry and ``label_run``, which computes, stores and returns labels.

A labeller is ``fn(store, run, **options) -> list[ClusterLabel]`` registered with
``@register_labeller("name")``; other packages add theirs through the ``replens.labellers``
entry-point group (see :mod:`core.registry`). A name a user typed is never overwritten.

Each method's labels are a *label set* of the run (named by the method): computing visual labels
leaves the text labels as they are. A run shows one set (its names on the map, in pickers and
in snapshots); ``label_run`` shows the set it computed unless told not to. Names are unique
within a set (:func:`unique_labels`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from core.cluster import load_run
from core.errors import InvalidInputError
from core.registry import Registry
from core.store import Store

DEFAULT_TOP = 5


class LabellingWarning(UserWarning):
    """Labels were computed, but some clusters or images could not take part."""


@dataclass
class ClusterLabel:
    """One cluster's label and the ranked candidates it was chosen from (each with a ``score``).

    ``computed_label`` is the labeller's own label when ``label`` differs from it (made unique
    within its set, or renamed by a user); else None."""

    cluster: int
    label: str
    method: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    edited: bool = False
    computed_label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Labeller = Callable[..., list[ClusterLabel]]
LABELLERS: Registry[Labeller] = Registry("labeller", warning=LabellingWarning)


def register_labeller(name: str) -> Callable[[Labeller], Labeller]:
    """Decorator: ``fn(store, run, **options) -> list[ClusterLabel]`` becomes labeller ``name``."""
    return LABELLERS.decorator(name)


def labelling_methods() -> list[str]:
    return LABELLERS.names()


def label_run(
    store: Store,
    run_id: str,
    method: str,
    *,
    save: bool = True,
    label_set: str | None = None,
    show: bool = True,
    **options: Any,
) -> list[ClusterLabel]:
    """Label every cluster of a stored run with ``method`` and store the labels in their own set.

    The set is named ``label_set`` (default: the method); no other set is changed, and the set
    becomes the one the run shows unless ``show`` is false. Names come out unique within the set
    (see :func:`unique_labels`; the labeller's own label stays in ``computed_label``). Returns one
    ``ClusterLabel`` per labelled cluster; where a user already named a cluster in this set,
    that name is returned (``edited=True``, ``method='user'``) and is not overwritten.
    ``options`` go to the labeller (see ``clip_labeller``, ``text_labeller``, ``visual_labeller``).
    """
    labeller = LABELLERS.get(method)
    if labeller is None:
        raise InvalidInputError(f"Unknown labelling method {method!r}; choose one of {', '.join(LABELLERS.names())}.")
    target = label_set or method
    run = load_run(store, run_id)
    stored = store.load_cluster_labels(run_id, label_set=target)
    user = {
        int(cluster): str(label)
        for cluster, label, edited in zip(stored["cluster"], stored["label"], stored["edited"])
        if edited
    }
    fresh = labeller(store, run, **options)
    new_clusters = {c.cluster for c in fresh}
    # Names that stay in the set: the user's, and labels of clusters this computation leaves alone.
    kept = {
        **{int(c): str(label) for c, label in zip(stored["cluster"], stored["label"]) if int(c) not in new_clusters},
        **user,
    }
    computed = unique_labels([c for c in fresh if c.cluster not in user], kept)
    if save:
        store.save_cluster_labels(
            run_id,
            [
                {
                    "cluster": c.cluster,
                    "label": c.label,
                    "method": c.method,
                    "candidates": c.candidates,
                    "computed_label": c.computed_label or c.label,
                }
                for c in computed
            ],
            label_set=target,
            show=show,
        )
        if show and not computed and user:
            store.set_shown_label_set(run_id, target)
    by_cluster = {c.cluster: c for c in computed}
    return [
        ClusterLabel(c.cluster, user[c.cluster], "user", c.candidates, True, c.label)
        if c.cluster in user
        else by_cluster[c.cluster]
        for c in fresh
    ]


def unique_labels(labels: Sequence[ClusterLabel], taken: Mapping[int, str] | None = None) -> list[ClusterLabel]:
    """The labels with names unique within a set (ignoring case), deterministically.

    ``taken`` are names other clusters keep (a user's edits). Clusters are served in order of
    their top candidate's score (highest first, then by number): the strongest claim to a name
    keeps it. A later cluster whose name is taken gets its next-best candidate: the next
    candidate word when its label is one of its candidates (text, CLIP), else, when the label
    joins candidate words, the label followed by the next candidate word it does not contain
    (visual: "dark blue" -> "dark blue high-detail");
    when every candidate is taken, the name with " (2)", " (3)" … . The labeller's own label is
    kept in ``computed_label``. Input order is kept in the output.
    """
    used = {str(name).strip().casefold() for name in (taken or {}).values()}
    order = sorted(range(len(labels)), key=lambda i: (-_top_score(labels[i]), labels[i].cluster))
    named: dict[int, ClusterLabel] = {}
    for i in order:
        item = labels[i]
        name = next((n for n in _alternatives(item) if n.strip().casefold() not in used), None)
        if name is None:
            n = 2
            while f"{item.label} ({n})".casefold() in used:
                n += 1
            name = f"{item.label} ({n})"
        used.add(name.strip().casefold())
        named[i] = (
            item
            if name == item.label
            else ClusterLabel(item.cluster, name, item.method, item.candidates, item.edited, item.label)
        )
    return [named[i] for i in range(len(labels))]


def _top_score(label: ClusterLabel) -> float:
    try:
        score = float(label.candidates[0]["score"]) if label.candidates else 0.0
    except (KeyError, TypeError, ValueError):
        return 0.0
    return score if score == score else 0.0  # NaN ranks as 0


def _alternatives(label: ClusterLabel) -> list[str]:
    """The label, then its next-best distinctive names from its candidates (see unique_labels)."""
    words = [str(c["word"]) for c in label.candidates if isinstance(c, dict) and c.get("word")]
    if label.label in words:  # the label is one candidate (text, CLIP, ImageNet): the others, in rank order
        return [label.label, *(w for w in words if w != label.label)]
    inside = set(label.label.split())
    if inside and inside <= set(words):  # the label joins candidate words (visual): one more of them
        return [label.label, *(f"{label.label} {w}" for w in words if w not in inside)]
    return [label.label, *words]


def effective_labels(store: Store, run_id: str, label_set: str | None = None) -> dict[int, str]:
    """cluster → the label to show: from ``label_set``, by default the set the run shows (a
    user's edit in that set, else its computed label)."""
    frame = store.load_cluster_labels(run_id, label_set=label_set)
    return {int(c): str(label) for c, label in zip(frame["cluster"], frame["label"])}


def labels_frame(labels: Sequence[ClusterLabel]) -> pd.DataFrame:
    """ClusterLabels as a table (cluster, label, method, edited, top candidates as text)."""
    return pd.DataFrame(
        [
            {
                "cluster": c.cluster,
                "label": c.label,
                "method": c.method,
                "edited": c.edited,
                "candidates": ", ".join(f"{x['word']} ({x['score']:.3g})" for x in c.candidates),
            }
            for c in labels
        ],
        columns=["cluster", "label", "method", "edited", "candidates"],
    )
