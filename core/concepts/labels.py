"""Cluster labels, the labeller registry and ``label_run``, which computes, stores and returns labels.

A labeller is ``fn(store, run, **options) -> list[ClusterLabel]`` registered with
``@register_labeller("name")``; other packages add theirs through the ``replens.labellers``
entry-point group (see :mod:`core.registry`). A name a user typed is never overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    """One cluster's label and the ranked candidates it was chosen from (each with a ``score``)."""

    cluster: int
    label: str
    method: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    edited: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Labeller = Callable[..., list[ClusterLabel]]
LABELLERS: Registry[Labeller] = Registry("labeller", warning=LabellingWarning)


def register_labeller(name: str) -> Callable[[Labeller], Labeller]:
    """Decorator: ``fn(store, run, **options) -> list[ClusterLabel]`` becomes labeller ``name``."""
    return LABELLERS.decorator(name)


def labelling_methods() -> list[str]:
    return LABELLERS.names()


def label_run(store: Store, run_id: str, method: str, *, save: bool = True, **options: Any) -> list[ClusterLabel]:
    """Label every cluster of a stored run with ``method`` and store the labels.

    Returns one ``ClusterLabel`` per labelled cluster; where a user already named a cluster,
    that name is returned (``edited=True``, ``method='user'``) and is not overwritten.
    ``options`` go to the labeller (see ``clip_labeller``, ``text_labeller``, ``visual_labeller``).
    """
    labeller = LABELLERS.get(method)
    if labeller is None:
        raise InvalidInputError(f"Unknown labelling method {method!r}; choose one of {', '.join(LABELLERS.names())}.")
    run = load_run(store, run_id)
    computed = labeller(store, run, **options)
    if save:
        store.save_cluster_labels(
            run_id,
            [
                {"cluster": c.cluster, "label": c.label, "method": c.method, "candidates": c.candidates}
                for c in computed
            ],
        )
    stored = store.load_cluster_labels(run_id)
    user = {
        int(cluster): label
        for cluster, label, edited in zip(stored["cluster"], stored["label"], stored["edited"])
        if edited
    }
    return [
        ClusterLabel(c.cluster, user[c.cluster], "user", c.candidates, True) if c.cluster in user else c
        for c in computed
    ]


def effective_labels(store: Store, run_id: str) -> dict[int, str]:
    """cluster → the label to show (a user's edit, else the last computed label)."""
    frame = store.load_cluster_labels(run_id)
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
