"""A text label for every cluster, with provenance: CLIP vocabulary, the data's own text, or pixels.

Three labellers, registered with ``@register_labeller`` as a plug-in would register one:

``clip``
    Embed a noun vocabulary (``core/data/nouns.txt`` plus the user's words) with CLIP's text
    tower, prompts averaged over a few templates, and label each cluster TAC-style (Li et
    al., "Image Clustering with External Knowledge", ICML 2024): for every noun a softmax of
    its similarity to the cluster centres *across clusters* (temperature τ), so a noun goes
    to the cluster that prefers it most and labels come out distinctive. Centres are means
    of the run's images in the CLIP image space, so the dataset must be embedded with the
    CLIP encoder (whatever encoder the run itself clustered).
``text``
    Folder names, file-name tokens and sidecar captions, each cluster's tokens ranked
    against the rest of the dataset by the log-odds ratio with an informative Dirichlet
    prior (Monroe, Colaresi & Quinn 2008), shown as z-scores.
``visual``
    Descriptors computed from pixels (brightness, contrast, colourfulness, saturation,
    edge density, sharpness, entropy, aspect ratio, dominant colour names), each cluster's
    mean against the rest as a z-score, turned into words ("dark", "blue", "high-detail").

The math is in pure functions (``tac_labels``, ``log_odds_dirichlet``,
``descriptor_labels``) that tests feed constructed inputs. ``label_run`` computes, stores
(``cluster_labels``: label, method, ranked candidates with scores, edited flag) and returns
labels; a name a user typed is never overwritten.
"""
from __future__ import annotations

import hashlib
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from core import images as image_io
from core.cluster import NOISE, ClusterRun, load_run
from core.errors import EmbeddingsNotFoundError, InvalidInputError, RepLensError
from core.store import Store

DATA_DIR = Path(__file__).resolve().parent / "data"
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


# ---------------------------------------------------------------------------------------
# Registry

Labeller = Callable[..., list[ClusterLabel]]
_LABELLERS: dict[str, Labeller] = {}
_REGISTRY_LOCK = threading.Lock()


def register_labeller(name: str) -> Callable[[Labeller], Labeller]:
    """Decorator: ``fn(store, run, **options) -> list[ClusterLabel]`` becomes labeller ``name``."""

    def decorate(fn: Labeller) -> Labeller:
        with _REGISTRY_LOCK:
            if name in _LABELLERS:
                warnings.warn(f"labeller {name!r} registered twice; keeping the later one", LabellingWarning,
                              stacklevel=2)
            _LABELLERS[name] = fn
        return fn

    return decorate


def labelling_methods() -> list[str]:
    return list(_LABELLERS)


def label_run(store: Store, run_id: str, method: str, *, save: bool = True, **options: Any) -> list[ClusterLabel]:
    """Label every cluster of a stored run with ``method`` and store the labels.

    Returns one ``ClusterLabel`` per labelled cluster; where a user already named a cluster,
    that name is returned (``edited=True``, ``method='user'``) and is not overwritten.
    ``options`` go to the labeller (see ``clip_labeller``, ``text_labeller``, ``visual_labeller``).
    """
    labeller = _LABELLERS.get(method)
    if labeller is None:
        raise InvalidInputError(f"Unknown labelling method {method!r}; choose one of {', '.join(_LABELLERS)}.")
    run = load_run(store, run_id)
    computed = labeller(store, run, **options)
    if save:
        store.save_cluster_labels(run_id, [
            {"cluster": c.cluster, "label": c.label, "method": c.method, "candidates": c.candidates} for c in computed
        ])
    stored = store.load_cluster_labels(run_id)
    user = {int(r.cluster): r for r in stored.itertuples(index=False) if r.edited}
    return [ClusterLabel(c.cluster, user[c.cluster].label, "user", c.candidates, True) if c.cluster in user else c
            for c in computed]


def effective_labels(store: Store, run_id: str) -> dict[int, str]:
    """cluster → the label to show (a user's edit, else the last computed label)."""
    frame = store.load_cluster_labels(run_id)
    return {int(c): str(label) for c, label in zip(frame["cluster"], frame["label"])}


# ---------------------------------------------------------------------------------------
# 1. CLIP vocabulary labels (TAC-style)


def load_vocabulary(path: str | Path | None = None) -> list[str]:
    """Words of a vocabulary file (one per line, ``#`` comments), default ``core/data/nouns.txt``."""
    path = Path(path) if path is not None else VOCABULARY_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInputError(f"Cannot read vocabulary {path}: {exc}. Give a text file with one word per line.") from exc
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
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise InvalidInputError(f"{what}: expected a 2-d array, got shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidInputError(f"{what}: {int((norms == 0).sum())} zero vector(s) have no direction")
    return rows / norms


def tac_scores(centres: np.ndarray, word_vectors: np.ndarray, temperature: float = DEFAULT_TEMPERATURE
               ) -> tuple[np.ndarray, np.ndarray]:
    """(P, S): S[w, c] cosine of word w and centre c; P[w, c] = softmax over clusters of S[w, :] / τ."""
    if not temperature > 0:
        raise InvalidInputError(f"temperature={temperature!r} should be > 0 (0.01 matches CLIP's logit scale)")
    C, W = _unit(centres, "centres"), _unit(word_vectors, "word vectors")
    if C.shape[1] != W.shape[1]:
        raise InvalidInputError(f"centres have dim {C.shape[1]} but word vectors dim {W.shape[1]}; both must come "
                                "from the same CLIP model")
    S = W @ C.T
    logits = S / temperature
    logits -= logits.max(axis=1, keepdims=True)
    P = np.exp(logits)
    P /= P.sum(axis=1, keepdims=True)
    return P, S


def tac_labels(centres: np.ndarray, word_vectors: np.ndarray, words: Sequence[str], *,
               temperature: float = DEFAULT_TEMPERATURE, top: int = DEFAULT_TOP,
               shortlist: int = 50) -> list[list[dict[str, Any]]]:
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
        out.append([{"word": words[w], "score": round(float(P[w, c]), 6), "similarity": round(float(S[w, c]), 6)}
                    for w in chosen])
    return out


def argmax_labels(centres: np.ndarray, word_vectors: np.ndarray, words: Sequence[str], *,
                  top: int = DEFAULT_TOP) -> list[list[dict[str, Any]]]:
    """Baseline: each centre's most similar words (repeats generic words across clusters)."""
    _, S = tac_scores(centres, word_vectors)
    return [[{"word": words[w], "score": round(float(S[w, c]), 6), "similarity": round(float(S[w, c]), 6)}
             for w in np.argsort(-S[:, c], kind="stable")[:top]] for c in range(S.shape[1])]


_TEXT_CACHE: dict[str, np.ndarray] = {}


def embed_words(encoder: Any, words: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, *,
                cache_dir: str | Path | None = None, batch_size: int = 256) -> np.ndarray:
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
    key = hashlib.blake2b("\n".join([_weights_fingerprint(encoder), *templates, "", *words]).encode(),
                          digest_size=16).hexdigest()
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    path = Path(cache_dir) / "concepts" / f"words-{key}.npy" if cache_dir is not None else None
    if path is not None and path.is_file():
        vectors = np.load(path)
    else:
        prompts = [t.format(w) for w in words for t in templates]
        chunks = [np.asarray(encoder.embed_text(prompts[i:i + batch_size]), dtype=np.float64)
                  for i in range(0, len(prompts), batch_size)]
        per_prompt = _unit(np.concatenate(chunks), "prompt vectors").reshape(len(words), len(templates), -1)
        vectors = _unit(per_prompt.mean(axis=1), "word vectors").astype(np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(path)
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
            f"{dataset} --encoder {preferred.split('@')[0]}")
    text_keys = [k for k in keys if (store.encoder_spec(k) or {}).get("has_text_tower")]
    if not text_keys:
        raise EmbeddingsNotFoundError(
            f"CLIP labels need {dataset!r} embedded with an encoder that has a text tower (stored: "
            f"{', '.join(keys) or 'none'}). Run: python -m core embed --dataset {dataset} --encoder clip-vitb32 "
            "(or use --method text / --method visual, which need no model).")
    return sorted(text_keys)[0]


def _clip_centres(store: Store, run: ClusterRun, key: str) -> tuple[list[int], np.ndarray]:
    images, vectors = store.load_embeddings(run.dataset, key)
    position = pd.Index(run.hashes).get_indexer(images["content_hash"])
    keep = position >= 0
    labels = run.labels[position[keep]]
    X = _unit(vectors[keep], "CLIP image vectors")
    wanted = sorted(c for c in set(run.labels.tolist()) if c != NOISE)
    present = [c for c in wanted if (labels == c).any()]
    if len(present) < len(wanted):
        missing = sorted(set(wanted) - set(present))
        warnings.warn(f"clusters {missing} have no image embedded with {key}; they get no CLIP label. Embed the "
                      f"dataset with {key.split('@')[0]} to label them.", LabellingWarning, stacklevel=3)
    if not present:
        raise EmbeddingsNotFoundError(f"none of run {run.run_id}'s images is embedded with {key}")
    return present, np.stack([X[labels == c].mean(axis=0) for c in present])


@register_labeller("clip")
def clip_labeller(store: Store, run: ClusterRun, *, encoder: Any = None, encoder_key: str | None = None,
                  weights: str | None = None, device: str = "cpu", vocabulary: Sequence[str] | None = None,
                  extra_words: Sequence[str] = (), templates: Sequence[str] = DEFAULT_TEMPLATES,
                  temperature: float = DEFAULT_TEMPERATURE, top: int = DEFAULT_TOP,
                  shortlist: int = 50) -> list[ClusterLabel]:
    """CLIP vocabulary labels (see module docstring).

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
        encoder = load_encoder(spec.get("id", key.split("@")[0]), device, weights=weights)
    if encoder.key != key:
        raise InvalidInputError(f"the text encoder is {encoder.key} but the images were embedded as {key}; "
                                "their spaces differ. Load the same encoder (and weights) the dataset was embedded with.")
    words = _unique([*(vocabulary if vocabulary is not None else load_vocabulary()), *extra_words])
    clusters, centres = _clip_centres(store, run, key)
    word_vectors = embed_words(encoder, words, templates, cache_dir=store.cache_dir)
    ranked = tac_labels(centres, word_vectors, words, temperature=temperature, top=top, shortlist=shortlist)
    return [ClusterLabel(c, cands[0]["word"], "clip", cands) for c, cands in zip(clusters, ranked)]


# ---------------------------------------------------------------------------------------
# 2. Offline labels from the data's own text


# Words that carry no meaning in file names (camera prefixes, formats, copies).
FILE_NAME_STOP_WORDS = frozenset({
    "img", "image", "images", "jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "svg", "eps", "dsc",
    "dscn", "dcim", "pxl", "copy", "untitled", "thumb", "thumbnail", "file", "final", "scan", "screenshot",
})


def stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | FILE_NAME_STOP_WORDS


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_WORD = re.compile(r"[^\W\d_]+")


def tokenize(text: str | None, stop: frozenset[str] | None = None) -> list[str]:
    """Lowercased letter-only tokens of ``text``: camelCase and snake_case split, numbers
    dropped, one-letter tokens and stop words removed."""
    if not text:
        return []
    stop = stop_words() if stop is None else stop
    return [t for t in _WORD.findall(_CAMEL.sub(" ", str(text)).lower()) if len(t) > 1 and t not in stop]


def image_tokens(images: pd.DataFrame, *, sources: Sequence[str] = ("folders", "filename", "caption")
                 ) -> list[set[str]]:
    """Per image (row of ``store.dataset_images``) the set of tokens from its folder names,
    file name and sidecar caption."""
    unknown = set(sources) - {"folders", "filename", "caption"}
    if unknown:
        raise InvalidInputError(f"text sources {sorted(unknown)} unknown; choose from folders, filename, caption")
    stop = stop_words()
    out = []
    for row in images.itertuples(index=False):
        tokens: set[str] = set()
        if "folders" in sources:
            for folder in (getattr(row, "labels", None) if getattr(row, "labels", None) is not None else ()):
                tokens.update(tokenize(folder, stop))
        if "filename" in sources:
            tokens.update(tokenize(PurePosixPath(str(row.rel_path)).stem, stop))
        if "caption" in sources:
            caption = getattr(row, "caption", None)
            tokens.update(tokenize(caption if isinstance(caption, str) else None, stop))
        out.append(tokens)
    return out


def log_odds_dirichlet(y_i: np.ndarray, y_j: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monroe, Colaresi & Quinn (2008) log-odds ratio with an informative Dirichlet prior.

    For each word w, with counts y_i (group i), y_j (group j), prior a_w, n = Σ y, a0 = Σ a:
    δ_w = log((y_i+a)/(n_i+a0−y_i−a)) − log((y_j+a)/(n_j+a0−y_j−a)),
    σ²_w ≈ 1/(y_i+a) + 1/(y_j+a), and z_w = δ_w / σ_w. Returns (δ, z).
    """
    y_i, y_j, a = (np.asarray(v, dtype=np.float64) for v in (y_i, y_j, prior))
    if not (y_i.shape == y_j.shape == a.shape) or y_i.ndim != 1:
        raise InvalidInputError(f"count shapes {y_i.shape}, {y_j.shape} and prior shape {a.shape} should be equal 1-d")
    if (a <= 0).any() or (y_i < 0).any() or (y_j < 0).any():
        raise InvalidInputError("counts must be >= 0 and the prior > 0 for every word")
    n_i, n_j, a0 = y_i.sum(), y_j.sum(), a.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        # Undefined (NaN) only when a group has no other word at all, e.g. a one-word corpus.
        delta = np.log((y_i + a) / (n_i + a0 - y_i - a)) - np.log((y_j + a) / (n_j + a0 - y_j - a))
    delta = np.where(np.isfinite(delta), delta, np.nan)
    z = delta / np.sqrt(1.0 / (y_i + a) + 1.0 / (y_j + a))
    return delta, z


def text_labels(token_sets: Sequence[set[str]], labels: np.ndarray, *, top: int = DEFAULT_TOP,
                prior_scale: float = 1.0, min_z: float = 0.0) -> list[ClusterLabel]:
    """Each cluster's tokens against the rest (noise included in the rest), ranked by z.

    Counts are documents (a token counts once per image); the prior is ``prior_scale`` times
    the token's count over the whole dataset. Candidates: ``{"word", "score" (= z), "z",
    "delta", "count", "share"}`` with z > ``min_z``. Clusters without such a token get none
    (warned).
    """
    labels = np.asarray(labels)
    if len(token_sets) != len(labels):
        raise InvalidInputError(f"{len(token_sets)} token sets for {len(labels)} labels")
    if not prior_scale > 0:
        raise InvalidInputError(f"prior_scale={prior_scale!r} should be > 0")
    vocab = sorted(set().union(*token_sets)) if token_sets else []
    clusters = sorted(c for c in set(labels.tolist()) if c != NOISE)
    if not vocab:
        warnings.warn("no image has folder names, file-name words or captions to label with; try --method visual",
                      LabellingWarning, stacklevel=2)
        return []
    index = {w: i for i, w in enumerate(vocab)}
    counts = np.zeros((len(vocab), len(labels)), dtype=np.float64)
    for col, tokens in enumerate(token_sets):
        counts[[index[t] for t in tokens], col] = 1.0
    total = counts.sum(axis=1)
    prior = prior_scale * total
    out, empty = [], []
    for c in clusters:
        member = labels == c
        y_i = counts[:, member].sum(axis=1)
        delta, z = log_odds_dirichlet(y_i, total - y_i, prior)
        order = [w for w in np.lexsort((np.array(vocab), -np.nan_to_num(z, nan=-np.inf)))
                 if z[w] > min_z and y_i[w] > 0][:top]
        if not order:
            empty.append(c)
            continue
        candidates = [{"word": vocab[w], "score": round(float(z[w]), 4), "z": round(float(z[w]), 4),
                       "delta": round(float(delta[w]), 4), "count": int(y_i[w]),
                       "share": round(float(y_i[w] / member.sum()), 4)} for w in order]
        out.append(ClusterLabel(c, candidates[0]["word"], "text", candidates))
    if empty:
        warnings.warn(f"clusters {empty} have no distinctive word in their names or captions; they get no text "
                      "label (try --method visual).", LabellingWarning, stacklevel=2)
    return out


@register_labeller("text")
def text_labeller(store: Store, run: ClusterRun, *, sources: Sequence[str] = ("folders", "filename", "caption"),
                  top: int = DEFAULT_TOP, prior_scale: float = 1.0, min_z: float = 0.0) -> list[ClusterLabel]:
    """Labels from folder names, file names and captions (no model needed)."""
    images = store.dataset_images(run.dataset)
    position = pd.Index(run.hashes).get_indexer(images["content_hash"])
    keep = position >= 0
    return text_labels(image_tokens(images.loc[keep], sources=sources), run.labels[position[keep]], top=top,
                       prior_scale=prior_scale, min_z=min_z)


# ---------------------------------------------------------------------------------------
# 3. Visual descriptors from pixels

DESCRIPTOR_VERSION = 1
DESCRIPTOR_SIZE = 128
# Colour names by HSV (hue in degrees); dark pixels are black, unsaturated ones grey/white.
COLOUR_NAMES: tuple[str, ...] = ("black", "white", "grey", "red", "orange", "brown", "yellow", "green", "cyan",
                                 "blue", "purple", "pink")
_HUE_BINS = ((15, "red"), (45, "orange"), (70, "yellow"), (170, "green"), (200, "cyan"), (260, "blue"),
             (290, "purple"), (345, "pink"), (361, "red"))
# descriptor → (word when the cluster is above the rest, word when below; None: no word)
DESCRIPTOR_WORDS: dict[str, tuple[str | None, str | None]] = {
    "brightness": ("bright", "dark"),
    "contrast": ("high-contrast", "low-contrast"),
    "colorfulness": ("colourful", "muted"),
    "saturation": ("saturated", "desaturated"),
    "edge_density": ("high-detail", "smooth"),
    "sharpness": ("sharp", "soft"),
    "entropy": ("busy", "plain"),
    "log_aspect_ratio": ("wide", "tall"),
    **{f"colour_{name}": (name, None) for name in COLOUR_NAMES},
}


def colour_fractions(rgb: np.ndarray) -> dict[str, float]:
    """Share of pixels of each named colour (``COLOUR_NAMES``) in an (h, w, 3) uint8/float RGB array."""
    arr = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0
    mx, mn = arr.max(axis=1), arr.min(axis=1)
    sat = np.divide(mx - mn, mx, out=np.zeros_like(mx), where=mx > 0)
    r, g, b = arr.T
    delta = np.where(mx - mn > 0, mx - mn, 1.0)
    hue = np.where(mx == r, ((g - b) / delta) % 6, np.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4)) * 60.0
    names = np.empty(len(arr), dtype=object)
    dark, grey = mx < 0.2, sat < 0.15
    names[dark] = "black"
    names[~dark & grey] = np.where(mx[~dark & grey] > 0.85, "white", "grey")
    chroma = ~dark & ~grey
    lower = 0.0
    for upper, name in _HUE_BINS:
        names[chroma & (hue >= lower) & (hue < upper)] = name
        lower = upper
    # Dark oranges and reds read as brown.
    names[chroma & np.isin(names, ["orange", "red"]) & (mx < 0.6)] = "brown"
    total = max(len(arr), 1)
    return {name: float(np.sum(names == name) / total) for name in COLOUR_NAMES}


def visual_descriptors(image: Any, *, width: int | None = None, height: int | None = None) -> dict[str, float]:
    """Descriptors of one PIL image (shrunk to ≤128 px first); ``width``/``height`` give the
    original aspect ratio when ``image`` is a thumbnail."""
    from scipy import ndimage

    img = image.convert("RGB") if image.mode != "RGB" else image
    if max(img.size) > DESCRIPTOR_SIZE:
        img = img.copy()
        img.thumbnail((DESCRIPTOR_SIZE, DESCRIPTOR_SIZE))
    base = image_io.image_features(img)
    rgb = np.asarray(img, dtype=np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114]) / 255.0
    magnitude = np.hypot(ndimage.sobel(luma, axis=0), ndimage.sobel(luma, axis=1)) / 4.0
    w, h = (width, height) if width and height else img.size
    out = {
        "brightness": base["brightness"], "contrast": base["contrast"], "colorfulness": base["colorfulness"],
        "saturation": base["saturation"], "sharpness": base["sharpness"], "entropy": base["entropy"],
        "edge_density": float(np.mean(magnitude > 0.1)),
        "log_aspect_ratio": float(np.log(w / h)) if h else 0.0,
    }
    out.update({f"colour_{k}": v for k, v in colour_fractions(rgb).items()})
    return out


_DESCRIPTOR_CACHE: dict[tuple[str, int], dict[str, float]] = {}
_DESCRIPTOR_CACHE_LOCK = threading.Lock()
_DESCRIPTOR_CACHE_LIMIT = 500_000


def image_descriptors(store: Store, images: pd.DataFrame, *, workers: int = 4) -> pd.DataFrame:
    """Descriptor table (one row per row of ``images``, indexed by content_hash), cached per
    image hash in memory. Thumbnails are read when present, else the image is decoded. Rows
    that cannot be read are NaN (and warned about)."""
    from PIL import Image

    def compute(row: Any) -> tuple[str, dict[str, float] | None, str | None]:
        cache_key = (row.content_hash, DESCRIPTOR_VERSION)
        with _DESCRIPTOR_CACHE_LOCK:
            hit = _DESCRIPTOR_CACHE.get(cache_key)
        if hit is not None:
            return row.content_hash, hit, None
        try:
            thumb = image_io.thumbnail_path(store.cache_dir, row.content_hash)
            if thumb.is_file():
                with Image.open(thumb) as opened:
                    img = opened.convert("RGB")
            else:
                data = image_io.read_bytes(row.source, row.rel_path)
                img = image_io.decode_rgb(data, draft_size=(DESCRIPTOR_SIZE, DESCRIPTOR_SIZE))
            values = visual_descriptors(img, width=int(row.width), height=int(row.height))
        except (RepLensError, OSError, ValueError) as exc:
            return row.content_hash, None, f"{row.rel_path}: {exc}"
        with _DESCRIPTOR_CACHE_LOCK:
            if len(_DESCRIPTOR_CACHE) < _DESCRIPTOR_CACHE_LIMIT:
                _DESCRIPTOR_CACHE[cache_key] = values
        return row.content_hash, values, None

    rows = list(images.itertuples(index=False))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="replens-descr") as pool:
        results = list(pool.map(compute, rows))
    failed = [err for _, values, err in results if values is None]
    if failed:
        warnings.warn(f"{len(failed)} image(s) could not be read for visual descriptors and are left out, e.g. "
                      f"{failed[0]}", LabellingWarning, stacklevel=2)
    columns = list(DESCRIPTOR_WORDS)
    table = pd.DataFrame([values if values is not None else {} for _, values, _ in results], columns=columns,
                         dtype=np.float64)
    table.index = pd.Index([h for h, _, _ in results], name="content_hash")
    return table


def descriptor_labels(descriptors: pd.DataFrame, labels: np.ndarray, *, top: int = DEFAULT_TOP,
                      min_z: float = 2.0, words_in_label: int = 2) -> list[ClusterLabel]:
    """Rank descriptors per cluster by Welch's z of the cluster mean against the rest and turn
    the strongest into words. Candidates: ``{"word", "descriptor", "score" (= |z|), "z",
    "cluster_mean", "rest_mean"}``; the label joins the top ``words_in_label`` words with
    |z| ≥ ``min_z`` (at least the top word, so every cluster gets a label)."""
    labels = np.asarray(labels)
    if len(descriptors) != len(labels):
        raise InvalidInputError(f"{len(descriptors)} descriptor rows for {len(labels)} labels")
    values = descriptors.to_numpy(dtype=np.float64)
    names = list(descriptors.columns)
    valid = ~np.isnan(values).any(axis=1)
    out = []
    for c in sorted(c for c in set(labels.tolist()) if c != NOISE):
        inside, outside = valid & (labels == c), valid & (labels != c)
        if inside.sum() == 0 or outside.sum() == 0:
            continue
        z = _welch_z(values[inside], values[outside])
        candidates = []
        for d in np.argsort(-np.abs(z), kind="stable"):
            high, low = DESCRIPTOR_WORDS.get(names[d], (names[d], None))
            word = high if z[d] > 0 else low
            if word is None or not np.isfinite(z[d]) or z[d] == 0:
                continue
            candidates.append({"word": word, "descriptor": names[d], "score": round(float(abs(z[d])), 4),
                               "z": round(float(z[d]), 4),
                               "cluster_mean": round(float(values[inside, d].mean()), 6),
                               "rest_mean": round(float(values[outside, d].mean()), 6)})
            if len(candidates) == top:
                break
        if not candidates:
            continue
        strong = [cand["word"] for cand in candidates if cand["score"] >= min_z][:words_in_label]
        out.append(ClusterLabel(c, " ".join(strong or [candidates[0]["word"]]), "visual", candidates))
    return out


def _welch_z(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(mean_a − mean_b) / sqrt(var_a/n_a + var_b/n_b) per column (sample variances; 0 for n = 1)."""
    var_a = a.var(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
    var_b = b.var(axis=0, ddof=1) if len(b) > 1 else np.zeros(b.shape[1])
    diff = a.mean(axis=0) - b.mean(axis=0)
    se = np.sqrt(var_a / len(a) + var_b / len(b))
    # A tiny floor keeps constant descriptors at z = 0 and avoids dividing by zero.
    return np.divide(diff, se, out=np.zeros_like(diff), where=se > 1e-12)


@register_labeller("visual")
def visual_labeller(store: Store, run: ClusterRun, *, top: int = DEFAULT_TOP, min_z: float = 2.0,
                    words_in_label: int = 2, workers: int = 4) -> list[ClusterLabel]:
    """Labels from pixels alone (works for any folder). Transparency is not a descriptor:
    the store does not record alpha, and images are composited on grey when decoded."""
    images = store.dataset_images(run.dataset)
    position = pd.Index(run.hashes).get_indexer(images["content_hash"])
    keep = position >= 0
    table = image_descriptors(store, images.loc[keep], workers=workers)
    return descriptor_labels(table, run.labels[position[keep]], top=top, min_z=min_z, words_in_label=words_in_label)


def labels_frame(labels: Sequence[ClusterLabel]) -> pd.DataFrame:
    """ClusterLabels as a table (cluster, label, method, edited, top candidates as text)."""
    return pd.DataFrame([{"cluster": c.cluster, "label": c.label, "method": c.method, "edited": c.edited,
                          "candidates": ", ".join(f"{x['word']} ({x['score']:.3g})" for x in c.candidates)}
                         for c in labels], columns=["cluster", "label", "method", "edited", "candidates"])


__all__ = [
    "ClusterLabel", "LabellingWarning", "register_labeller", "labelling_methods", "label_run", "effective_labels",
    "load_vocabulary", "tac_scores", "tac_labels", "argmax_labels", "embed_words", "tokenize", "image_tokens",
    "log_odds_dirichlet", "text_labels", "colour_fractions", "visual_descriptors", "image_descriptors",
    "descriptor_labels", "labels_frame",
]
