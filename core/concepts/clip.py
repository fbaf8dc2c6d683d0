"""CLIP vocabulary labels, TAC-style (Li et al., ICML 2024): the ``clip`` labeller.

Nouns (``core/data/nouns.txt`` plus the user's words) are embedded with CLIP's text tower,
prompts averaged over a few templates; each noun goes to the cluster whose centre prefers it
most across clusters (softmax with temperature τ), so labels come out distinctive. Centres
are means of the run's images in the CLIP image space.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.arrays import as_matrix, l2_normalize
from core.cluster import NOISE, ClusterRun
from core.concepts.labels import DEFAULT_TOP, ClusterLabel, LabellingWarning, register_labeller
from core.errors import EmbeddingsNotFoundError, InvalidInputError
from core.fsutil import atomic_path
from core.keys import encoder_id_of, precision_of
from core.store import Store

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
VOCABULARY_FILE = DATA_DIR / "nouns.txt"
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a drawing of a {}.",
    "an illustration of a {}.",
)
# CLIP's logit scale is 100, i.e. a temperature of 0.01 on cosine similarities.
DEFAULT_TEMPERATURE = 0.01


def load_vocabulary(path: str | Path | None = None) -> list[str]:
    """Words of a vocabulary file (one per line, ``#`` comments), default ``core/data/nouns.txt``."""
    path = Path(path) if path is not None else VOCABULARY_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInputError(
            f"Cannot read vocabulary {path}: {exc}. Give a text file with one word per line."
        ) from exc
    return _unique(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def _unique(words: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for word in words:
        word = " ".join(str(word).split())
        if word and word.lower() not in seen:
            seen.add(word.lower())
            out.append(word)
    return out


def _unit(rows: np.ndarray, what: str) -> np.ndarray:
    """Unit rows in float64; a zero vector has no direction, so it is an error here."""
    return l2_normalize(as_matrix(rows, what=what, dtype=np.float64), zero_rows="raise", what=what, dtype=np.float64)


def tac_scores(
    centres: np.ndarray, word_vectors: np.ndarray, temperature: float = DEFAULT_TEMPERATURE
) -> tuple[np.ndarray, np.ndarray]:
    """(P, S): S[w, c] cosine of word w and centre c; P[w, c] = softmax over clusters of S[w, :] / τ."""
    if not temperature > 0:
        raise InvalidInputError(f"temperature={temperature!r} should be > 0 (0.01 matches CLIP's logit scale)")
    C, W = _unit(centres, "centres"), _unit(word_vectors, "word vectors")
    if C.shape[1] != W.shape[1]:
        raise InvalidInputError(
            f"centres have dim {C.shape[1]} but word vectors dim {W.shape[1]}; both must come from the same CLIP model"
        )
    S = W @ C.T
    logits = S / temperature
    logits -= logits.max(axis=1, keepdims=True)
    P = np.exp(logits)
    P /= P.sum(axis=1, keepdims=True)
    return P, S


def tac_labels(
    centres: np.ndarray,
    word_vectors: np.ndarray,
    words: Sequence[str],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    top: int = DEFAULT_TOP,
    shortlist: int = 50,
) -> list[list[dict[str, Any]]]:
    """Distinctive words per centre, TAC-style (pure function of vectors).

    Each word belongs to the centre where its cross-cluster softmax P[w, c] is largest; a
    centre's candidates are its own words among its ``shortlist`` most similar words, ranked
    by P[w, c] (ties: similarity). The shortlist keeps relevance: with few clusters a word far
    from every centre can still prefer one of them. When a centre owns fewer than ``top``
    words, its most probable remaining shortlist words fill the list. So top-1 labels
    differ between clusters unless a centre owns no word at all.

    Returns, per centre, up to ``top`` dicts ``{"word", "score" (= P), "similarity"}``.
    """
    if len(words) != len(word_vectors):
        raise InvalidInputError(f"{len(words)} words but {len(word_vectors)} word vectors")
    if top < 1 or shortlist < 1:
        raise InvalidInputError(f"top={top} and shortlist={shortlist} should be >= 1")
    P, S = tac_scores(centres, word_vectors, temperature)
    owner = P.argmax(axis=1)
    out = []
    for c in range(S.shape[1]):
        near = np.argsort(-S[:, c], kind="stable")[:shortlist]
        order = near[np.lexsort((-S[near, c], -P[near, c]))]
        owned = [w for w in order if owner[w] == c]
        rest = [w for w in order if owner[w] != c]
        chosen = (owned + rest)[:top]
        out.append(
            [
                {"word": words[w], "score": round(float(P[w, c]), 6), "similarity": round(float(S[w, c]), 6)}
                for w in chosen
            ]
        )
    return out


def argmax_labels(
    centres: np.ndarray, word_vectors: np.ndarray, words: Sequence[str], *, top: int = DEFAULT_TOP
) -> list[list[dict[str, Any]]]:
    """Baseline: each centre's most similar words (repeats generic words across clusters)."""
    _, S = tac_scores(centres, word_vectors)
    return [
        [
            {"word": words[w], "score": round(float(S[w, c]), 6), "similarity": round(float(S[w, c]), 6)}
            for w in np.argsort(-S[:, c], kind="stable")[:top]
        ]
        for c in range(S.shape[1])
    ]


_TEXT_CACHE: dict[str, np.ndarray] = {}


def embed_words(
    encoder: Any,
    words: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Unit word vectors: each word's prompt vectors (one per template) normalised, averaged, renormalised.

    Cached in memory and, with ``cache_dir``, as ``.npy`` files keyed by the encoder key, a
    checksum of its weights, the words and the templates.
    """
    if not hasattr(encoder, "embed_text"):
        raise InvalidInputError(f"encoder {getattr(encoder, 'key', encoder)!r} has no text tower; use clip-vitb32")
    if not words:
        raise InvalidInputError("the vocabulary is empty; give at least one word")
    if not templates or any("{}" not in t for t in templates):
        raise InvalidInputError(f"every template needs a '{{}}' for the word; got {list(templates)}")
    key = hashlib.blake2b(
        "\n".join([_weights_fingerprint(encoder), *templates, "", *words]).encode(), digest_size=16
    ).hexdigest()
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    path = Path(cache_dir) / "concepts" / f"words-{key}.npy" if cache_dir is not None else None
    if path is not None and path.is_file():
        vectors = np.load(path, allow_pickle=False)
    else:
        prompts = [t.format(w) for w in words for t in templates]
        chunks = [
            np.asarray(encoder.embed_text(prompts[i : i + batch_size]), dtype=np.float64)
            for i in range(0, len(prompts), batch_size)
        ]
        per_prompt = _unit(np.concatenate(chunks), "prompt vectors").reshape(len(words), len(templates), -1)
        vectors = _unit(per_prompt.mean(axis=1), "word vectors").astype(np.float32)
        if path is not None:
            with atomic_path(path) as tmp, tmp.open("wb") as handle:
                np.save(handle, vectors)
    _TEXT_CACHE[key] = vectors
    return vectors


def _weights_fingerprint(encoder: Any) -> str:
    """Encoder key plus a checksum of its parameters: two weight files under one key never share a cache."""
    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return str(getattr(encoder, "key", type(encoder).__name__))
    import torch

    with torch.inference_mode():
        sums = [(float(p.sum()), float(p.abs().sum())) for p in model.parameters()]
    return f"{encoder.key}:{sum(s for s, _ in sums):.7e}:{sum(a for _, a in sums):.7e}"


def _text_tower_key(store: Store, dataset: str, preferred: str | None) -> str:
    keys = store.embedded_keys(dataset)
    if preferred is not None:
        if preferred in keys:
            return preferred
        raise EmbeddingsNotFoundError(
            f"Dataset {dataset!r} has no embeddings under {preferred!r}. Run: python -m core embed --dataset "
            f"{dataset} --encoder {encoder_id_of(preferred)}",
            page_message=f"Dataset {dataset!r} has no embeddings under {preferred!r}. Extract them with "
            f"{encoder_id_of(preferred)} on the Data page first.",
        )
    text_keys = [k for k in keys if (store.encoder_spec(k) or {}).get("has_text_tower")]
    if not text_keys:
        raise EmbeddingsNotFoundError(
            f"CLIP labels need {dataset!r} embedded with an encoder that has a text tower (stored: "
            f"{', '.join(keys) or 'none'}). Run: python -m core embed --dataset {dataset} --encoder clip-vitb32 "
            "(or use --method text / --method visual, which need no model).",
            page_message=f"CLIP labels need {dataset!r} embedded with an encoder that has a text tower (CLIP): "
            "extract it with CLIP on the Data page, or pick the Text or Visual labels, which need no model.",
        )
    return sorted(text_keys)[0]


def _clip_centres(store: Store, run: ClusterRun, key: str) -> tuple[list[int], np.ndarray]:
    images, vectors = store.load_embeddings(run.dataset, key)
    position = pd.Index(run.hashes).get_indexer(pd.Index(images["content_hash"]))
    keep = position >= 0
    labels = run.labels[position[keep]]
    X = _unit(vectors[keep], "CLIP image vectors")
    wanted = sorted(c for c in set(run.labels.tolist()) if c != NOISE)
    present = [c for c in wanted if (labels == c).any()]
    if len(present) < len(wanted):
        missing = sorted(set(wanted) - set(present))
        warnings.warn(
            f"clusters {missing} have no image embedded with {key}; they get no CLIP label. Embed the "
            f"dataset with {encoder_id_of(key)} to label them.",
            LabellingWarning,
            stacklevel=3,
        )
    if not present:
        raise EmbeddingsNotFoundError(f"none of run {run.run_id}'s images is embedded with {key}")
    return present, np.stack([X[labels == c].mean(axis=0) for c in present])


@register_labeller("clip")
def clip_labeller(
    store: Store,
    run: ClusterRun,
    *,
    encoder: Any = None,
    encoder_key: str | None = None,
    weights: str | None = None,
    device: str = "cpu",
    vocabulary: Sequence[str] | None = None,
    extra_words: Sequence[str] = (),
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    temperature: float = DEFAULT_TEMPERATURE,
    top: int = DEFAULT_TOP,
    shortlist: int = 50,
) -> list[ClusterLabel]:
    """CLIP vocabulary labels (see the module docstring).

    Args:
        encoder: a loaded text-tower encoder; else ``load_encoder(<stored key's id>, device,
            weights=weights)``. Its key must be the one the dataset was embedded under.
        encoder_key: which stored CLIP embedding to use (default: the dataset's text-tower key).
        vocabulary: words (default ``core/data/nouns.txt``); ``extra_words`` are added to it.
    """
    key = encoder.key if encoder is not None and encoder_key is None else encoder_key
    key = _text_tower_key(store, run.dataset, key)
    if encoder is None:
        from core.encoders import load_encoder

        spec = store.encoder_spec(key) or {}
        # At the stored precision: bf16 image vectors need the bf16 text tower (its key says so).
        encoder = load_encoder(spec.get("id", encoder_id_of(key)), device, weights=weights, precision=precision_of(key))
    if encoder.key != key:
        raise InvalidInputError(
            f"the text encoder is {encoder.key} but the images were embedded as {key}; "
            "their spaces differ. Load the same encoder (and weights) the dataset was "
            "embedded with."
        )
    words = _unique([*(vocabulary if vocabulary is not None else load_vocabulary()), *extra_words])
    clusters, centres = _clip_centres(store, run, key)
    word_vectors = embed_words(encoder, words, templates, cache_dir=store.cache_dir)
    ranked = tac_labels(centres, word_vectors, words, temperature=temperature, top=top, shortlist=shortlist)
    return [ClusterLabel(c, cands[0]["word"], "clip", cands) for c, cands in zip(clusters, ranked)]
