"""The ImageNet vocabulary as a per-image field: each image's top-1 class and the WordNet concepts above it.

Every image of a dataset gets its top-1 ImageNet-1k class (name, synset id) and that class's
probability from EfficientNet-Lite0's head applied to the image's stored Lite0 vectors
(:func:`core.concepts.imagenet.image_probabilities`, which embeds the images the dataset lacks
once). A WordNet 3.0 concept (:func:`core.concepts.imagenet.imagenet_tree`) then names a set of
images — those whose top-1 class is under it — which the Map colours by and the Bias page uses
as a stimulus set ("all images whose top class is under vehicle").

- :func:`image_top_classes`: the per-image table (``content_hash``, ``class_index``, ``synset``,
  ``class``, ``probability``).
- :func:`images_under`: content hashes whose top-1 class is under a concept, named by synset id
  (``n04524313``) or by a WordNet word (``"vehicle"``, ``"motor vehicle"``; see
  :func:`resolve_concept` for ambiguous words).
- :func:`concept_options`: the concepts covering at least ``min_images`` images, with counts (pickers).
- :func:`concept_groups`: per image, the most specific concept that covers at least ``min_images``
  images (a coarser colouring than the top-1 class: breeds merge into "dog" when each is rare).

The pure functions (``concept_counts``, ``concept_groups``, ``options_from_classes``,
``hashes_under``) take a :class:`~core.concepts.imagenet.ConceptTree` and class indices, so tests
feed them a hand-made hierarchy.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.concepts.imagenet import LABELLER_ENCODER, ConceptTree, image_probabilities, imagenet_tree
from core.concepts.wordnet import WordNet, parse_wnid
from core.errors import InvalidInputError
from core.store import Store

CLASS_COLUMNS = ("content_hash", "class_index", "synset", "class", "probability")
OPTION_COLUMNS = ("synset", "concept", "n_images", "n_classes", "kind")
_WNID = re.compile(r"^n\d{8}$")


def lite0_key() -> str:
    """The store key of the Lite0 vectors the ImageNet head reads (without loading the model)."""
    from core.encoders import get_spec
    from core.keys import format_key

    spec = get_spec(LABELLER_ENCODER)
    return format_key(spec.id, spec.version, spec.default_layer, spec.default_pooling)


def missing_lite0_images(store: Store, dataset: str) -> int:
    """How many of the dataset's distinct images have no Lite0 vector yet (their classes need one)."""
    return len(store.pending_images(dataset, lite0_key()))


def concept_names(tree: ConceptTree) -> tuple[str, ...]:
    """What each node is called in legends and pickers: its WordNet word, plus its synset id when
    another node of the tree has the same word (ImageNet has two "crane"s and two "maillot"s)."""
    seen: dict[str, int] = {}
    for name in tree.names:
        seen[name] = seen.get(name, 0) + 1
    return tuple(f"{n} ({s})" if seen[n] > 1 else n for n, s in zip(tree.names, tree.nodes))


def top_class_frame(probabilities: np.ndarray, tree: ConceptTree) -> pd.DataFrame:
    """Per row of (n, n_leaves) ``probabilities``: its top-1 class (index, synset, name) and probability."""
    P = np.asarray(probabilities)
    if P.ndim != 2 or P.shape[1] != len(tree.leaves):
        raise InvalidInputError(f"expected (n, {len(tree.leaves)}) probabilities, got shape {P.shape}")
    index = P.argmax(axis=1) if len(P) else np.zeros(0, dtype=np.int64)
    names = concept_names(tree)
    return pd.DataFrame(
        {
            "class_index": index.astype(np.int64),
            "synset": [tree.leaves[k] for k in index],
            "class": [names[tree.leaf_rows[k]] for k in index],
            "probability": P[np.arange(len(P)), index].astype(np.float64) if len(P) else np.zeros(0),
        }
    )


def image_top_classes(
    store: Store,
    dataset: str,
    *,
    encoder: Any = None,
    device: str = "cpu",
    embed: bool = True,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
    tree: ConceptTree | None = None,
) -> pd.DataFrame:
    """One row per distinct image of ``dataset`` with a Lite0 vector: ``content_hash``, ``class_index``
    (ImageNet-1k class index), ``synset``, ``class`` (its name) and ``probability`` (of that class).

    Args:
        encoder: a loaded EfficientNet-Lite0 (default: ``efficientnet-lite0`` on ``device``).
        embed: embed the images that have no Lite0 vector yet first (else
            :class:`~core.errors.EmbeddingsNotFoundError` naming the command that does).
        progress: called with (done, total) while embedding, as ``embed_dataset`` does.
    """
    tree = tree or imagenet_tree()
    if encoder is None:
        from core.encoders import load_encoder

        encoder = load_encoder(LABELLER_ENCODER, device)
    if embed and progress is not None and store.pending_images(dataset, encoder.key):
        from core.extract import embed_dataset

        embed_dataset(store, dataset, encoder, workers=workers, progress=progress)
    hashes, probabilities = image_probabilities(store, dataset, encoder, embed=embed, workers=workers)
    frame = top_class_frame(probabilities, tree)
    frame.insert(0, "content_hash", list(hashes))
    return frame.loc[:, list(CLASS_COLUMNS)]


def concept_counts(tree: ConceptTree, class_index: np.ndarray) -> np.ndarray:
    """Per node of ``tree``, how many images have their top-1 class under it."""
    per_leaf = np.bincount(np.asarray(class_index, dtype=np.int64), minlength=len(tree.leaves))
    return np.asarray(tree.members.astype(np.int64) @ per_leaf)


def options_from_classes(classes: pd.DataFrame, tree: ConceptTree, min_images: int = 1) -> pd.DataFrame:
    """The nodes covering at least ``min_images`` images of ``classes`` (see :func:`concept_options`)."""
    if min_images < 1:
        raise InvalidInputError(f"min_images={min_images} should be >= 1")
    counts = concept_counts(tree, classes["class_index"].to_numpy())
    keep = np.flatnonzero(counts >= min_images)
    n_under = tree.n_under
    leaf_nodes = set(tree.leaf_rows)
    not_leaf = np.array([s not in leaf_nodes for s in keep], dtype=bool)
    names = concept_names(tree)
    order = keep[np.lexsort((keep, not_leaf, n_under[keep], -counts[keep]))]
    return pd.DataFrame(
        {
            "synset": [tree.nodes[s] for s in order],
            "concept": [names[s] for s in order],
            "n_images": counts[order].astype(np.int64),
            "n_classes": n_under[order].astype(np.int64),
            "kind": ["class" if s in leaf_nodes else "concept" for s in order],
        },
        columns=list(OPTION_COLUMNS),
    )


def concept_options(
    store: Store,
    dataset: str,
    min_images: int = 1,
    *,
    classes: pd.DataFrame | None = None,
    tree: ConceptTree | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Concepts (ImageNet classes and the WordNet concepts above them) under which at least
    ``min_images`` images of ``dataset`` have their top-1 class, for pickers.

    Columns: ``synset``, ``concept`` (display name), ``n_images``, ``n_classes`` (ImageNet classes
    under it) and ``kind`` ("class" or "concept"); most images first, then the more specific.
    ``classes``: :func:`image_top_classes`'s table when already computed; else it is computed with ``kwargs``.
    """
    tree = tree or imagenet_tree()
    if classes is None:
        classes = image_top_classes(store, dataset, tree=tree, **kwargs)
    return options_from_classes(classes, tree, min_images)


def hashes_under(classes: pd.DataFrame, tree: ConceptTree, node: int) -> tuple[str, ...]:
    """Content hashes (in ``classes`` order) whose top-1 class is under node ``node`` of ``tree``."""
    under = tree.members[node, classes["class_index"].to_numpy(dtype=np.int64)]
    return tuple(classes["content_hash"].to_numpy()[under].tolist())


def images_under(
    store: Store,
    dataset: str,
    concept: str,
    *,
    classes: pd.DataFrame | None = None,
    tree: ConceptTree | None = None,
    **kwargs: Any,
) -> tuple[str, ...]:
    """Content hashes of the images of ``dataset`` whose top-1 ImageNet class is under ``concept``
    (a synset id or a WordNet word; see :func:`resolve_concept`)."""
    tree = tree or imagenet_tree()
    node = resolve_concept(tree, concept)
    if classes is None:
        classes = image_top_classes(store, dataset, tree=tree, **kwargs)
    return hashes_under(classes, tree, node)


def concept_groups(tree: ConceptTree, class_index: np.ndarray, min_images: int = 1) -> np.ndarray:
    """Per image, the node of the most specific concept (fewest classes under it, then most images,
    then the class itself, then first in id order) above its top-1 class that covers at least
    ``min_images`` of the images.

    With ``min_images`` 1 every image keeps its class; raising it merges rare classes into the
    concepts above them. When no node covers enough images (``min_images`` above the count),
    the image gets the node covering the most."""
    if min_images < 1:
        raise InvalidInputError(f"min_images={min_images} should be >= 1")
    class_index = np.asarray(class_index, dtype=np.int64)
    counts = concept_counts(tree, class_index)
    n_under = tree.n_under
    not_leaf = np.ones(len(tree.nodes), dtype=bool)
    not_leaf[list(tree.leaf_rows)] = False
    out = np.empty(len(class_index), dtype=np.int64)
    for k in np.unique(class_index):
        above = np.flatnonzero(tree.members[:, k])
        enough = above[counts[above] >= min_images]
        if len(enough) == 0:
            chosen = int(above[np.argmax(counts[above])])
        else:
            # A class before a concept above only it ("moped" before "minibike"): the same images, more specific.
            order = np.lexsort((enough, not_leaf[enough], -counts[enough], n_under[enough]))
            chosen = int(enough[order[0]])
        out[class_index == k] = chosen
    return out


def _norm(word: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", word.strip().lower())).strip()


@functools.lru_cache(maxsize=2)
def _words_of_nodes(data_noun: Path, nodes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Normalised WordNet word → the tree nodes (row numbers) that have it among their synonyms."""
    wordnet = WordNet(data_noun)
    found: dict[str, list[int]] = {}
    for row, node in enumerate(nodes):
        for word in wordnet.synset(parse_wnid(node)).words:
            found.setdefault(_norm(word), []).append(row)
    return {w: tuple(dict.fromkeys(rows)) for w, rows in found.items()}


def resolve_concept(tree: ConceptTree, concept: str, wordnet: WordNet | None = None) -> int:
    """The node of ``tree`` that ``concept`` names: a synset id ("n04524313"), or a word of a
    node's WordNet synset ("vehicle", "Motor_vehicle", "feline"; case, spaces, "_" and "-" ignored).

    A word several nodes share resolves to the noun sense covering the most ImageNet classes;
    when two senses tie, it is refused (:class:`InvalidInputError`) with the candidates listed.
    """
    text = str(concept).strip()
    if not text:
        raise InvalidInputError("Name a concept: a WordNet word such as 'vehicle' or a synset id such as 'n04524313'.")
    if _WNID.match(text.lower()):
        if text.lower() not in tree.nodes:
            raise InvalidInputError(
                f"Synset {text} is neither an ImageNet-1k class nor a WordNet concept above one; "
                "pick a concept from the list of concepts (concept_options)."
            )
        return tree.nodes.index(text.lower())
    wordnet = wordnet or WordNet.find()
    words = _words_of_nodes(wordnet.path, tree.nodes)
    rows = words.get(_norm(text), ())
    if not rows:
        close = difflib.get_close_matches(_norm(text), list(words), n=5, cutoff=0.75)
        hint = f" Close words: {', '.join(close)}." if close else ""
        raise InvalidInputError(
            f"No ImageNet class or WordNet concept above one is called {text!r}.{hint} "
            "Name a WordNet noun (e.g. 'vehicle', 'dog') or give a synset id."
        )
    n_under = tree.n_under
    best = max(int(n_under[r]) for r in rows)
    top = [r for r in rows if int(n_under[r]) == best]
    if len(top) > 1:
        listed = "; ".join(
            f"{tree.nodes[r]} ({tree.names[r]}: {wordnet.synset(parse_wnid(tree.nodes[r])).gloss[:60]}, "
            f"{int(n_under[r])} classes)"
            for r in rows
        )
        raise InvalidInputError(
            f"{text!r} names {len(rows)} concepts that cover equally many ImageNet classes: {listed}. "
            "Give the synset id of the one you mean."
        )
    return top[0]
