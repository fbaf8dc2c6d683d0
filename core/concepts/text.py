"""Labels from the data's own text: the ``text`` labeller (no model needed).

Folder names, file-name tokens and sidecar captions, each cluster's tokens ranked against
the rest of the dataset by the log-odds ratio with an informative Dirichlet prior (Monroe,
Colaresi & Quinn 2008), shown as z-scores.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from core.cluster import NOISE, ClusterRun
from core.concepts.labels import DEFAULT_TOP, ClusterLabel, LabellingWarning, register_labeller
from core.errors import InvalidInputError
from core.store import Store

# Words that carry no meaning in file names (camera prefixes, formats, copies).
FILE_NAME_STOP_WORDS = frozenset(
    "img image images jpg jpeg png gif webp bmp tif tiff svg eps dsc dscn dcim pxl copy untitled thumb thumbnail "
    "file final scan screenshot".split()
)


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


def image_tokens(
    images: pd.DataFrame, *, sources: Sequence[str] = ("folders", "filename", "caption")
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
            folders = getattr(row, "labels", None)
            for folder in folders if folders is not None else ():
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


def text_labels(
    token_sets: Sequence[set[str]],
    labels: np.ndarray,
    *,
    top: int = DEFAULT_TOP,
    prior_scale: float = 1.0,
    min_z: float = 0.0,
) -> list[ClusterLabel]:
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
        warnings.warn(
            "no image has folder names, file-name words or captions to label with; try the visual labeller "
            "(Visual labels on the Clusters page; --method visual in the CLI)",
            LabellingWarning,
            stacklevel=2,
        )
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
        order = [
            w for w in np.lexsort((np.array(vocab), -np.nan_to_num(z, nan=-np.inf))) if z[w] > min_z and y_i[w] > 0
        ][:top]
        if not order:
            empty.append(c)
            continue
        candidates = [
            {
                "word": vocab[w],
                "score": round(float(z[w]), 4),
                "z": round(float(z[w]), 4),
                "delta": round(float(delta[w]), 4),
                "count": int(y_i[w]),
                "share": round(float(y_i[w] / member.sum()), 4),
            }
            for w in order
        ]
        out.append(ClusterLabel(c, candidates[0]["word"], "text", candidates))
    if empty:
        warnings.warn(
            f"clusters {empty} have no distinctive word in their names or captions; they get no text "
            "label (try the visual labeller (Visual labels on the Clusters page; --method visual in the CLI)).",
            LabellingWarning,
            stacklevel=2,
        )
    return out


@register_labeller("text")
def text_labeller(
    store: Store,
    run: ClusterRun,
    *,
    sources: Sequence[str] = ("folders", "filename", "caption"),
    top: int = DEFAULT_TOP,
    prior_scale: float = 1.0,
    min_z: float = 0.0,
) -> list[ClusterLabel]:
    """Labels from folder names, file names and captions (no model needed)."""
    images = store.dataset_images(run.dataset)
    position = pd.Index(run.hashes).get_indexer(pd.Index(images["content_hash"]))
    keep = position >= 0
    return text_labels(
        image_tokens(images.loc[keep], sources=sources),
        run.labels[position[keep]],
        top=top,
        prior_scale=prior_scale,
        min_z=min_z,
    )
